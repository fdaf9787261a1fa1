"""Metadata store edge: MongoDB (or FerretDB, its wire protocol over SQLite) through pymongo's
native async client.

Holds the message metadata index, one document per message keyed by (account, mailbox,
UIDVALIDITY, UID), kept current by its own consumer group from the same events the browsers get,
so listings, counts and search never poll IMAP; and per-user settings. Only metadata: bodies stay
in Dovecot.

Every write the event stream makes addresses one document by its `_id` alone: a message's `_id` is
derived from its key (`message_doc_id`), a filter summary's is its Message-ID. FerretDB's SQLite
backend (v1.24) answers a filter of exactly `{_id: <string>}` from an index and reads, decodes and
tests every document of the collection for any other filter, so a write by (account, mailbox,
UIDVALIDITY, UID) cost a scan of the whole index per event. MongoDB serves both from indexes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from pymongo import (
    ASCENDING,
    DESCENDING,
    AsyncMongoClient,
    DeleteMany,
    DeleteOne,
    ReturnDocument,
    UpdateMany,
    UpdateOne,
)
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
# Version 2: message documents keyed by `message_doc_id`, summaries by Message-ID. An index of an
# older format is dropped at start and rebuilt from IMAP by the backfill (bridge.backfill).
INDEX_FORMAT = 2
FACTS = ("hasAttachments", "size", "category")
DEFAULT_FACTS: dict[str, Any] = {"hasAttachments": False, "size": 0, "category": "primary"}

Write = UpdateOne | UpdateMany | DeleteOne | DeleteMany


def message_doc_id(account: str, mailbox: str, uidvalidity: int, uid: int) -> str:
    """A message document's `_id`: its key, as an unambiguous string (a JSON array)."""
    return json.dumps([account, mailbox, uidvalidity, uid], ensure_ascii=False, separators=(",", ":"))


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
            await self._upgrade()
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
            await self.settings.create_index([("account", ASCENDING)], unique=True)
        except PyMongoError as exc:
            # Start anyway: the index catches up once the store answers (health reports it).
            log.warning("store unavailable at start: %s", exc)

    async def _upgrade(self) -> None:
        meta = self.db["meta"]
        found = await meta.find_one({"_id": "index-format"})
        version = int(found["version"]) if found else 0
        if version >= INDEX_FORMAT:
            return
        if version or await self.messages.find_one({}) is not None:
            # The index is a cache of what Dovecot holds: rebuild it rather than rewrite it.
            log.warning("message index format %d is older than %d: rebuilding it from IMAP", version, INDEX_FORMAT)
            await self.messages.drop()
            await self.mta.drop()
            await self.db["accounts"].delete_many({})
        await meta.update_one({"_id": "index-format"}, {"$set": {"version": INDEX_FORMAT}}, upsert=True)

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            raise Unavailable(f"store did not answer: {exc}") from None

    async def apply(self, events: Sequence[Event]) -> list[tuple[str, str]]:
        """Bring the index up to date with one read of events, in order. Returns the (account,
        mailbox) pairs whose counts may have changed (a message added or expunged, \\Seen set or
        cleared), each once. Raises Unavailable when the store does not answer.

        The filter's summary of a mail (attachments, size, category) and Dovecot's delivery of it
        come in either order, on two streams. Each side records itself on the summary document in
        one atomic update that returns the other side's record: a delivery learns the summary if it
        is there, a summary learns the deliveries already indexed and completes them.
        """
        try:
            facts, early = await self._meet_summaries(events)
            writes: list[Write] = []
            changed: dict[tuple[str, str], None] = {}
            for index, event in enumerate(events):
                if isinstance(event, MailboxRename):
                    if writes:  # what came before the rename, first
                        await self.messages.bulk_write(writes, ordered=True)
                        writes = []
                    await self._rename(event)
                    continue
                mailbox = _writes(event, facts.get(index), writes)
                if mailbox is not None:
                    changed[mailbox] = None
            # After every delivery of the read: a summary completes deliveries already written.
            for doc_id, summary in early:
                writes.append(UpdateOne({"_id": doc_id}, {"$set": {k: summary[k] for k in FACTS}}))
            if writes:
                await self.messages.bulk_write(writes, ordered=True)
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None
        return list(changed)

    async def _meet_summaries(
        self, events: Sequence[Event]
    ) -> tuple[dict[int, dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """({event index: summary} for deliveries whose summary is known, [(message doc id,
        summary)] for deliveries indexed before their summary came)."""
        lookups: list[tuple[int, Any]] = []
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                update: dict[str, Any] = {"$set": _summary(event)}
            elif isinstance(event, MessageAdded) and event.message_id:
                doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
                update = {"$addToSet": {"deliveries": doc_id}}
            else:
                continue
            found = self.mta.find_one_and_update(
                {"_id": event.message_id}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
            lookups.append((index, found))
        facts: dict[int, dict[str, Any]] = {}
        early: list[tuple[str, dict[str, Any]]] = []
        results = await asyncio.gather(*(found for _, found in lookups))
        for (index, _), doc in zip(lookups, results, strict=True):
            if doc is None or "size" not in doc:
                continue  # a delivery whose summary has not come (yet)
            if isinstance(events[index], MessageAdded):
                facts[index] = doc
            else:
                early.extend((delivery, doc) for delivery in doc.get("deliveries", []))
        return facts, early

    async def _rename(self, event: MailboxRename) -> None:
        """Dovecot keeps UIDs and UIDVALIDITY across a rename (RFC 3501 6.3.5 allows either), but a
        message's `_id` names its mailbox: its documents move to new ids. Rare, so a plain scan."""
        old = {"account": event.account, "mailbox": event.old_mailbox}
        moved: list[Write] = []
        async for doc in self.messages.find(old):
            doc["mailbox"] = event.mailbox
            doc["_id"] = message_doc_id(event.account, event.mailbox, int(doc["uidvalidity"]), int(doc["uid"]))
            moved.append(UpdateOne({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True))
        # New documents before the old ones go: a crash in between leaves both, and the rename
        # event, left pending, is applied again and finishes the move.
        if moved:
            await self.messages.bulk_write(moved, ordered=False)
        await self.messages.delete_many(old)

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


def _message_doc(event: MessageAdded) -> dict[str, Any]:
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
    }


def _writes(event: Event, summary: dict[str, Any] | None, out: list[Write]) -> tuple[str, str] | None:
    """Append the index writes one event needs to `out`; return its mailbox if counts may move."""
    if isinstance(event, MessageAdded):
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        update: dict[str, Any] = {"$set": _message_doc(event)}
        if summary is not None:
            update["$set"].update({k: summary[k] for k in FACTS})
        else:
            # Not known yet: defaults for a new document, and what a summary wrote stays.
            update["$setOnInsert"] = DEFAULT_FACTS
        out.append(UpdateOne({"_id": doc_id}, update, upsert=True))
        return event.account, event.mailbox
    if isinstance(event, MessageExpunge):
        out.append(DeleteOne({"_id": message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)}))
        return event.account, event.mailbox
    if isinstance(event, FlagsSet | FlagsClear):
        adding = isinstance(event, FlagsSet)
        op = "$addToSet" if adding else "$pull"
        change: dict[str, Any] = {}
        if event.flags:
            change["flags"] = {"$each": list(event.flags)} if adding else {"$in": list(event.flags)}
        if event.keywords:
            change["keywords"] = {"$each": list(event.keywords)} if adding else {"$in": list(event.keywords)}
        flag_update: dict[str, Any] = {op: change}
        if SEEN in event.flags:
            flag_update["$set"] = {"seen": adding}
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        out.append(UpdateOne({"_id": doc_id}, flag_update))
        # Only \\Seen moves a mailbox's counts; other flags and keywords leave unread and total
        # as they were, so there is nothing to recount (and no count query per flag change).
        return (event.account, event.mailbox) if SEEN in event.flags else None
    if isinstance(event, MailboxDelete):
        out.append(DeleteMany({"account": event.account, "mailbox": event.mailbox}))
        return None
    return None
