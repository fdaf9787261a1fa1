"""Metadata store edge: MongoDB (or FerretDB, its wire protocol over SQLite) through pymongo's
native async client.

Holds the message metadata index, one document per message keyed by (account, mailbox,
UIDVALIDITY, UID), kept current by its own consumer group from the same events the browsers get,
so listings, counts and search never poll IMAP; and per-user settings. Only metadata: bodies stay
in Dovecot.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import PyMongoError

from bridge.errors import Unavailable
from bridge.events import (
    Event,
    FlagsClear,
    FlagsSet,
    MailboxDelete,
    MailboxRename,
    MessageAdded,
    MessageExpunge,
    MtaAccepted,
)

log = logging.getLogger(__name__)

SEEN = "\\Seen"


def _message_key(account: str, mailbox: str, uidvalidity: int, uid: int) -> dict[str, Any]:
    return {"account": account, "mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid}


class Store:
    def __init__(self, url: str, database: str) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, tz_aware=True
        )
        self.db = self.client[database]
        self.messages = self.db["messages"]
        self.mta = self.db["mta_summaries"]
        self.settings = self.db["settings"]

    async def open(self) -> None:
        try:
            await self.messages.create_index(
                [("account", ASCENDING), ("mailbox", ASCENDING), ("uidvalidity", ASCENDING), ("uid", ASCENDING)],
                unique=True,
            )
            # Listings: newest first per mailbox (ties by UID); unread counts.
            await self.messages.create_index(
                [("account", ASCENDING), ("mailbox", ASCENDING), ("date", DESCENDING), ("uid", DESCENDING)]
            )
            await self.messages.create_index([("account", ASCENDING), ("mailbox", ASCENDING), ("seen", ASCENDING)])
            # Contacts: the account's newest mail across mailboxes, read until the scan's bound.
            await self.messages.create_index([("account", ASCENDING), ("date", DESCENDING), ("uid", DESCENDING)])
            await self.mta.create_index([("messageId", ASCENDING)])
            await self.settings.create_index([("account", ASCENDING)], unique=True)
        except PyMongoError as exc:
            # Start anyway: the index catches up once the store answers (health reports it).
            log.warning("store unavailable at start: %s", exc)

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            raise Unavailable(f"store did not answer: {exc}") from None

    async def apply(self, event: Event) -> tuple[str, str] | None:
        """Bring the index up to date with one event; returns the (account, mailbox) whose counts
        may have changed (a message added or expunged, \\Seen set or cleared), if any. Raises
        Unavailable when the store does not answer."""
        try:
            return await self._apply(event)
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None

    async def _apply(self, event: Event) -> tuple[str, str] | None:
        if isinstance(event, MessageAdded):
            await self.index_message(event)
            return event.account, event.mailbox
        if isinstance(event, MessageExpunge):
            key = _message_key(event.account, event.mailbox, event.uidvalidity, event.uid)
            await self.messages.delete_one(key)
            return event.account, event.mailbox
        if isinstance(event, FlagsSet | FlagsClear):
            key = _message_key(event.account, event.mailbox, event.uidvalidity, event.uid)
            op = "$addToSet" if isinstance(event, FlagsSet) else "$pull"
            change: dict[str, Any] = {}
            if event.flags:
                change["flags"] = {"$each": list(event.flags)} if op == "$addToSet" else {"$in": list(event.flags)}
            if event.keywords:
                change["keywords"] = (
                    {"$each": list(event.keywords)} if op == "$addToSet" else {"$in": list(event.keywords)}
                )
            update: dict[str, Any] = {op: change}
            if SEEN in event.flags:
                update["$set"] = {"seen": isinstance(event, FlagsSet)}
            await self.messages.update_one(key, update)
            # Only \Seen moves a mailbox's counts; other flags and keywords leave unread and total
            # as they were, so there is nothing to recount (and no count query per flag change).
            return (event.account, event.mailbox) if SEEN in event.flags else None
        if isinstance(event, MailboxRename):
            # Dovecot keeps UIDs and UIDVALIDITY across a rename (RFC 3501 6.3.5 allows either).
            await self.messages.update_many(
                {"account": event.account, "mailbox": event.old_mailbox}, {"$set": {"mailbox": event.mailbox}}
            )
            return None
        if isinstance(event, MailboxDelete):
            await self.messages.delete_many({"account": event.account, "mailbox": event.mailbox})
            return None
        if isinstance(event, MtaAccepted) and event.message_id:
            summary = {
                "messageId": event.message_id,
                "hasAttachments": bool(event.attachments),
                "attachments": [
                    {"filename": a.filename, "contentType": a.content_type, "size": a.size} for a in event.attachments
                ],
                "size": event.size,
                "category": event.category,
            }
            await self.mta.update_one({"messageId": event.message_id}, {"$set": summary}, upsert=True)
            # The delivery may have been indexed first: complete it.
            await self.messages.update_many(
                {"messageId": event.message_id, "account": {"$in": list(event.rcpt_to)}},
                {"$set": {"hasAttachments": summary["hasAttachments"], "size": event.size, "category": event.category}},
            )
        return None

    async def index_message(self, event: MessageAdded) -> None:
        summary = await self.mta.find_one({"messageId": event.message_id}) if event.message_id else None
        doc = {
            **_message_key(event.account, event.mailbox, event.uidvalidity, event.uid),
            "from": event.from_,
            "fromAddress": event.from_address,
            "fromName": event.from_name,
            "to": event.to,
            "toAddress": event.to_address,
            "subject": event.subject,
            "snippet": event.snippet,
            "messageId": event.message_id,
            "date": event.date if event.date is not None else event.ts // 1000,
            "flags": list(event.flags),
            "keywords": list(event.keywords),
            "seen": SEEN in event.flags,
            "hasAttachments": bool(summary and summary.get("hasAttachments")),
            "size": int(summary["size"]) if summary else 0,
            "category": str(summary.get("category", "primary")) if summary else "primary",
        }
        await self.messages.update_one(
            _message_key(event.account, event.mailbox, event.uidvalidity, event.uid), {"$set": doc}, upsert=True
        )

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        """(unread, total) of one mailbox, from the index."""
        try:
            total = await self.messages.count_documents({"account": account, "mailbox": mailbox})
            unread = await self.messages.count_documents({"account": account, "mailbox": mailbox, "seen": False})
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None
        return unread, total
