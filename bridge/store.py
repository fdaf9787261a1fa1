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

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
)

log = logging.getLogger(__name__)

SEEN = "\\Seen"
MESSAGES = "messages"
OPERATION_TIMEOUT_MS = 30_000
POOL_SIZE = 8
# Version 2: message documents keyed by `message_doc_id`, summaries by Message-ID. An index of an
# older format is dropped at start and rebuilt from IMAP by the backfill (bridge.backfill).
INDEX_FORMAT = 2
FACTS = ("hasAttachments", "size", "category")
STATE = ("flags", "keywords", "seen")
DEFAULT_FACTS: dict[str, Any] = {"hasAttachments": False, "size": 0, "category": "primary"}

Write = UpdateOne | UpdateMany | DeleteOne | DeleteMany


def message_doc_id(account: str, mailbox: str, uidvalidity: int, uid: int) -> str:
    """A message document's `_id`: its key, as an unambiguous string (a JSON array)."""
    return json.dumps([account, mailbox, uidvalidity, uid], ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class IndexChanges:
    deltas: dict[tuple[str, str], list[int]]  # (account, mailbox) -> [unread, total] moved
    recounts: set[tuple[str, str]]  # mailboxes to count again (renamed, deleted)


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    account: str
    mailbox: str
    unread: int
    total: int


def _message_key(account: str, mailbox: str, uidvalidity: int, uid: int) -> dict[str, Any]:
    return {"account": account, "mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid}


class Store:
    def __init__(self, url: str, database: str) -> None:
        # Every operation is bounded (socketTimeoutMS, waitQueueTimeoutMS): a store that stops
        # answering must fail a request, so the indexer retries, rather than hold the index still
        # forever. Generously: FerretDB v1.24 never releases the SQLite connection of a request its
        # client gave up on, and after 100 of those it answers nothing at all. Not timeoutMS: it
        # would also stretch server selection to the whole bound, so a request made while the store
        # is down would wait 30 s for its 503 instead of serverSelectionTimeoutMS. And at most POOL_SIZE
        # requests at once: FerretDB v1.24 (SQLite) deadlocks once about 100 updates run at once
        # (each holds one of its 100 SQLite connections and waits for a second), which pymongo's
        # default pool of 100 reached in a connect storm; SQLite has one writer anyway.
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=2000,
            connectTimeoutMS=2000,
            socketTimeoutMS=OPERATION_TIMEOUT_MS,
            waitQueueTimeoutMS=OPERATION_TIMEOUT_MS,
            maxPoolSize=POOL_SIZE,
            tz_aware=True,
        )
        self.db = self.client[database]
        self.messages = self.db[MESSAGES]
        self.settings = self.db["settings"]

    async def open(self) -> None:
        try:
            await self._upgrade()
            await self.settings.create_index([("account", ASCENDING)], unique=True)
            info = await self.client.admin.command("buildInfo")
            if "ferretdbVersion" in info:
                # FerretDB v1.24's SQLite backend uses no index but `_id`'s for a query (its
                # filters become json_each subqueries): the indexes below would only cost every
                # write (settings are rare). Uniqueness of a message's key holds through its `_id`.
                log.info("store is FerretDB %s: only _id indexes", info["ferretdbVersion"])
                return
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
            await self.db["accounts"].delete_many({})
        # Summaries and counts of format 1 were documents; they live in Redis now (bridge.index_cache).
        await self.db["mta_summaries"].drop()
        await meta.update_one({"_id": "index-format"}, {"$set": {"version": INDEX_FORMAT}}, upsert=True)

    async def close(self) -> None:
        await self.client.close()

    async def describe(self) -> str:
        """Which store answers: "FerretDB v1.24.2" or "MongoDB 7.0.4, replica set rs0" (buildInfo and
        hello, MongoDB's database commands), so /health names what the operator connected."""
        try:
            info = await self.client.admin.command("buildInfo")
            hello = await self.client.admin.command("hello")
        except PyMongoError as exc:
            raise Unavailable(f"store did not answer: {exc}") from None
        if "ferretdbVersion" in info:
            return f"FerretDB {info['ferretdbVersion']}"
        name = f"MongoDB {info.get('version', '?')}"
        if hello.get("setName"):
            return f"{name}, replica set {hello['setName']}"
        return f"{name}, sharded (mongos)" if hello.get("msg") == "isdbgrid" else f"{name}, standalone"

    async def ping(self) -> None:
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            raise Unavailable(f"store did not answer: {exc}") from None

    async def apply(
        self,
        events: Sequence[Event],
        facts: Mapping[int, dict[str, Any]],
        early: Sequence[tuple[str, dict[str, Any]]],
    ) -> IndexChanges:
        """Bring the index up to date with one read of events, in order: `facts` are the filter's
        summaries known for the read's deliveries (by event index), `early` the deliveries indexed
        before their summary came (see bridge.index_cache). Returns how each mailbox's counts moved
        (a message inserted or deleted, or its `seen` changed): a replayed event moves nothing, so
        applying a read twice is harmless. Raises Unavailable when the store does not answer."""
        try:
            batch = _CountingBatch(self.messages)
            for index, event in enumerate(events):
                if isinstance(event, MailboxRename):
                    await batch.flush()  # what came before the rename, first
                    await self._rename(event)
                    batch.recount(event.account, event.old_mailbox)
                    batch.recount(event.account, event.mailbox)
                elif isinstance(event, MailboxDelete):
                    batch.write(DeleteMany({"account": event.account, "mailbox": event.mailbox}))
                    batch.recount(event.account, event.mailbox)
                elif isinstance(event, MessageExpunge):
                    await batch.expunge(event)
                elif isinstance(event, FlagsSet | FlagsClear) and SEEN in event.flags:
                    await batch.set_seen(event)
                elif isinstance(event, MessageAdded):
                    batch.add(event, facts.get(index))
                elif isinstance(event, FlagsSet | FlagsClear):
                    batch.write(_flag_update(event))
            # After every delivery of the read: a summary completes deliveries already written.
            for doc_id, summary in early:
                batch.write(UpdateOne({"_id": doc_id}, {"$set": {k: summary[k] for k in FACTS}}))
            await batch.flush()
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None
        except KeyError as exc:
            # FerretDB v1.24 sometimes answers a bulk write without `nModified`, and pymongo's
            # merging of the replies raises: the write may be partly applied, so it is retried.
            raise Unavailable(f"store: incomplete reply to a bulk write (no {exc})") from None
        return IndexChanges(batch.deltas, batch.recounts)

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

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        """(unread, total) of one mailbox, counted from its documents (a scan on FerretDB: the
        kept counts are in bridge.index_cache)."""
        try:
            total = await self.messages.count_documents({"account": account, "mailbox": mailbox})
            unread = await self.messages.count_documents({"account": account, "mailbox": mailbox, "seen": False})
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from None
        return unread, total


class _CountingBatch:
    """One read's writes to the messages collection, in order, and how each moved its mailbox's
    counts. Inserts and plain updates go in ordered bulk writes; an expunge and a change of `seen`
    need the document as it was, so they go one by one (after what came before them)."""

    def __init__(self, messages: Any) -> None:
        self.messages = messages
        self.writes: list[Write] = []
        self.added: dict[int, tuple[str, str, bool]] = {}  # write position -> (account, mailbox, seen)
        self.deltas: dict[tuple[str, str], list[int]] = {}  # (account, mailbox) -> [unread, total]
        self.recounts: set[tuple[str, str]] = set()

    def _delta(self, account: str, mailbox: str) -> list[int]:
        return self.deltas.setdefault((account, mailbox), [0, 0])

    def write(self, op: Write) -> None:
        self.writes.append(op)

    def recount(self, account: str, mailbox: str) -> None:
        self._delta(account, mailbox)
        self.recounts.add((account, mailbox))

    def add(self, event: MessageAdded, summary: dict[str, Any] | None) -> None:
        self._delta(event.account, event.mailbox)
        self.added[len(self.writes)] = (event.account, event.mailbox, SEEN in event.flags)
        self.writes.append(_message_upsert(event, summary))

    async def flush(self) -> None:
        if not self.writes:
            return
        result = await self.messages.bulk_write(self.writes, ordered=True)
        for position in result.upserted_ids:  # inserted, not updated: a new message
            account, mailbox, seen = self.added[position]
            delta = self._delta(account, mailbox)
            delta[0] += 0 if seen else 1
            delta[1] += 1
        self.writes, self.added = [], {}

    async def expunge(self, event: MessageExpunge) -> None:
        await self.flush()
        delta = self._delta(event.account, event.mailbox)
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        gone = await self.messages.find_one_and_delete({"_id": doc_id})  # no projection: FerretDB lacks it here
        if gone is not None:
            delta[0] -= 0 if gone.get("seen") else 1
            delta[1] -= 1

    async def set_seen(self, event: FlagsSet | FlagsClear) -> None:
        await self.flush()
        delta = self._delta(event.account, event.mailbox)
        query, update = _flag_change(event)
        before = await self.messages.find_one_and_update(query, update, return_document=ReturnDocument.BEFORE)
        seen_now = isinstance(event, FlagsSet)
        if before is not None and bool(before.get("seen")) != seen_now:
            delta[0] += -1 if seen_now else 1


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


def _message_upsert(event: MessageAdded, summary: dict[str, Any] | None) -> UpdateOne:
    doc = _message_doc(event)
    # Flags as delivered only for a new document: on one already there (a replayed event, or the
    # backfill came first) the flag events since then hold the truth, and the counts with them.
    update: dict[str, Any] = {
        "$set": {k: v for k, v in doc.items() if k not in STATE},
        "$setOnInsert": {k: doc[k] for k in STATE},
    }
    if summary is not None:
        update["$set"].update({k: summary[k] for k in FACTS})
    else:
        # Not known yet: defaults for a new document, and what a summary wrote stays.
        update["$setOnInsert"].update(DEFAULT_FACTS)
    doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
    return UpdateOne({"_id": doc_id}, update, upsert=True)


def _flag_update(event: FlagsSet | FlagsClear) -> UpdateOne:
    return UpdateOne(*_flag_change(event))


def _flag_change(event: FlagsSet | FlagsClear) -> tuple[dict[str, Any], dict[str, Any]]:
    """(filter, update) of a flag change."""
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
    return {"_id": message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)}, update
