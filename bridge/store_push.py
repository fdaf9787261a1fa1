"""Web Push records in the store: each account's browser subscriptions, and the VAPID key the
bridge made for itself (when BRIDGE_VAPID_PRIVATE_KEY_FILE names none).

Part of the store (bridge.store is its only entry point, and maps the store's errors). A
subscription document is keyed by its account and its browser's id (bridge.webpush.subscription_id,
field `browser`), so a browser that subscribes again replaces its own; an account keeps at most
`limit`, the oldest dropped first.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import DESCENDING

from bridge.store_flags import Documents
from bridge.webpush import Subscription

VAPID_DOC = "vapid-key"


async def vapid_key(meta: Documents, new_pem: str) -> str:
    """The key kept in the store, `new_pem` if none was yet: every node that starts at once ends
    with the same one (an upsert that only sets it on insert, then a read)."""
    await meta.update_one({"_id": VAPID_DOC}, {"$setOnInsert": {"pem": new_pem}}, upsert=True)
    doc = await meta.find_one({"_id": VAPID_DOC})
    pem: str = doc["pem"] if doc else new_pem
    return pem


async def add(subscriptions: Documents, sub_id: str, account: str, sub: Subscription, limit: int) -> None:
    now = int(time.time() * 1000)
    doc = {
        "account": account,
        "browser": sub_id,
        "endpoint": sub.endpoint,
        "p256dh": sub.p256dh,
        "auth": sub.auth,
        "created": now,
    }
    await subscriptions.replace_one({"_id": f"{account} {sub_id}"}, doc, upsert=True)
    kept = subscriptions.find({"account": account}, {"_id": 1}).sort([("created", DESCENDING), ("_id", DESCENDING)])
    extra = [doc["_id"] async for doc in kept.skip(limit)]
    if extra:
        await subscriptions.delete_many({"_id": {"$in": extra}, "account": account})


async def remove(subscriptions: Documents, sub_id: str, accounts: tuple[str, ...]) -> bool:
    """Drop a browser's subscription for those of `accounts` it has one for; whether it had any."""
    done = await subscriptions.delete_many({"browser": sub_id, "account": {"$in": list(accounts)}})
    return bool(done.deleted_count)


async def of_account(subscriptions: Documents, account: str) -> list[tuple[str, Subscription]]:
    found: list[tuple[str, Subscription]] = []
    async for doc in subscriptions.find({"account": account}):
        found.append((doc["browser"], _subscription(doc)))
    return found


def _subscription(doc: dict[str, Any]) -> Subscription:
    return Subscription(doc["endpoint"], doc["p256dh"], doc["auth"])
