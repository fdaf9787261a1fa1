"""The metadata store's edge: MongoDB (or FerretDB, its wire protocol over SQLite) through
pymongo's native async client. The only way into the store: nothing else in the bridge reads or
writes it or builds a query (bridge.stack's launcher only waits for it to answer a ping), and the
store's errors leave it as Unavailable (bridge.errors), never as pymongo's (`open` alone logs them
and starts anyway).

It holds the message metadata index, one document per message keyed by (account, mailbox,
UIDVALIDITY, UID), kept current by its own consumer group from the same events the browsers get,
so listings, counts and search never poll IMAP; per-user settings; which accounts the backfill
indexed; and Web Push subscriptions with the bridge's VAPID key (bridge.store_push). Only metadata:
bodies stay in Dovecot.

This module opens the connection, makes the indexes and upgrades the index's format, prunes
tombstones in the background and reports the store's health. What the index does with events is
bridge.store_writes (which does not depend on the order they arrive in) and bridge.store_flags (flag
changes, last-writer-wins per flag); listings, search, contacts and the per-account records are
bridge.store_reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import PyMongoError

from bridge import store_push, store_reads, store_writes
from bridge.errors import Unavailable
from bridge.events import Event
from bridge.search_query import SearchQuery
from bridge.store_flags import SEEN, now_ms
from bridge.store_writes import (
    BULK_CHUNK,
    FACTS,
    TOMBSTONE_DAYS,
    IndexChanges,
    MailboxCounts,
    message_doc_id,
)
from bridge.webpush import Subscription

# What the rest of the bridge (and the tests) take from the store, wherever it is defined.
__all__ = [
    "BULK_CHUNK",
    "FACTS",
    "SEEN",
    "TOMBSTONE_DAYS",
    "IndexChanges",
    "MailboxCounts",
    "Store",
    "message_doc_id",
]

log = logging.getLogger(__name__)

MESSAGES = "messages"
EARLY_FLAGS = "early_flags"
OPERATION_TIMEOUT_MS = 30_000
POOL_SIZE = 8
# Version 2: message documents keyed by `message_doc_id`, summaries by Message-ID. Version 3: each
# document has `arrived`, the order of listings. An index of an older format is dropped at start and
# rebuilt from IMAP by the backfill (bridge.backfill), which reads the arrival as INTERNALDATE.
INDEX_FORMAT = 3
PRUNE_EVERY_S = 3600.0


@contextlib.contextmanager
def _answered(failed: str = "store", *, bulk: bool = False) -> Iterator[None]:
    """Map the store's errors, at its edge, to the bridge's: Unavailable, whose message starts with
    `failed`. With `bulk`, a KeyError too: FerretDB v1.24 sometimes answers a bulk write without
    `nModified`, and pymongo's merging of the replies raises it; the write may be partly applied, so
    the caller retries."""
    try:
        yield
    except PyMongoError as exc:
        raise Unavailable(f"{failed}: {exc}") from None
    except KeyError as exc:
        if not bulk:
            raise
        raise Unavailable(f"{failed}: incomplete reply to a bulk write (no {exc})") from None


class Store:
    """The metadata store, opened (`open`) and closed (`close`) with the bridge. Its collections are
    attributes for the tests to inspect; the bridge goes through the methods."""

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
        self.accounts = self.db["accounts"]  # which accounts the backfill indexed
        self.push_subscriptions = self.db["push_subscriptions"]  # bridge.store_push
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
            # Listings: latest arrival first per mailbox (ties by UID); unread counts.
            await self.messages.create_index(
                [("account", ASCENDING), ("mailbox", ASCENDING), ("arrived", DESCENDING), ("uid", DESCENDING)]
            )
            await self.messages.create_index([("account", ASCENDING), ("mailbox", ASCENDING), ("seen", ASCENDING)])
            # Contacts: the account's newest mail across mailboxes, read until the scan's bound.
            await self.messages.create_index([("account", ASCENDING), ("arrived", DESCENDING), ("uid", DESCENDING)])
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
            await self.accounts.delete_many({})
        # Summaries and counts of format 1 were documents; they live in Redis now (bridge.index_cache).
        await self.db["mta_summaries"].drop()
        await meta.update_one({"_id": "index-format"}, {"$set": {"version": INDEX_FORMAT}}, upsert=True)

    async def close(self) -> None:
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        await self.client.close()

    async def prune(self, now: int | None = None) -> None:
        """Remove tombstones and unclaimed early flag changes older than TOMBSTONE_DAYS before `now`
        (milliseconds, the clock by default; a scan of both collections on FerretDB: run in the
        background, once an hour)."""
        with _answered():
            await store_writes.prune(self.messages, self.early_flags, now if now is not None else now_ms())

    def _maybe_prune(self) -> None:
        if time.monotonic() < self._next_prune or (self._prune_task is not None and not self._prune_task.done()):
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S

        async def prune() -> None:
            try:
                await self.prune()
            except Unavailable as exc:
                log.warning("pruning tombstones postponed: %s", exc)

        self._prune_task = asyncio.create_task(prune(), name="store-prune")

    async def describe(self) -> str:
        """Which store answers: "FerretDB v1.24.2" or "MongoDB 7.0.4, replica set rs0" (buildInfo and
        hello, MongoDB's database commands), so /health names what the operator connected."""
        with _answered("store did not answer"):
            info = await self.client.admin.command("buildInfo")
            hello = await self.client.admin.command("hello")
        if "ferretdbVersion" in info:
            return f"FerretDB {info['ferretdbVersion']}"
        name = f"MongoDB {info.get('version', '?')}"
        if hello.get("setName"):
            return f"{name}, replica set {hello['setName']}"
        return f"{name}, sharded (mongos)" if hello.get("msg") == "isdbgrid" else f"{name}, standalone"

    async def ping(self) -> None:
        with _answered("store did not answer"):
            await self.client.admin.command("ping")

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
        with _answered(bulk=True):
            return await store_writes.apply(self.messages, self.early_flags, events, facts, early)

    async def add_backfilled(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Index messages the backfill read from IMAP (index documents: bridge.backfill.document),
        each only if nothing is indexed for it yet, in bulk writes of at most BULK_CHUNK."""
        with _answered(bulk=True):
            await store_writes.add_backfilled(self.messages, docs)

    async def unread_by_category(self, account: str, mailbox: str) -> dict[str, int]:
        """Unread messages of a mailbox per category tab (bridge.store_reads.CATEGORIES)."""
        with _answered():
            return await store_reads.unread_by_category(self.messages, account, mailbox)

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        """(unread, total) of one mailbox, counted from its documents (a scan on FerretDB: the
        kept counts are in bridge.index_cache)."""
        with _answered():
            return await store_reads.counts(self.messages, account, mailbox)

    async def listing(
        self,
        account: str,
        mailbox: str,
        *,
        limit: int,
        cursor: str | None,
        filters: Sequence[str] = (),
        search: SearchQuery | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` index documents of the mailbox (or, with `search`, of what it selects in the
        account, in the mailbox unless it names one with in:), newest first, from where `cursor`
        (the previous page's) left off; and the next page's cursor, None on the last page.
        `filters` are names of store_reads.FILTERS, all of which must hold. Raises InvalidInput for
        an unknown filter or a cursor this did not make."""
        with _answered():
            return await store_reads.listing(
                self.messages, account, mailbox, limit=limit, cursor=cursor, filters=filters, search=search
            )

    async def documents(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Message documents by `_id`, in order (None where there is none; a tombstone as it is)."""
        with _answered():
            return await store_reads.documents(self.messages, ids)

    async def arrivals(self, account: str, mailbox: str) -> list[tuple[int, int, int, bytes]]:
        """(UIDVALIDITY, UID, arrival, search digest) of every message of the mailbox (a scan on FerretDB)."""
        with _answered():
            return await store_reads.arrivals(self.messages, account, mailbox)

    async def senders(
        self, account: str, needle: str, *, skip: Sequence[str], limit: int
    ) -> list[tuple[int, str, str]]:
        """(date, name, address) of who sent the account's newest mail outside the `skip` mailboxes,
        at most `limit` mails, narrowed by `needle` (store_reads.senders)."""
        with _answered():
            return await store_reads.senders(self.messages, account, needle, skip=skip, limit=limit)

    async def recipients(self, account: str, mailbox: str, *, limit: int) -> list[tuple[int, str]]:
        """(date, raw To header) of the account's newest mail in `mailbox`, at most `limit`."""
        with _answered():
            return await store_reads.recipients(self.messages, account, mailbox, limit=limit)

    async def account_settings(self, account: str) -> dict[str, Any]:
        """The account's stored settings ({} if none)."""
        with _answered():
            return await store_reads.account_settings(self.settings, account)

    async def update_settings(self, account: str, values: Mapping[str, Any]) -> None:
        """Store these settings of the account (name: value), keeping the others."""
        with _answered():
            await store_reads.update_settings(self.settings, account, values)

    async def is_indexed(self, account: str) -> bool:
        """Whether the backfill indexed the account's mail already (mark_indexed)."""
        with _answered():
            return await store_reads.is_indexed(self.accounts, account)

    async def mark_indexed(self, account: str) -> None:
        """Remember that the backfill indexed the account's mail: events keep it current from now on."""
        with _answered():
            await store_reads.mark_indexed(self.accounts, account)

    async def vapid_key(self, new_pem: str) -> str:
        """The bridge's VAPID key (PEM) kept in the store: `new_pem` if there was none yet."""
        with _answered():
            return await store_push.vapid_key(self.db["meta"], new_pem)

    async def add_push_subscription(self, sub_id: str, account: str, sub: Subscription, limit: int) -> None:
        """Keep a browser's push subscription for the account (at most `limit`, the oldest dropped)."""
        with _answered():
            await store_push.add(self.push_subscriptions, sub_id, account, sub, limit)

    async def remove_push_subscription(self, sub_id: str, accounts: tuple[str, ...]) -> bool:
        """Drop a push subscription of one of `accounts`; whether there was one."""
        with _answered():
            return await store_push.remove(self.push_subscriptions, sub_id, accounts)

    async def push_subscriptions_of(self, account: str) -> list[tuple[str, Subscription]]:
        """(id, subscription) of every browser subscribed for the account's pushes."""
        with _answered():
            return await store_push.of_account(self.push_subscriptions, account)
