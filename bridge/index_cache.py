"""The index's state in Redis: where a mail's filter summary meets its delivery, each mailbox's
unread and total counts, and its listing order (kept by bridge.listing_order, moved here after
each read's documents).

Both are kept out of the store because they are touched by every event: on FerretDB each store
operation is a round trip through Go and SQLite, and two of them per mail (the summary document,
the counts document) were what held the indexer below 100 mails/s. Redis does them in one
pipelined transaction per read.

Summaries: the filter's summary of a mail (attachments, size, category) and Dovecot's delivery of
it arrive in either order, on two streams; bridge.mail_facts keeps the summaries (per account and
Message-ID, shared with the relay) and meets each delivery with its summary in one script per read.

Counts: two hashes per account (`unread`, `total`, field = mailbox), moved by what each index write
did; a mailbox without fields (new, or Redis lost them) is counted from the store, as is one the
backfill filled in or a rename or delete touched. Several writers (the indexers of several bridge
nodes, the backfill) write documents first and move counts after, so a count taken in between would
include a document whose delta is still to come and be counted twice. Each writer therefore marks
the mailbox in a third hash (`writing`) before its documents and clears the mark in the same script
that moves the counts; a count is kept only if no mark is up and no writer finished while it was
taken. Otherwise the fields stay absent, and the last writer to finish counts.

Versions: counts are taken by several writers and published by each (bridge.app after a read, the
backfill after a mailbox), so two of them can reach a browser in the other order than they were
taken: a backfill's count taken before a mail was read, published just after the read's, showed it
unread again. A fourth hash holds a version per mailbox, raised in the same script as every move,
drop or keep of its counts; each count handed out carries the version it was taken at (a count not
kept: the version current when it was taken, so the writer at work finishes with a higher one).
Browsers keep the counts with the highest version they have seen (`countsVersion`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.events import Event, MailboxEvent, MailboxRename, MessageAdded
from bridge.listing_order import ListingOrder
from bridge.mail_facts import MailFacts
from bridge.mail_headers import believable_date
from bridge.redis_text import text
from bridge.store import MailboxCounts, Store

# A writer that died between its documents and its counts leaves its mark up this long at most
# (counts are then taken from the store on every read of that mailbox until it expires).
WRITING_TTL_S = 300

# The Redis clock in microseconds, and a version raised past it: a version only ever rises, even
# after Redis lost the hash (a restart without persistence), so a browser holding an old one is
# not stuck with it.
_BUMP = """
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local function bump(key, field)
  local v = tonumber(redis.call('HGET', key, field) or '0') + 1
  if v < clock then v = clock end
  v = string.format('%.0f', v)
  redis.call('HSET', key, field, v)
  return v
end
"""

# KEYS: per mailbox its account's unread, total, writing and version hashes. ARGV: per mailbox the
# mailbox, the unread and total deltas, "1" if this writer marked it, "1" if it must be counted
# afresh. Returns per mailbox {known, unread, total, version}: known 0 means "count it".
_MOVE_COUNTS = (
    _BUMP
    + """
local out = {}
for i = 1, #KEYS / 4 do
  local unread, total, writing, version = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local at = 5 * i - 4
  local mailbox = ARGV[at]
  if ARGV[at + 3] == '1' and redis.call('HINCRBY', writing, mailbox, -1) <= 0 then
    redis.call('HDEL', writing, mailbox)
  end
  local v = bump(version, mailbox)
  if ARGV[at + 4] == '1' then
    redis.call('HDEL', unread, mailbox)
    redis.call('HDEL', total, mailbox)
    out[i] = {0, 0, 0, v}
  elseif redis.call('HEXISTS', total, mailbox) == 1 then
    local u = redis.call('HINCRBY', unread, mailbox, ARGV[at + 1])
    out[i] = {1, u, redis.call('HINCRBY', total, mailbox, ARGV[at + 2]), v}
  else
    out[i] = {0, 0, 0, v}
  end
end
return out
"""
)

# KEYS: the account's unread, total, writing and version hashes. ARGV: the mailbox, the version
# read before counting ("" for none), the unread and total counted. Keeps the counts only if no
# writer finished while they were taken (the version is unchanged) and none is between its
# documents and its counts. Returns {1, new version} when kept, {-1, version} when a writer
# finished meanwhile (count again), {0, version} when one is at work (it counts when done). The
# version is checked first: a count taken before a writer finished must not be handed out as
# "a writer is at work", or it would go with that writer's version and tie with its counts.
_KEEP_COUNTS = (
    _BUMP
    + """
