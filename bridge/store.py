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
Bulk writes go in commands of at most BULK_CHUNK operations (`bulk_write`): FerretDB v1.24 stalls a
database for good on one update command that matches more than 100 documents.

The index does not depend on the order events arrive in. Events of different Dovecot processes can
overtake one another (docs/events.md, "Order"; a delivery whose hook waited for Redis and spooled
arrives after the flag changes an IMAP client made to it meanwhile), and several bridge nodes index
reads side by side. So:
- An expunge replaces the message's document by a tombstone (`gone`, and no `account`, so no listing,
  count or search sees it): a `message.new` or `message.append` that arrives later finds it and adds
  nothing (its identity is written only when it inserts), nor does the backfill ($setOnInsert).
  A UID is never reused within a UIDVALIDITY (RFC 3501 2.3.1.1), so the tombstone is right for good;
  tombstones are pruned after TOMBSTONE_DAYS.
- Flag changes are last-writer-wins per flag: each document keeps, per flag, the clock of the change
  that set its state (`clk`; `flag_clock`: the event's time, refined by the hook's occurrence key), and
  a change older than that is undone where it landed. A change whose message is not indexed yet is
  kept in `early_flags`, by the same `_id`; a delivery, once written, takes the record over (and the
  change, having looked for the document after writing its record, applies itself if the delivery
  came in between: one of the two always sees the other).
- A delivery's own flags are those it was saved with; every flag change of that message happened
  after it, so any recorded change wins over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

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
    FlagsChanged,
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

EARLY_FLAGS = "early_flags"
# How long a tombstone (and a flag change whose message never came) is kept: far longer than events
# of different processes can be apart (a spooled event waits while Redis is down for its producer).
TOMBSTONE_DAYS = 3
PRUNE_EVERY_S = 3600.0
BULK_CHUNK = 64  # operations per bulk write command: see bulk_write

Write = UpdateOne | UpdateMany | DeleteOne | DeleteMany

# The hook's occurrence key: dovecot:<its clock in microseconds, hex>-<random>.<place in transaction>
_OCCURRENCE_KEY = re.compile(r"^dovecot:([0-9a-f]{1,16})-[0-9a-f]{8}\.([0-9]{1,6})$")


