"""Writes to the message index: events applied in reads, and the backfill, in any order they come.

Part of the store (bridge.store is its only entry point, and maps the store's errors). The index holds
one document per message keyed by (account, mailbox, UIDVALIDITY, UID). Every write the event stream
makes addresses one document by its `_id` alone: a message's `_id` is derived from its key
(`message_doc_id`). FerretDB's SQLite backend (v1.24) answers a filter of exactly `{_id: <string>}`
from an index and reads, decodes and tests every document of the collection for any other filter, so
a write by (account, mailbox, UIDVALIDITY, UID) cost a scan of the whole index per event. MongoDB
serves both from indexes. Bulk writes go in commands of at most BULK_CHUNK operations
(`bulk_write`): FerretDB v1.24 stalls a database for good on one update command that matches more
than 100 documents.

The index does not depend on the order events arrive in. Events of different Dovecot processes can
overtake one another (docs/events.md, "Order"; a delivery whose hook waited for Redis and spooled
arrives after the flag changes an IMAP client made to it meanwhile), and several bridge nodes index
reads side by side. So:
- An expunge replaces the message's document by a tombstone (`gone`, and no `account`, so no listing,
  count or search sees it): a `message.new` or `message.append` that arrives later finds it and adds
  nothing (its identity is written only when it inserts), nor does the backfill ($setOnInsert).
  A UID is never reused within a UIDVALIDITY (RFC 3501 2.3.1.1), so the tombstone is right for good;
  tombstones are pruned after TOMBSTONE_DAYS.
- Flag changes are last-writer-wins per flag, and a change whose message is not indexed yet is kept
  for its delivery (bridge.store_flags).
- A delivery's own flags are those it was saved with; every flag change of that message happened
  after it, so any recorded change wins over them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from pymongo import DeleteMany, DeleteOne, ReturnDocument, UpdateMany, UpdateOne

from bridge import store_flags
from bridge.events import (
    Event,
    FlagsClear,
    FlagsSet,
    MailboxDelete,
    MailboxRename,
    MessageAdded,
    MessageExpunge,
)
from bridge.search_match import digest
from bridge.store_flags import SEEN, Documents, now_ms

FACTS = ("hasAttachments", "size", "category")
STATE = ("flags", "keywords", "seen")
IDENTITY = ("account", "mailbox", "uidvalidity", "uid")
# When the message came into its mailbox (Unix seconds; listings sort by it): written by whoever
# indexes it first, the event (its time) or the backfill (IMAP's INTERNALDATE), and never moved.
ARRIVAL = ("arrived",)
DEFAULT_FACTS: dict[str, Any] = {"hasAttachments": False, "size": 0, "category": "primary"}
# How long a tombstone (and a flag change whose message never came) is kept: far longer than events
# of different processes can be apart (a spooled event waits while Redis is down for its producer).
TOMBSTONE_DAYS = 3
BULK_CHUNK = 64  # operations per bulk write command: see bulk_write

Write = UpdateOne | UpdateMany | DeleteOne | DeleteMany


def message_doc_id(account: str, mailbox: str, uidvalidity: int, uid: int) -> str:
    """A message document's `_id`: its key, as an unambiguous string (a JSON array)."""
    return json.dumps([account, mailbox, uidvalidity, uid], ensure_ascii=False, separators=(",", ":"))


# A message in a mailbox: (account, mailbox, UIDVALIDITY, UID).
MessageKey = tuple[str, str, int, int]


