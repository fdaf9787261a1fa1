"""HTTP API edge, Web Push: the VAPID public key, and a browser's subscription kept or dropped.

Every route needs `Authorization: Bearer <token>` (bridge.http_mail.identity_of); the account is
the body's or query's `account` (or the token's first). What a subscription must be is
bridge.webpush's to say; what is sent to it, bridge.push_sender's.
"""

from __future__ import annotations

from aiohttp import web

from bridge import keys
from bridge.errors import NotFound
from bridge.http_api import read_json
from bridge.http_mail import identity_of
from bridge.mail_service import owned_account
from bridge.webpush import is_subscription_id, parse_subscription, subscription_id


async def vapid_key(request: web.Request) -> web.Response:
    identity_of(request)
    return web.json_response({"publicKey": await request.app[keys.VAPID].public()})


async def subscribe(request: web.Request) -> web.Response:
    identity = identity_of(request)
    body = await read_json(request)
    account = owned_account(identity, body.get("account"))
    settings = request.app[keys.SETTINGS]
    sub = parse_subscription(body, settings.push_allowed_origins)
    sub_id = subscription_id(sub.endpoint)
    await request.app[keys.STORE].add_push_subscription(sub_id, account, sub, settings.push_max_subscriptions)
    return web.json_response({"id": sub_id, "account": account}, status=201)


async def unsubscribe(request: web.Request) -> web.Response:
    identity = identity_of(request)
    sub_id = request.match_info["id"]
    if not is_subscription_id(sub_id) or not await request.app[keys.STORE].remove_push_subscription(
        sub_id, identity.accounts
    ):
        raise NotFound("no such subscription")
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/push/key", vapid_key)
    app.router.add_post("/api/v1/push/subscriptions", subscribe)
    app.router.add_delete("/api/v1/push/subscriptions/{id}", unsubscribe)
