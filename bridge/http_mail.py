"""HTTP API edge, mail resources: the REST twin of the Socket.IO actions (docs/openapi.json).

Every route needs `Authorization: Bearer <token>`; the account is the `account` query parameter
(or the token's first account) and must be one the token grants. Errors are JSON, mapped from the
bridge's error hierarchy by bridge.http_api's middleware.

Attachments may be staged first (`POST /api/v1/uploads`, the file as the raw body, at most
compose.MAX_ATTACHMENT_BYTES, read in chunks and refused with 413 as soon as it is larger) and then
named by id in sends and drafts, so large files are not re-sent base64-encoded with every autosave.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from bridge import keys
from bridge.auth import Identity
from bridge.errors import AuthError, InvalidInput, RateLimited, TooLarge
from bridge.http_api import read_json
from bridge.mail_service import owned_account, owned_ref
from bridge.mailbox_order import STANDARD_NAMES
from bridge.search_query import parse_search
from bridge.uploads import MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

MAX_SEND_BODY = 40 << 20  # attachments travel base64-encoded in the JSON body
_PART_ID = re.compile(r"^\d{1,4}(\.\d{1,4}){0,15}$")
_UPLOAD_CHUNK = 256 << 10


def identity_of(request: web.Request) -> Identity:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        raise AuthError("an Authorization: Bearer token is required")
    identity = request.app[keys.ISSUER].verify(header[7:].strip())
    limiter = request.app[keys.REQUEST_LIMIT]
    if not limiter.allow(identity.subject):
        raise RateLimited("too many requests", limiter.retry_after(identity.subject))
    return identity


def _flag_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value) or len(value) > 20:
        raise InvalidInput(f"{name} must be a list of flags")
    return value


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, str(default)))
    except ValueError:
        raise InvalidInput(f"{name} must be an integer") from None


async def me(request: web.Request) -> web.Response:
    identity = identity_of(request)
    return web.json_response(
        {"subject": identity.subject, "accounts": list(identity.accounts), "expiresAt": identity.expires_at}
    )


async def mailboxes(request: web.Request) -> web.Response:
    identity = identity_of(request)
    account = owned_account(identity, request.query.get("account"))
    return web.json_response({"account": account, "mailboxes": await request.app[keys.MAIL].mailboxes(account)})


async def category_counts(request: web.Request) -> web.Response:
    account = owned_account(identity_of(request), request.query.get("account"))
    mailbox = request.query.get("mailbox", "INBOX")
    unread = await request.app[keys.STORE].unread_by_category(account, mailbox)
    return web.json_response({"account": account, "mailbox": mailbox, "unread": unread})


async def create_folder(request: web.Request) -> web.Response:
    body = await read_json(request)
    account = owned_account(identity_of(request), body.get("account"))
    name = await request.app[keys.MAIL].folders.create(account, body.get("name"))
    return web.json_response({"ok": True, "name": name})


async def rename_folder(request: web.Request) -> web.Response:
    body = await read_json(request)
    account = owned_account(identity_of(request), body.get("account"))
    name = await request.app[keys.MAIL].folders.rename(account, body.get("name"), body.get("newName"))
    return web.json_response({"ok": True, "name": name})


async def delete_folder(request: web.Request) -> web.Response:
    account = owned_account(identity_of(request), request.query.get("account"))
    await request.app[keys.MAIL].folders.delete(account, request.query.get("name"))
    return web.json_response({"ok": True})


async def mark_all_read(request: web.Request) -> web.Response:
    identity = identity_of(request)
    body = await read_json(request)
    account = owned_account(identity, body.get("account"))
    await request.app[keys.MAIL].folders.mark_all_read(account, body.get("mailbox"))
    return web.json_response({"ok": True})


async def inbox(request: web.Request) -> web.Response:
    identity = identity_of(request)
    account = owned_account(identity, request.query.get("account"))
    mailbox = request.query.get("mailbox", "INBOX")
    limit = _int_param(request, "limit", 50)
    filters = [f for f in request.query.get("filter", "").split(",") if f]
    text = request.query.get("q", "").strip()
    search = parse_search(text) if text else None
    page = await request.app[keys.MAIL].listing(
        account, mailbox, limit=limit, cursor=request.query.get("cursor"), filters=filters, search=search
    )
    return web.json_response({"account": account, "mailbox": mailbox, **page})


async def search(request: web.Request) -> web.Response:
    if not request.query.get("q", "").strip():
        raise InvalidInput("q is required")
    return await inbox(request)


async def message(request: web.Request) -> web.Response:
    ref = owned_ref(identity_of(request), request.match_info["id"])
    remote = request.query.get("remoteImages", "0")
    if remote not in ("0", "1"):
        raise InvalidInput("remoteImages must be 0 or 1")
    return web.json_response(await request.app[keys.MAIL].message(ref, remote_images=remote == "1"))


async def contacts(request: web.Request) -> web.Response:
    identity = identity_of(request)
    account = owned_account(identity, request.query.get("account"))
    found = await request.app[keys.MAIL].contacts(account, request.query.get("q", ""), _int_param(request, "limit", 10))
    return web.json_response({"contacts": found})


async def upload(request: web.Request) -> web.Response:
    identity = identity_of(request)
    account = owned_account(identity, request.query.get("account"))
    too_large = f"upload larger than {MAX_UPLOAD_BYTES} bytes"
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        raise TooLarge(too_large)
    # Checked before the body is read, so a refused upload costs nothing.
    filename = request.query.get("filename")
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    mail = request.app[keys.MAIL]
    mail.check_upload(filename, content_type)
    data = bytearray()
    async for chunk in request.content.iter_chunked(_UPLOAD_CHUNK):
        data.extend(chunk)
        if len(data) > MAX_UPLOAD_BYTES:  # a chunked body has no Content-Length to check first
            raise TooLarge(too_large)
    staged = await mail.stage_upload(account, filename, content_type, bytes(data))
    return web.json_response(
        {"id": staged.id, "filename": staged.filename, "contentType": staged.content_type, "size": staged.size},
        status=201,
    )


async def attachment(request: web.Request) -> web.StreamResponse:
    ref = owned_ref(identity_of(request), request.match_info["id"])
    part_id = request.match_info["part"]
    if not _PART_ID.match(part_id):
        raise InvalidInput("invalid attachment id")
    filename, content_type, data = await request.app[keys.MAIL].attachment(ref, part_id)
    safe_name = re.sub(r"[^\w.\- ]", "_", filename) or "attachment"
    return web.Response(
        body=data,
        content_type="application/octet-stream",  # never rendered by the browser as the sender chose
        headers={
            "Content-Disposition": f'attachment; filename="{safe_name}"',
            "X-Content-Type-Options": "nosniff",
            "X-Original-Content-Type": content_type,
        },
    )


async def flags(request: web.Request) -> web.Response:
    ref = owned_ref(identity_of(request), request.match_info["id"])
    body = await read_json(request)
    await request.app[keys.MAIL].set_flags(
        ref, _flag_list(body.get("add"), "add"), _flag_list(body.get("remove"), "remove")
    )
    return web.json_response({"ok": True})


async def move(request: web.Request) -> web.Response:
    ref = owned_ref(identity_of(request), request.match_info["id"])
    body = await read_json(request)
    target = body.get("mailbox")
    # The standard folders are always listed (bridge.mailbox_order): moving into one makes it.
    create = isinstance(target, str) and target in STANDARD_NAMES
    return web.json_response({"ok": True, **await request.app[keys.MAIL].move(ref, target, create=create)})


async def archive(request: web.Request) -> web.Response:
    ref = owned_ref(identity_of(request), request.match_info["id"])
    return web.json_response({"ok": True, **await request.app[keys.MAIL].move(ref, "Archive", create=True)})


async def delete(request: web.Request) -> web.Response:
    ref = owned_ref(identity_of(request), request.match_info["id"])
    moved = await request.app[keys.MAIL].delete(ref)
    return web.json_response({"ok": True, **(moved or {"newEmailId": None})})


async def send(request: web.Request) -> web.Response:
    identity = identity_of(request)
    body = await read_json(request, limit=MAX_SEND_BODY)
    account = owned_account(identity, body.get("account"))
    return web.json_response(await request.app[keys.MAIL].send(identity, account, body))


async def draft(request: web.Request) -> web.Response:
    identity = identity_of(request)
    body = await read_json(request, limit=MAX_SEND_BODY)
    account = owned_account(identity, body.get("account"))
    return web.json_response(await request.app[keys.MAIL].save_draft(identity, account, body))


async def get_settings(request: web.Request) -> web.Response:
    identity = identity_of(request)
    account = owned_account(identity, request.query.get("account"))
    settings = await request.app[keys.STORE].account_settings(account)
    return web.json_response({"account": account, "settings": settings})


_SETTINGS = {"notifications": bool, "sound": bool, "signature": str, "theme": str}


async def put_settings(request: web.Request) -> web.Response:
    identity = identity_of(request)
    account = owned_account(identity, request.query.get("account"))
    body = await read_json(request)
    settings: dict[str, Any] = {}
    for name, value in body.items():
        kind = _SETTINGS.get(name)
        if kind is None:
            raise InvalidInput(f"unknown setting {name!r} (known: {', '.join(_SETTINGS)})")
        if not isinstance(value, kind) or (isinstance(value, str) and len(value) > 10_000):
            raise InvalidInput(f"{name} must be a {kind.__name__}")
        settings[name] = value
    await request.app[keys.STORE].update_settings(account, settings)
    return await get_settings(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/me", me)
    app.router.add_get("/api/v1/contacts", contacts)
    app.router.add_post("/api/v1/uploads", upload)
    app.router.add_get("/api/v1/mailboxes", mailboxes)
    app.router.add_post("/api/v1/mailboxes", create_folder)
    app.router.add_patch("/api/v1/mailboxes", rename_folder)
    app.router.add_delete("/api/v1/mailboxes", delete_folder)
    app.router.add_post("/api/v1/mailboxes/read", mark_all_read)
    app.router.add_get("/api/v1/mailboxes/categories", category_counts)
    app.router.add_get("/api/v1/email/inbox", inbox)
    app.router.add_get("/api/v1/email/search", search)
    app.router.add_post("/api/v1/email/send", send)
    app.router.add_post("/api/v1/drafts", draft)
    app.router.add_get("/api/v1/email/{id}", message)
    app.router.add_delete("/api/v1/email/{id}", delete)
    app.router.add_post("/api/v1/email/{id}/flags", flags)
    app.router.add_post("/api/v1/email/{id}/move", move)
    app.router.add_post("/api/v1/email/{id}/archive", archive)
    app.router.add_get("/api/v1/email/{id}/attachments/{part}", attachment)
    app.router.add_get("/api/v1/settings", get_settings)
    app.router.add_put("/api/v1/settings", put_settings)