@dataclass(frozen=True)
class IndexChanges:
    deltas: dict[tuple[str, str], list[int]]  # (account, mailbox) -> [unread, total] moved
    recounts: set[tuple[str, str]]  # mailboxes to count again (renamed, deleted)
    # For the listing order (bridge.listing_order), in the order written: messages inserted, with
    # the arrival and the search digest written; messages added that were there already (their
    # arrival and digest are the document's); messages expunged; mailboxes renamed or deleted.
    inserted: list[tuple[MessageKey, int, bytes]] = field(default_factory=list)
    readded: list[MessageKey] = field(default_factory=list)
    expunged: list[MessageKey] = field(default_factory=list)
    reordered: set[tuple[str, str]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    account: str
    mailbox: str
    unread: int
    total: int
    # Orders counts taken by different writers (bridge.index_cache): a later state has a higher
    # version, so a browser keeps the counts with the highest and drops one that arrives late.
    version: int = 0


async def apply(
    messages: Documents,
    early_flags: Documents,
    events: Sequence[Event],
    facts: Mapping[int, dict[str, Any]],
    early: Sequence[tuple[str, dict[str, Any]]],
) -> IndexChanges:
    """One read of events, in order (bridge.store.Store.apply says what the arguments are)."""
    batch = _CountingBatch(messages, early_flags)
    for index, event in enumerate(events):
        if isinstance(event, MailboxRename):
            await batch.flush()  # what came before the rename, first
            await _rename(messages, event)
            batch.recount(event.account, event.old_mailbox)
            batch.recount(event.account, event.mailbox)
            batch.reordered |= {(event.account, event.old_mailbox), (event.account, event.mailbox)}
        elif isinstance(event, MailboxDelete):
            batch.write(DeleteMany({"account": event.account, "mailbox": event.mailbox}))
            batch.recount(event.account, event.mailbox)
            batch.reordered.add((event.account, event.mailbox))
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
    return IndexChanges(batch.deltas, batch.recounts, batch.inserted, batch.readded, batch.expunged, batch.reordered)


async def _rename(messages: Documents, event: MailboxRename) -> None:
    """Dovecot keeps UIDs and UIDVALIDITY across a rename (RFC 3501 6.3.5 allows either), but a
    message's `_id` names its mailbox: its documents move to new ids. Rare, so a plain scan."""
    old = {"account": event.account, "mailbox": event.old_mailbox}
    moved: list[Write] = []
    async for doc in messages.find(old):
        doc["mailbox"] = event.mailbox
        doc["_id"] = message_doc_id(event.account, event.mailbox, int(doc["uidvalidity"]), int(doc["uid"]))
        moved.append(UpdateOne({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True))
    # New documents before the old ones go: a crash in between leaves both, and the rename
    # event, left pending, is applied again and finishes the move.
    if moved:
        await bulk_write(messages, moved, ordered=False)
    await messages.delete_many(old)


async def add_backfilled(messages: Documents, docs: Sequence[Mapping[str, Any]]) -> None:
    """Index messages read from IMAP, each only if nothing is indexed for it yet ($setOnInsert): a
    document the events wrote holds newer state, and a tombstone stays one."""
    writes: list[Write] = []
    for doc in docs:
        doc_id = message_doc_id(doc["account"], doc["mailbox"], doc["uidvalidity"], doc["uid"])
        writes.append(UpdateOne({"_id": doc_id}, {"$setOnInsert": dict(doc)}, upsert=True))
    # In commands of BULK_CHUNK: a backfill run again over an indexed mailbox matches every one.
    await bulk_write(messages, writes, ordered=False)


async def prune(messages: Documents, early_flags: Documents, now: int) -> None:
    """Remove tombstones and unclaimed early flag changes older than TOMBSTONE_DAYS before `now`
    (milliseconds; a scan of both collections on FerretDB)."""
    cutoff = now - TOMBSTONE_DAYS * 86_400_000
    await messages.delete_many({"gone": {"$exists": True}, "at": {"$lt": cutoff}})
    await early_flags.delete_many({"at": {"$lt": cutoff}})


class _CountingBatch:
    """One read's writes to the messages collection, in order, and how each moved its mailbox's
    counts. Inserts and plain updates go in ordered bulk writes; an expunge and a flag change need
    the document as it was, so they go one by one (after what came before them)."""

    def __init__(self, messages: Documents, early_flags: Documents) -> None:
        self.messages = messages
        self.early_flags = early_flags
        self.writes: list[Write] = []
        self.added: dict[int, tuple[MessageKey, int, bool, bytes]] = {}  # position -> (key, arrived, seen, digest)
        self.added_ids: dict[str, tuple[str, str]] = {}  # document id -> (account, mailbox) of this flush's adds
        self.deltas: dict[tuple[str, str], list[int]] = {}  # (account, mailbox) -> [unread, total]
        self.recounts: set[tuple[str, str]] = set()
        self.expunged: list[MessageKey] = []
        self.inserted: list[tuple[MessageKey, int, bytes]] = []  # (message, arrival and digest written)
        self.readded: list[MessageKey] = []  # added, but its document was there already
        self.reordered: set[tuple[str, str]] = set()

    def _delta(self, account: str, mailbox: str) -> list[int]:
        return self.deltas.setdefault((account, mailbox), [0, 0])

    def write(self, op: Write) -> None:
        self.writes.append(op)

    def recount(self, account: str, mailbox: str) -> None:
        self._delta(account, mailbox)
        self.recounts.add((account, mailbox))

    def add(self, event: MessageAdded, summary: dict[str, Any] | None) -> None:
        self._delta(event.account, event.mailbox)
        key = (event.account, event.mailbox, event.uidvalidity, event.uid)
        doc = _message_doc(event)
        self.added[len(self.writes)] = (key, doc["arrived"], SEEN in event.flags, digest(doc))
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        self.added_ids[doc_id] = (event.account, event.mailbox)
        self.writes.append(_message_upsert(doc_id, doc, summary))

    async def flush(self) -> None:
        if not self.writes:
            return
        inserted, _matched = await bulk_write(self.messages, self.writes, ordered=True)
        for position in inserted:  # inserted, not updated: a new message
            key, arrived, seen, searched = self.added[position]
            delta = self._delta(key[0], key[1])
            delta[0] += 0 if seen else 1
            delta[1] += 1
            self.inserted.append((key, arrived, searched))
        new = set(inserted)
        self.readded += [key for position, (key, *_written) in self.added.items() if position not in new]
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
            if await store_flags.any_early(self.early_flags, chunk):
                for doc_id in chunk:
                    await self._take_early_flag(doc_id, *added[doc_id])

    async def _take_early_flag(self, doc_id: str, account: str, mailbox: str) -> None:
        kept = await store_flags.early_changes(self.early_flags, doc_id)
        if kept is None:
            return
        for value, changes in kept:
            await self._change(account, mailbox, doc_id, value, changes)
        # Whatever a change adds to the record from now on, it also applies to the document.
        await self.early_flags.delete_one({"_id": doc_id})

    async def expunge(self, event: MessageExpunge) -> None:
        await self.flush()
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        # no projection: FerretDB lacks it here
        gone = await self.messages.find_one_and_replace(
            {"_id": doc_id}, {"gone": event.ts, "at": now_ms()}, upsert=True, return_document=ReturnDocument.BEFORE
        )
        if visible(gone):
            delta = self._delta(event.account, event.mailbox)
            delta[0] -= 0 if gone.get("seen") else 1
            delta[1] -= 1
        else:
            self._delta(event.account, event.mailbox)
        # Flag changes kept for it no longer matter (forget_early_flags); the listing order drops it.
        self.expunged.append((event.account, event.mailbox, event.uidvalidity, event.uid))

    async def forget_early_flags(self) -> None:
        """Drop the flag changes kept for messages this read expunged (one round trip)."""
        if self.expunged:
            drops = [DeleteOne({"_id": message_doc_id(*key)}) for key in self.expunged]
            await bulk_write(self.early_flags, drops, ordered=False)

    async def change_flags(self, event: FlagsSet | FlagsClear) -> None:
        await self.flush()
        value, clock = isinstance(event, FlagsSet), store_flags.flag_clock(event)
        changes = dict.fromkeys((*event.flags, *event.keywords), clock)
        doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
        if SEEN in changes:
            self._delta(event.account, event.mailbox)  # its counts are reported, moved or not
        if await self._change(event.account, event.mailbox, doc_id, value, changes):
            return
        # Not indexed (yet): keep the change for its delivery, then look again, in case the delivery
        # was written meanwhile and looked for this record before it existed.
        await store_flags.record_early(self.early_flags, doc_id, value, changes)
        await self._change(event.account, event.mailbox, doc_id, value, changes)

    async def _change(self, account: str, mailbox: str, doc_id: str, value: bool, changes: dict[str, int]) -> bool:
        """Apply a flag change to a message document (store_flags.change) and count what it moved.
        False if there is no document."""
        found = await store_flags.change(self.messages, doc_id, value, changes)
        if found is None:
            return False
        before, stale = found
        if visible(before) and SEEN in changes:
            seen_before = bool(before.get("seen"))
            seen_after = stale.get(SEEN, value)
            if seen_after != seen_before:
                self._delta(account, mailbox)[0] += -1 if seen_after else 1
        return True


async def bulk_write(collection: Documents, ops: Sequence[Write], *, ordered: bool) -> tuple[list[int], int]:
    """A bulk write in commands of at most BULK_CHUNK operations, in order; returns the positions
    that inserted (upserts) and how many operations matched a document. FerretDB v1.24 never answers
    one update command whose statements match more than 100 documents (each statement keeps one of
    the database's 100 SQLite connections; measured: 101 stall it, and every later request on that
    database, until FerretDB restarts), which a read applied again, or a rename, easily reached."""
    inserted: list[int] = []
    matched = 0
    for start in range(0, len(ops), BULK_CHUNK):
        result = await collection.bulk_write(ops[start : start + BULK_CHUNK], ordered=ordered)
        inserted += [start + position for position in result.upserted_ids or {}]  # None only unacknowledged
        matched += result.matched_count
    return inserted, matched


def visible(doc: Mapping[str, Any] | None) -> TypeGuard[Mapping[str, Any]]:
    """A message document listings and counts see: not a tombstone."""
    return doc is not None and "account" in doc and "gone" not in doc


def _arrival(event: MessageAdded) -> int:
    """When the message came into its mailbox, by the event (Unix seconds)."""
    return event.ts // 1000


def _message_doc(event: MessageAdded) -> dict[str, Any]:
    return {
        "account": event.account,
        "mailbox": event.mailbox,
        "uidvalidity": event.uidvalidity,
        "uid": event.uid,
        "from": event.from_,
        "fromAddress": event.from_address,
        "fromName": event.from_name,
        "to": event.to,
        "toAddress": event.to_address,
        "subject": event.subject,
        "snippet": event.snippet,
        "messageId": event.message_id,
        "date": event.date if event.date is not None else event.ts // 1000,
        "arrived": _arrival(event),
        "flags": list(event.flags),
        "keywords": list(event.keywords),
        "seen": SEEN in event.flags,
    }


def _message_upsert(doc_id: str, doc: dict[str, Any], summary: dict[str, Any] | None) -> UpdateOne:
    # Flags as delivered only for a new document: on one already there (a replayed event, or the
    # backfill came first) the flag events since then hold the truth, and the counts with them.
    # The identity too: a tombstone (the message was expunged before this arrived) stays one.
    update: dict[str, Any] = {
        "$set": {k: v for k, v in doc.items() if k not in (*STATE, *IDENTITY, *ARRIVAL)},
        "$setOnInsert": {k: doc[k] for k in (*IDENTITY, *STATE, *ARRIVAL)},
    }
    if summary is not None:
        update["$set"].update({k: summary[k] for k in FACTS})
    else:
        # Not known yet: defaults for a new document, and what a summary wrote stays.
        update["$setOnInsert"].update(DEFAULT_FACTS)
    return UpdateOne({"_id": doc_id}, update, upsert=True)
