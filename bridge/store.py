"""Metadata store edge: MongoDB (or FerretDB, its wire protocol over SQLite) through pymongo's
native async client.

Holds the message metadata index, one document per message keyed by (account, mailbox,
UIDVALIDITY, UID), kept current by its own consumer group from the same events the browsers get,
so listings, counts and search never poll IMAP; and per-user settings. Only metadata: bodies stay
in Dovecot.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteMany, DeleteOne, UpdateMany, UpdateOne
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
MESSAGES = "messages"
MTA = "mta_summaries"

Write = UpdateOne | UpdateMany | DeleteOne | DeleteMany


def _message_key(account: str, mailbox: str, uidvalidity: int, uid: int) -> dict[str, Any]:
    return {"account": account, "mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid}


class Store:
    def __init__(self, url: str, database: str) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, tz_aware=True
        )
        self.db = self.client[database]
        self.messages = self.db[MESSAGES]
        self.mta = self.db[MTA]
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

    async def apply(self, events: Sequence[Event]) -> list[tuple[str, str]]:
        """Bring the index up to date with one read of events, in order, as one ordered bulk write
        (per-event round trips to the store are what bounded the indexer under load). Returns the
        (account, mailbox) pairs whose counts may have changed (a message added or expunged, \\Seen
        set or cleared), each once. Raises Unavailable when the store does not answer."""
        try:
            summaries = await self._summaries(events)
            writes: list[tuple[str, Write]] = []
            changed: dict[tuple[str, str], None] = {}
            for event in events:
                if isinstance(event, MtaAccepted) and event.message_id:
                    summaries[event.message_id] = _summary(event)
                mailbox = _writes(event, summaries, writes)
                if mailbox is not None:
                    changed[mailbox] = None
            # Consecutive writes to one collection go as one ordered bulk write; the order across
            # collections is kept too (a summary stored before the delivery it completes).
            for collection, run in itertools.groupby(writes, key=lambda w: w[0]):
                await self.db[collection].bulk_write([op for _, op in run], ordered=True)
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None
        return list(changed)

    async def _summaries(self, events: Sequence[Event]) -> dict[str, dict[str, Any]]:
        """The filter's summaries already stored for the read's deliveries, by Message-ID."""
        wanted = {e.message_id for e in events if isinstance(e, MessageAdded) and e.message_id}
        if not wanted:
            return {}
        found: dict[str, dict[str, Any]] = {}
        async for doc in self.mta.find({"messageId": {"$in": sorted(wanted)}}):
            found[str(doc["messageId"])] = doc
        return found

    async def index_message(self, event: MessageAdded) -> None:
        await self.apply([event])

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        """(unread, total) of one mailbox, from the index."""
        try:
            total = await self.messages.count_documents({"account": account, "mailbox": mailbox})
            unread = await self.messages.count_documents({"account": account, "mailbox": mailbox, "seen": False})
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None
        return unread, total


def _summary(event: MtaAccepted) -> dict[str, Any]:
    return {
        "messageId": event.message_id,
        "hasAttachments": bool(event.attachments),
        "attachments": [
            {"filename": a.filename, "contentType": a.content_type, "size": a.size} for a in event.attachments
        ],
        "size": event.size,
        "category": event.category,
    }


def _message_doc(event: MessageAdded, summary: dict[str, Any] | None) -> dict[str, Any]:
    return {
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


def _writes(event: Event, summaries: dict[str, dict[str, Any]], out: list[tuple[str, Write]]) -> tuple[str, str] | None:
    """Append the index writes one event needs to `out`; return its mailbox if counts may move."""
    if isinstance(event, MessageAdded):
        summary = summaries.get(event.message_id) if event.message_id else None
        key = _message_key(event.account, event.mailbox, event.uidvalidity, event.uid)
        out.append((MESSAGES, UpdateOne(key, {"$set": _message_doc(event, summary)}, upsert=True)))
        return event.account, event.mailbox
    if isinstance(event, MessageExpunge):
        key = _message_key(event.account, event.mailbox, event.uidvalidity, event.uid)
        out.append((MESSAGES, DeleteOne(key)))
        return event.account, event.mailbox
    if isinstance(event, FlagsSet | FlagsClear):
        key = _message_key(event.account, event.mailbox, event.uidvalidity, event.uid)
        adding = isinstance(event, FlagsSet)
        op = "$addToSet" if adding else "$pull"
        change: dict[str, Any] = {}
        if event.flags:
            change["flags"] = {"$each": list(event.flags)} if adding else {"$in": list(event.flags)}
        if event.keywords:
            change["keywords"] = {"$each": list(event.keywords)} if adding else {"$in": list(event.keywords)}
        update: dict[str, Any] = {op: change}
        if SEEN in event.flags:
            update["$set"] = {"seen": adding}
        out.append((MESSAGES, UpdateOne(key, update)))
        # Only \Seen moves a mailbox's counts; other flags and keywords leave unread and total
        # as they were, so there is nothing to recount (and no count query per flag change).
        return (event.account, event.mailbox) if SEEN in event.flags else None
    if isinstance(event, MailboxRename):
        # Dovecot keeps UIDs and UIDVALIDITY across a rename (RFC 3501 6.3.5 allows either).
        out.append(
            (
                MESSAGES,
                UpdateMany(
                    {"account": event.account, "mailbox": event.old_mailbox},
                    {"$set": {"mailbox": event.mailbox}},
                ),
            )
        )
        return None
    if isinstance(event, MailboxDelete):
        out.append((MESSAGES, DeleteMany({"account": event.account, "mailbox": event.mailbox})))
        return None
    if isinstance(event, MtaAccepted) and event.message_id:
        summary = summaries[event.message_id]
        out.append((MTA, UpdateOne({"messageId": event.message_id}, {"$set": summary}, upsert=True)))
        # The delivery may have been indexed first: complete it.
        out.append(
            (
                MESSAGES,
                UpdateMany(
                    {"messageId": event.message_id, "account": {"$in": list(event.rcpt_to)}},
                    {
                        "$set": {
                            "hasAttachments": summary["hasAttachments"],
                            "size": event.size,
                            "category": event.category,
                        }
                    },
                ),
            )
        )
    return None