local unread, total, writing, version = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mailbox = ARGV[1]
local current = redis.call('HGET', version, mailbox) or ''
if current ~= ARGV[2] then return {-1, current} end
if tonumber(redis.call('HGET', writing, mailbox) or '0') > 0 then return {0, current} end
redis.call('HSET', unread, mailbox, ARGV[3])
redis.call('HSET', total, mailbox, ARGV[4])
return {1, bump(version, mailbox)}
"""
)

RECOUNT_ATTEMPTS = 3


class IndexCache:
    def __init__(self, redis: aioredis.Redis, store: Store, prefix: str) -> None:
        self.redis = redis
        self.store = store
        self.prefix = prefix
        self.facts = MailFacts(redis, prefix)
        self.order = ListingOrder(redis, store, prefix)
        self._move_counts = redis.register_script(_MOVE_COUNTS)
        self._keep_counts = redis.register_script(_KEEP_COUNTS)

    async def apply(self, events: Sequence[Event]) -> list[MailboxCounts]:
        """Index one read of events: summaries met here, documents written in the store, counts
        moved here. Returns the counts of each mailbox the read changed."""
        touched: set[tuple[str, str]] = set()
        for event in events:
            if isinstance(event, MailboxEvent):
                touched.add((event.account, event.mailbox))
                if isinstance(event, MailboxRename):
                    touched.add((event.account, event.old_mailbox))
        events = [_with_believable_date(event) for event in events]
        await self.begin_writes(touched)
        try:
            facts, early = await self.facts.meet(events)
            changes = await self.store.apply(events, facts, early)
            # After the documents: a member stands for a document already written. A failure here
            # leaves the read pending, and applied again it adds what it added (as `readded`).
            await self.order.arrive(changes.inserted, changes.readded)
            await self.order.depart(changes.expunged)
            await self.order.forget(changes.reordered)
        except BaseException:  # cancelled too (the bridge stopping): the marks must not stay up
            # The store may hold part of this read's writes, which the retry will not see as new:
            # the kept counts of these mailboxes can no longer be moved by deltas. Forget them
            # (counted afresh from the store next time) and clear the marks.
            with contextlib.suppress(RedisError, OSError):
                await self.move_counts({}, touched, touched)
            raise
        return await self.move_counts(changes.deltas, changes.recounts, touched)

    def _writing_key(self, account: str) -> str:
        return redis_keys.index_writing(self.prefix, account)

    async def begin_writes(self, mailboxes: set[tuple[str, str]]) -> None:
        """Mark these mailboxes as having documents written whose counts are still to move."""
        if not mailboxes:
            return
        pipe = self.redis.pipeline(transaction=False)
        for account, mailbox in mailboxes:
            pipe.hincrby(self._writing_key(account), mailbox, 1)
            pipe.expire(self._writing_key(account), WRITING_TTL_S)
        await pipe.execute()

    def _counts_keys(self, account: str) -> list[str]:
        """The account's unread, total, writing and version hashes, in the scripts' order."""
        p = self.prefix
        return [
            redis_keys.index_unread(p, account),
            redis_keys.index_total(p, account),
            redis_keys.index_writing(p, account),
            redis_keys.index_counts_version(p, account),
        ]

    async def move_counts(
        self,
        deltas: Mapping[tuple[str, str], Sequence[int]],
        recount: set[tuple[str, str]],
        marked: AbstractSet[tuple[str, str]] = frozenset(),
    ) -> list[MailboxCounts]:
        """Apply the read's count changes and clear its marks, in one script; the counts of each
        mailbox with a change, in order (counted from the store where none are kept)."""
        mailboxes = list(deltas) + sorted((marked | recount) - set(deltas))
        if not mailboxes:
            return []
        keys: list[str] = []
        args: list[str | int] = []
        for account, mailbox in mailboxes:
            keys += self._counts_keys(account)
            du, dt = deltas.get((account, mailbox), (0, 0))
            args += [mailbox, du, dt, int((account, mailbox) in marked), int((account, mailbox) in recount)]
        replies: Any = await self._move_counts(keys=keys, args=args)
        out = []
        for (account, mailbox), (known, unread, total, version) in zip(mailboxes, replies, strict=True):
            if (account, mailbox) not in deltas:
                continue
            if known:
                out.append(MailboxCounts(account, mailbox, int(unread), int(total), int(version)))
            else:
                out.append(await self.recount(account, mailbox))
        return out

    async def end_backfill(self, account: str, mailbox: str) -> MailboxCounts:
        """After the backfill wrote a mailbox's documents: clear its mark, drop the kept counts
        (they did not see those documents) and count afresh."""
        await self.move_counts({}, {(account, mailbox)}, {(account, mailbox)})
        return await self.recount(account, mailbox)

    async def recount(self, account: str, mailbox: str) -> MailboxCounts:
        """Count the mailbox in the store, and keep the result if it is sure to be right: no
        writer is between its documents and its counts (no mark), and none finished while they
        were taken (the version did not move). Otherwise the count is returned, not kept, with the
        version it was taken at: the writer still at work counts again when it is done, under a
        higher version, and its counts replace these wherever both arrive."""
        keys = self._counts_keys(account)
        unread, total, version = 0, 0, 0
        for _attempt in range(RECOUNT_ATTEMPTS):
            seen = await self.redis.hget(keys[3], mailbox)
            unread, total = await self.store.counts(account, mailbox)
            expected = text(seen) if seen is not None else ""
            status, current = await self._keep_counts(keys=keys, args=[mailbox, expected, unread, total])
            # Kept: the version the keep raised. Not kept: the version read before counting, which
            # every writer finishing after it exceeds (never the current one: a writer that
            # finished meanwhile published that version with counts these may predate).
            version = int(current or 0) if int(status) == 1 else int(expected or 0)
            if int(status) >= 0:
                break  # kept, or a writer at work will count
        return MailboxCounts(account, mailbox, unread, total, version)

    async def counts(self, account: str, mailbox: str) -> MailboxCounts:
        """The kept counts, or, if there are none, counted from the store; with their version."""
        unread_key, total_key, _writing_key, version_key = self._counts_keys(account)
        pipe = self.redis.pipeline(transaction=True)  # the three read at one instant
        pipe.hget(unread_key, mailbox)
        pipe.hget(total_key, mailbox)
        pipe.hget(version_key, mailbox)
        unread, total, version = await pipe.execute()
        kept_version = int(version) if version is not None else 0
        if unread is None or total is None:
            unread, total = await self.store.counts(account, mailbox)
        return MailboxCounts(account, mailbox, int(unread), int(total), kept_version)


def _with_believable_date(event: Event) -> Event:
    """A delivery whose Date it cannot have had (mail_headers.believable_date) as one without a
    Date: the store then dates it by its arrival, as the browsers' `new_email` does."""
    if isinstance(event, MessageAdded) and event.date is not None:
        date = believable_date(event.date, event.ts // 1000)
        if date != event.date:
            return dataclasses.replace(event, date=date)
    return event
