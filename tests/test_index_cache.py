"""bridge.index_cache: the kept unread and total counts of each mailbox, against the session's Redis
and the real store: when they are taken from the store, moved, dropped and kept, and the version
that orders counts taken by different writers.

The store is the stack's own, under accounts of each test's own; `Counted` only notes how often
the cache asks it to count.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from bridge.events import MessageExpunge, MessageNew
from bridge.index_cache import IndexCache, _with_believable_date
from bridge.stack.launcher import StackInfo
from bridge.store import MailboxCounts, Store, message_doc_id

TS = 1_700_000_000_000  # ms


def delivered(account: str, uid: int, **fields: object) -> MessageNew:
    return MessageNew(
        key=f"dovecot:{account}:{uid}",
        ts=TS,
        account=account,
        mailbox="INBOX",
        uidvalidity=1,
        uid=uid,
        message_id=f"<{uid}@outside.test>",
        **fields,  # type: ignore[arg-type]
    )


def test_a_delivery_keeps_only_a_date_it_can_have_had() -> None:
    arrived = TS // 1000
    kept = delivered("alice@example.test", 1, date=arrived - 86400)
    assert _with_believable_date(kept) is kept
    for date in (-1, arrived + 2 * 3600):  # before 1970, or more than an hour after it arrived
        changed = delivered("alice@example.test", 1, date=date)
        assert _with_believable_date(changed) == dataclasses.replace(kept, date=None)
    other = MessageExpunge(key="k", ts=TS, account="a@x", mailbox="INBOX", uidvalidity=1, uid=1)
    assert _with_believable_date(other) is other


# ------------------------------------------------------------------- against the real Redis and store


class Counted(Store):
    """The real store, noting how often it was asked to count; `meanwhile`, if set, runs once
    after a count is taken and before it is returned (another writer acting in between)."""

    asked = 0
    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        self.asked += 1
        counted = await super().counts(account, mailbox)
        if self.meanwhile is not None:
            act, self.meanwhile = self.meanwhile, None
            await act()
        return counted


@dataclasses.dataclass
class Rig:
    index: IndexCache
    store: Counted
    account: str

    async def holds(self, mailbox: str, unread: int, total: int) -> None:
        """The store holds `total` messages in the mailbox, `unread` of them unseen."""
        await self.store.messages.delete_many({"account": self.account, "mailbox": mailbox})
        for uid in range(1, total + 1):
            doc = {"account": self.account, "mailbox": mailbox, "uidvalidity": 1, "uid": uid, "seen": uid > unread}
            await self.store.messages.insert_one({"_id": message_doc_id(self.account, mailbox, 1, uid), **doc})


@pytest.fixture
async def rig(stack: StackInfo, redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    """A cache under a prefix of its own in the session's Redis, over the stack's store, for an
    account of its own (its keys and documents removed afterwards)."""
    prefix = f"test-cache-{uuid.uuid4().hex[:8]}"
    store = Counted(stack.mongodb_url, "mailbridge")
    await store.open()
    account = f"{uuid.uuid4().hex[:10]}@example.test"
    try:
        yield Rig(IndexCache(redis_client, store, prefix), store, account)
    finally:
        await store.messages.delete_many({"account": account})
        await store.close()
        keys = [key async for key in redis_client.scan_iter(f"{prefix}:*")]
        if keys:
            await redis_client.delete(*keys)


def plain(counts: list[MailboxCounts]) -> list[tuple[str, int, int]]:
    return [(c.mailbox, c.unread, c.total) for c in counts]


async def test_counts_are_taken_from_the_store_once_then_moved_by_each_write(rig: Rig) -> None:
    index, store, box = rig.index, rig.store, (rig.account, "INBOX")
    await rig.holds("INBOX", 2, 5)
    assert plain(await index.move_counts({box: (1, 1)}, set())) == [("INBOX", 2, 5)]
    assert store.asked == 1  # none kept yet: counted from the store (which holds the write already)
    assert plain(await index.move_counts({box: (-1, 2)}, set())) == [("INBOX", 1, 7)]
    assert (c := await index.counts(*box)).unread == 1 and c.total == 7
    assert store.asked == 1  # kept: the store is not asked again
    # A write that cannot say what it changed (a rename, a backfill) has the mailbox counted afresh,
    # the kept counts dropped for the new ones.
    await rig.holds("INBOX", 0, 3)
    assert plain(await index.move_counts({box: (5, 5)}, {box})) == [("INBOX", 0, 3)]
    assert store.asked == 2
    assert (c := await index.counts(*box)).unread == 0 and c.total == 3
    assert store.asked == 2


async def test_a_recount_while_another_writer_is_at_work_drops_the_kept_counts(rig: Rig) -> None:
    index, store, box = rig.index, rig.store, (rig.account, "Sent")
    await rig.holds("Sent", 0, 4)
    await index.move_counts({box: (0, 1)}, set())  # (0, 4) kept
    await index.begin_writes({box})  # another writer at work
    await rig.holds("Sent", 0, 6)
    assert plain(await index.move_counts({box: (0, 0)}, {box})) == [("Sent", 0, 6)]
    asked = store.asked
    assert (await index.counts(*box)).total == 6  # from the store: the old counts dropped, the new not kept
    assert store.asked == asked + 1


async def test_no_count_is_kept_while_another_writer_is_between_its_documents_and_its_counts(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    index, store, box = rig.index, rig.store, (rig.account, "Archive")
    await index.begin_writes({box})  # another writer: its documents written, its counts still to move
    await rig.holds("Archive", 1, 1)
    assert plain(await index.move_counts({box: (1, 1)}, set())) == [("Archive", 1, 1)]
    assert (c := await index.counts(*box)).unread == 1 and c.total == 1
    assert store.asked == 2  # not kept while the mark is up: asked each time
    # The other writer finishes: its mark goes, and, the last to finish, it keeps the count.
    await rig.holds("Archive", 2, 2)
    assert plain(await index.move_counts({box: (1, 1)}, set(), {box})) == [("Archive", 2, 2)]
    assert await redis_client.hget(f"{index.prefix}:index:writing:{rig.account}", "Archive") is None
    assert (c := await index.counts(*box)).unread == 2 and c.total == 2
    assert store.asked == 3


async def test_a_count_taken_later_has_a_higher_version_whoever_took_it(rig: Rig) -> None:
    """Counts taken by different writers reach browsers in any order (a backfill's, taken before
    a mail was read, published after the read's): the version tells which is newer."""
    index, box = rig.index, (rig.account, "INBOX")
    await rig.holds("INBOX", 2, 2)
    backfill = await index.end_backfill(*box)  # the backfill's count: kept, both unread
    assert (backfill.unread, backfill.total) == (2, 2)
    read = (await index.move_counts({box: (-1, 0)}, set()))[0]  # then a read moves it
    assert (read.unread, read.total) == (1, 2) and read.version > backfill.version
    listed = await index.counts(*box)  # a listing carries the version of what it shows
    assert (listed.unread, listed.version) == (1, read.version)
    # A count not kept (another writer at work) carries the version it was taken at; the writer
    # at work then finishes with a higher one.
    await index.begin_writes({box})
    await rig.holds("INBOX", 3, 3)
    provisional = await index.recount(*box)
    assert provisional.unread == 3 and provisional.version == read.version
    finished = (await index.move_counts({box: (1, 1)}, set(), {box}))[0]
    assert (finished.unread, finished.total) == (2, 3)  # the kept counts, moved by its delta
    assert finished.version > provisional.version


async def test_a_count_taken_before_a_writer_finished_never_goes_out_with_its_version(rig: Rig) -> None:
    """A recount (the backfill's) counts, then one writer finishes a read and another starts:
    the count it took predates the read, so it must not carry the read's version (a browser
    would take the two as equally new and could show the mail unread again); it counts again."""
    index, store, box = rig.index, rig.store, (rig.account, "INBOX")
    await rig.holds("INBOX", 1, 1)
    await index.end_backfill(*box)
    finished: list[MailboxCounts] = []

    async def read_then_another_writer() -> None:
        await index.begin_writes({box})
        await rig.holds("INBOX", 0, 1)
        finished.extend(await index.move_counts({box: (-1, 0)}, set(), {box}))
        await index.begin_writes({box})  # at work, its counts still to move

    store.meanwhile = read_then_another_writer
    recounted = await index.recount(*box)
    (read,) = finished
    assert (read.unread, read.total) == (0, 1)
    assert recounted.version < read.version or (recounted.unread, recounted.total) == (0, 1), (recounted, read)


async def test_versions_rise_past_the_redis_clock_and_keep_rising_after_redis_lost_them(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    index, box = rig.index, (rig.account, "INBOX")
    await rig.holds("INBOX", 1, 1)
    before = time.time() * 1_000_000
    first = await index.end_backfill(*box)
    assert first.version >= before - 5_000_000  # microseconds of the Redis clock (same machine)
    versions = f"{index.prefix}:index:version:{rig.account}"
    assert int(await redis_client.hget(versions, "INBOX") or 0) == first.version
    await redis_client.delete(versions)  # lost with a Redis restarted without persistence
    again = await index.end_backfill(*box)
    assert again.version > first.version