def flag_clock(event: FlagsChanged) -> int:
    """When a flag change happened, for last-writer-wins: `ts` (milliseconds) in units of a
    nanosecond, refined by the hook's occurrence key (its transaction's microseconds, then the event's
    place in it), so two changes of one flag within a millisecond keep their order too."""
    found = _OCCURRENCE_KEY.match(event.key)
    if found:
        micros, place = int(found[1], 16), int(found[2])
        if abs(micros // 1000 - event.ts) <= 1:
            return micros * 1000 + min(place, 999)
    return event.ts * 1_000_000


def _clock_field(flag: str) -> str:
    """The field of `clk` that holds a flag's clock: no `.` (a path) and no leading `$` in the name."""
    return quote(flag, safe="").replace(".", "%2E")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self.early_flags = self.db[EARLY_FLAGS]
        self.settings = self.db["settings"]
        self._next_prune = time.monotonic() + 60.0  # not in the catch-up at start
        self._prune_task: asyncio.Task[None] | None = None

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
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        await self.client.close()

    async def prune(self, now_ms: int | None = None) -> None:
        """Remove tombstones and unclaimed early flag changes older than TOMBSTONE_DAYS (a scan of
        both collections on FerretDB: run in the background, once an hour)."""
        cutoff = (now_ms if now_ms is not None else _now_ms()) - TOMBSTONE_DAYS * 86_400_000
        await self.messages.delete_many({"gone": {"$exists": True}, "at": {"$lt": cutoff}})
        await self.early_flags.delete_many({"at": {"$lt": cutoff}})

    def _maybe_prune(self) -> None:
        if time.monotonic() < self._next_prune or (self._prune_task is not None and not self._prune_task.done()):
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S

        async def prune() -> None:
            try:
                await self.prune()
            except PyMongoError as exc:
                log.warning("pruning tombstones postponed: %s", exc)

        self._prune_task = asyncio.create_task(prune(), name="store-prune")

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
        self._maybe_prune()
        try:
            batch = _CountingBatch(self.messages, self.early_flags)
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
                elif isinstance(event, FlagsSet | FlagsClear):
                    await batch.change_flags(event)
                elif isinstance(event, MessageAdded):
                    batch.add(event, facts.get(index))
            # After every delivery of the read: a summary completes deliveries already written.
            for doc_id, summary in early:
                batch.write(UpdateOne({"_id": doc_id}, {"$set": {k: summary[k] for k in FACTS}}))
            await batch.flush()
            await batch.forget_early_flags()
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
            await bulk_write(self.messages, moved, ordered=False)
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
    counts. Inserts and plain updates go in ordered bulk writes; an expunge and a flag change need
    the document as it was, so they go one by one (after what came before them)."""

    def __init__(self, messages: Any, early_flags: Any) -> None:
        self.messages = messages
        self.early_flags = early_flags
        self.writes: list[Write] = []
        self.added: dict[int, tuple[str, str, bool]] = {}  # write position -> (account, mailbox, seen)
        self.added_ids: dict[str, tuple[str, str]] = {}  # document id -> (account, mailbox) of this flush's adds
        self.deltas: dict[tuple[str, str], list[int]] = {}  # (account, mailbox) -> [unread, total]
        self.recounts: set[tuple[str, str]] = set()
        self.expunged: list[str] = []  # document ids

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
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        self.added_ids[doc_id] = (event.account, event.mailbox)
        self.writes.append(_message_upsert(event, summary))

    async def flush(self) -> None:
        if not self.writes:
            return
        inserted, _matched = await bulk_write(self.messages, self.writes, ordered=True)
        for position in inserted:  # inserted, not updated: a new message
            account, mailbox, seen = self.added[position]
            delta = self._delta(account, mailbox)
            delta[0] += 0 if seen else 1
            delta[1] += 1
        added_ids = self.added_ids
        self.writes, self.added, self.added_ids = [], {}, {}
        await self._take_early_flags(added_ids)

    async def _take_early_flags(self, added: dict[str, tuple[str, str]]) -> None:
        """Apply the flag changes that came before these deliveries (after writing them: a change
        that comes now finds the document). One round trip per BULK_CHUNK deliveries when there are
        none, as is usual."""
        ids = list(added)
        for start in range(0, len(ids), BULK_CHUNK):
            chunk = ids[start : start + BULK_CHUNK]
            probe = [UpdateOne({"_id": doc_id}, {"$set": {"claimed": True}}) for doc_id in chunk]
            if (await self.early_flags.bulk_write(probe, ordered=False)).matched_count:
                for doc_id in chunk:
                    await self._take_early_flag(doc_id, *added[doc_id])

    async def _take_early_flag(self, doc_id: str, account: str, mailbox: str) -> None:
        record = await self.early_flags.find_one({"_id": doc_id})
        if record is None:
            return
        clocks = {unquote(field): int(clock) for field, clock in (record.get("clk") or {}).items()}
        on = set(record.get("on") or ())
        for value, names in ((True, on), (False, set(record.get("off") or ()) - on)):
            changes = {name: clocks.get(name, 0) for name in names}
            if changes:
                await self._change(account, mailbox, doc_id, value, changes)
        # Whatever a change adds to the record from now on, it also applies to the document.
        await self.early_flags.delete_one({"_id": doc_id})

    async def expunge(self, event: MessageExpunge) -> None:
        await self.flush()
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        # no projection: FerretDB lacks it here
        gone = await self.messages.find_one_and_replace(
            {"_id": doc_id}, {"gone": event.ts, "at": _now_ms()}, upsert=True, return_document=ReturnDocument.BEFORE
        )
        if _visible(gone):
            delta = self._delta(event.account, event.mailbox)
            delta[0] -= 0 if gone.get("seen") else 1
            delta[1] -= 1
        else:
            self._delta(event.account, event.mailbox)
        self.expunged.append(doc_id)  # flag changes kept for it no longer matter

    async def forget_early_flags(self) -> None:
        """Drop the flag changes kept for messages this read expunged (one round trip)."""
        if self.expunged:
            await bulk_write(self.early_flags, [DeleteOne({"_id": doc_id}) for doc_id in self.expunged], ordered=False)
            self.expunged = []

    async def change_flags(self, event: FlagsSet | FlagsClear) -> None:
        await self.flush()
        value, clock = isinstance(event, FlagsSet), flag_clock(event)
        changes = dict.fromkeys((*event.flags, *event.keywords), clock)
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        if SEEN in changes:
            self._delta(event.account, event.mailbox)  # its counts are reported, moved or not
        if await self._change(event.account, event.mailbox, doc_id, value, changes):
            return
        # Not indexed (yet): keep the change for its delivery, then look again, in case the delivery
        # was written meanwhile and looked for this record before it existed.
        await _record_early(self.early_flags, doc_id, value, changes)
        await self._change(event.account, event.mailbox, doc_id, value, changes)

    async def _change(self, account: str, mailbox: str, doc_id: str, value: bool, changes: dict[str, int]) -> bool:
        """Set (or clear) these flags of a message document, each unless a later change of it was
        applied already (then it is put back as that one left it). False if there is no document."""
        before = await self.messages.find_one_and_update(
            {"_id": doc_id}, _flag_update(value, changes), return_document=ReturnDocument.BEFORE
        )
        if before is None:
            return False
        stale = {name: _has(before, name) for name, clock in changes.items() if _clock(before, name) > clock}
        if stale:
            await _restore(self.messages, doc_id, stale)
        if _visible(before) and SEEN in changes:
            seen_before = bool(before.get("seen"))
            seen_after = stale.get(SEEN, value)
            if seen_after != seen_before:
                self._delta(account, mailbox)[0] += -1 if seen_after else 1
        return True


async def bulk_write(collection: Any, ops: Sequence[Write], *, ordered: bool) -> tuple[list[int], int]:
    """A bulk write in commands of at most BULK_CHUNK operations, in order; returns the positions
    that inserted (upserts) and how many operations matched a document. FerretDB v1.24 never answers
    one update command whose statements match more than 100 documents (each statement keeps one of
    the database's 100 SQLite connections; measured: 101 stall it, and every later request on that
    database, until FerretDB restarts), which a read applied again, or a rename, easily reached."""
    inserted: list[int] = []
    matched = 0
    for start in range(0, len(ops), BULK_CHUNK):
        result = await collection.bulk_write(ops[start : start + BULK_CHUNK], ordered=ordered)
        inserted += [start + position for position in result.upserted_ids]
        matched += result.matched_count
    return inserted, matched


def _visible(doc: Mapping[str, Any] | None) -> bool:
    """A message document listings and counts see: not a tombstone."""
    return doc is not None and "account" in doc and "gone" not in doc


def _clock(doc: Mapping[str, Any], name: str) -> int:
    return int((doc.get("clk") or {}).get(_clock_field(name), -1))


def _has(doc: Mapping[str, Any], name: str) -> bool:
    return name in (doc.get("flags") or ()) or name in (doc.get("keywords") or ())


def _flag_fields(names: Sequence[str]) -> dict[str, list[str]]:
    system = [n for n in names if n.startswith("\\")]
    keywords = [n for n in names if not n.startswith("\\")]
    return {field: found for field, found in (("flags", system), ("keywords", keywords)) if found}


def _flag_update(value: bool, changes: Mapping[str, int]) -> dict[str, Any]:
    """Set (or clear) flags and keywords, and raise each one's clock to the change's."""
    fields = _flag_fields(list(changes))
    update: dict[str, Any] = {"$max": {f"clk.{_clock_field(name)}": clock for name, clock in changes.items()}}
    if value:
        update["$addToSet"] = {field: {"$each": names} for field, names in fields.items()}
    else:
        # $pullAll, not $pull with $in: FerretDB v1.24 takes the latter and removes nothing.
        update["$pullAll"] = fields
    if SEEN in changes:
        update["$set"] = {"seen": value}
    return update


async def _restore(collection: Any, doc_id: str, state: Mapping[str, bool]) -> None:
    """Put flags back as a later change left them (rare: a change that arrived after a newer one)."""
    for value in (True, False):
        names = [name for name, present in state.items() if present == value]
        if not names:
            continue
        fields = _flag_fields(names)
        update: dict[str, Any] = (
            {"$addToSet": {f: {"$each": n} for f, n in fields.items()}} if value else {"$pullAll": fields}
        )
        if SEEN in names:
            update["$set"] = {"seen": value}
        await collection.update_one({"_id": doc_id}, update)


async def _record_early(early_flags: Any, doc_id: str, value: bool, changes: Mapping[str, int]) -> None:
    """Keep a flag change whose message is not indexed yet: per flag, its latest state and clock."""
    names = list(changes)
    now, then = ("on", "off") if value else ("off", "on")
    update: dict[str, Any] = {
        "$max": {f"clk.{_clock_field(name)}": clock for name, clock in changes.items()},
        "$addToSet": {now: {"$each": names}},
        "$pullAll": {then: names},
        "$set": {"at": _now_ms()},
    }
    before = await early_flags.find_one_and_update(
        {"_id": doc_id}, update, upsert=True, return_document=ReturnDocument.BEFORE
    )
    if before is None:
        return
    stale = [name for name, clock in changes.items() if _clock(before, name) > clock]
    for name in stale:  # a later change of it was recorded first: its state stays
        was_on = name in (before.get("on") or ())
        keep, drop = ("on", "off") if was_on else ("off", "on")
        await early_flags.update_one({"_id": doc_id}, {"$addToSet": {keep: name}, "$pullAll": {drop: [name]}})


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


IDENTITY = ("account", "mailbox", "uidvalidity", "uid")


def _message_upsert(event: MessageAdded, summary: dict[str, Any] | None) -> UpdateOne:
    doc = _message_doc(event)
    # Flags as delivered only for a new document: on one already there (a replayed event, or the
    # backfill came first) the flag events since then hold the truth, and the counts with them.
    # The identity too: a tombstone (the message was expunged before this arrived) stays one.
    update: dict[str, Any] = {
        "$set": {k: v for k, v in doc.items() if k not in STATE and k not in IDENTITY},
        "$setOnInsert": {k: doc[k] for k in (*IDENTITY, *STATE)},
    }
    if summary is not None:
        update["$set"].update({k: summary[k] for k in FACTS})
    else:
        # Not known yet: defaults for a new document, and what a summary wrote stays.
        update["$setOnInsert"].update(DEFAULT_FACTS)
    doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
    return UpdateOne({"_id": doc_id}, update, upsert=True)
