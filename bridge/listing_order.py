"""Each mailbox's listing order, kept in Redis: a page of a mailbox's default listing without a scan.

FerretDB's SQLite backend (v1.24) answers only `{_id: <string>}` from an index; every other filter
reads, decodes and tests every message document of the server, so the first page of a mailbox cost
~2.4 s with 10,000 mails (docs/benchmarks.md, section 7), and grew with everyone's mail. Here the
order is a sorted set per mailbox (score: the message's arrival, `arrived`; member: its UID, then its
UIDVALIDITY, so ties sort by UID as the store's NEWEST does), and a page is a range of it whose
documents are then read one by one by `_id`, which both backends answer from an index. Filters and
searches still go to the store (bridge.store_reads).

What makes the set trustworthy:
- Every writer of message documents adds or removes members after its documents are written (a
  member stands for a document already there): bridge.index_cache for the events. A message the
  events add is scored by its own document's arrival: an insert's by what it wrote, an add that
  inserted nothing (the backfill or an earlier try came first) by reading the document back.
- A set is complete once a fill from all of the mailbox's documents wrote its mark, a member
  `BUILT` scored -inf, in the set itself: a set Redis evicted or lost takes its mark with it. A
  rename, a delete and the backfill (`forget`) drop the set, and the next listing fills it again
  from the store (one scan, as every listing cost before). A fill counts only if no `forget` came
  while it read the store: a per-mailbox generation, checked in the script that writes the fill.
- A member whose document is gone or a tombstone when a page reads it (a fill that read a message
  just before its expunge removed the member) is removed there, and the page reads on.

Memory: about 100 bytes per message in Redis (a skiplist entry); small mailboxes are packed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from bridge import redis_keys
from bridge.store_reads import arrival, decode_cursor, encode_cursor
from bridge.store_writes import MessageKey, message_doc_id, visible

BUILT = "built"  # the mark of a complete set (sorts after every member: scored -inf)
_FILL_CHUNK = 1000  # members per ZADD of a fill (a script argument list stays small)

# KEYS: the set, the account's generation hash. ARGV: the mailbox, the generation the fill read
# before it scanned, "1" on the fill's last chunk, then (score, member) pairs. Adds the members that
# are not there (a writer's own score stays) and, on the last chunk, the mark; nothing if a forget
# came meanwhile.
_FILL = """
local current = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
if current ~= ARGV[2] then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1])
end
if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], '-inf', '""" + BUILT + """') end
return 1
"""

# KEYS: the set. ARGV: how many to return, and the cursor's arrival and member prefix ("" for the
# first page). Returns false if the set is not complete, else members and scores, newest first,
# after the cursor: those arrived later, and of those arrived in the same second the ones with a
# UID as high or higher (members sort by UID within a score), are skipped. The mark may end it.
_PAGE = """
if not redis.call('ZSCORE', KEYS[1], '""" + BUILT + """') then return false end
local start = 0
if ARGV[2] ~= '' then
  start = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[2])) do
    if member >= ARGV[3] then start = start + 1 end
  end
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[1]) - 1, 'WITHSCORES')
"""


class OrderedDocuments(Protocol):
    """What the order needs of the store (bridge.store.Store)."""

    async def documents(self, ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    async def arrivals(self, account: str, mailbox: str) -> list[tuple[int, int, int]]: ...


def member(uidvalidity: int, uid: int) -> str:
    """A message's member: its UID first (ties in arrival sort by it), zero-padded to sort as text."""
    return f"{uid:010d}:{uidvalidity}"


def _parse(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    uid, uidvalidity = text.split(":")
    return int(uidvalidity), int(uid)


class ListingOrder:
    def __init__(self, redis: aioredis.Redis, store: OrderedDocuments, prefix: str) -> None:
        self.redis = redis
        self.store = store
        self.prefix = prefix
        self._fill = redis.register_script(_FILL)
        self._page = redis.register_script(_PAGE)

    def _keys(self, account: str, mailbox: str) -> list[str]:
        p = self.prefix
        return [redis_keys.listing_order(p, account, mailbox), redis_keys.listing_generation(p, account)]

    # -- writes (after the documents they stand for)

    async def arrive(self, scored: Iterable[tuple[MessageKey, int]], unscored: Iterable[MessageKey]) -> None:
        """Add messages whose documents were written: `scored` with the arrival their insert wrote,
        `unscored` (an add that inserted nothing) with the arrival their document holds."""
        scored = list(scored)
        unscored = list(unscored)
        if unscored:
            docs = await self.store.documents([message_doc_id(*key) for key in unscored])
            scored += [(key, arrival(doc)) for key, doc in zip(unscored, docs, strict=True) if visible(doc)]
        if not scored:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (account, mailbox, uidvalidity, uid), arrived in scored:
            pipe.zadd(redis_keys.listing_order(self.prefix, account, mailbox), {member(uidvalidity, uid): arrived})
        await pipe.execute()

    async def depart(self, keys: Iterable[MessageKey]) -> None:
        """Remove messages whose documents are gone (expunged)."""
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for account, mailbox, uidvalidity, uid in keys:
            pipe.zrem(redis_keys.listing_order(self.prefix, account, mailbox), member(uidvalidity, uid))
            count += 1
        if count:
            await pipe.execute()

    async def forget(self, mailboxes: Iterable[tuple[str, str]]) -> None:
        """Drop these mailboxes' sets (renamed, deleted, backfilled): the next listing fills them
        from the store, and a fill already reading it does not count."""
        pipe = self.redis.pipeline(transaction=True)
        count = 0
        for account, mailbox in mailboxes:
            order, generation = self._keys(account, mailbox)
            pipe.hincrby(generation, mailbox, 1)
            pipe.delete(order)
            count += 1
        if count:
            await pipe.execute()

    async def fill(self, account: str, mailbox: str) -> bool:
        """Fill the mailbox's set from its documents in the store; whether it counted."""
        keys = self._keys(account, mailbox)
        generation = await self.redis.hget(keys[1], mailbox)
        expected = generation.decode() if isinstance(generation, bytes) else str(generation or "0")
        found = await self.store.arrivals(account, mailbox)
        pairs = [(arrived, member(uidvalidity, uid)) for uidvalidity, uid, arrived in found]
        chunks = [pairs[i : i + _FILL_CHUNK] for i in range(0, len(pairs), _FILL_CHUNK)] or [[]]
        for n, chunk in enumerate(chunks):
            last = "1" if n == len(chunks) - 1 else "0"
            args: list[str | int] = [mailbox, expected, last]
            for score, name in chunk:
                args += [score, name]
            if not await self._fill(keys=keys, args=args):
                return False
        return True

    # -- reads

    async def page(
        self, account: str, mailbox: str, limit: int, after: tuple[int, int] | None
    ) -> list[dict[str, Any]] | None:
        """Up to `limit` + 1 documents of the mailbox, newest first, after the cursor position
        `after` (arrival, UID); None if the mailbox's set is not built (the caller fills it or
        lists from the store)."""
        keys = self._keys(account, mailbox)[:1]
        found: dict[str, Mapping[str, Any]] = {}
        while len(found) <= limit:
            want = limit + 1 - len(found)
            cursor = ["", ""] if after is None else [after[0], f"{after[1]:010d}:"]
            reply = await self._page(keys=keys, args=[want, *cursor])
            if reply is None:
                return None
            pairs = zip(reply[0::2], reply[1::2], strict=True)
            listed = [(name, score) for name, score in pairs if name != BUILT.encode()]
            members = [_parse(name) for name, _score in listed]
            scores = [int(float(score)) for _name, score in listed]
            if not members:
                break
            docs = await self.store.documents([message_doc_id(account, mailbox, uv, uid) for uv, uid in members])
            stale, rescored = [], {}
            for (uidvalidity, uid), score, doc in zip(members, scores, docs, strict=True):
                if not visible(doc):
                    stale.append(member(uidvalidity, uid))
                    continue
                if arrival(doc) != score:  # set by a writer that could not know; the document rules
                    rescored[member(uidvalidity, uid)] = arrival(doc)
                found[str(doc["_id"])] = doc
            await self._repair(keys[0], stale, rescored)
            after = (scores[-1], members[-1][1])  # read on from the last one read, stale or not
            if len(listed) < want:
                break
        # Repaired scores can reorder what was read: the store's order (store_reads.NEWEST).
        docs_found = sorted(found.values(), key=lambda d: (arrival(d), int(d["uid"])), reverse=True)
        return [dict(d) for d in docs_found[: limit + 1]]

    async def listing(
        self, account: str, mailbox: str, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None] | None:
        """A page of the mailbox's default listing as bridge.store's `listing` gives it (documents,
        next cursor), the set filled first if it is not built; None if it could not be (a rename or
        a backfill came while filling it): the caller lists from the store."""
        after = decode_cursor(cursor) if cursor else None  # InvalidInput for a cursor not ours
        docs = await self.page(account, mailbox, limit, after)
        if docs is None and await self.fill(account, mailbox):
            docs = await self.page(account, mailbox, limit, after)
        if docs is None:
            return None
        page = docs[:limit]
        return page, encode_cursor(page[-1]) if len(docs) > limit else None

    async def _repair(self, order: str, stale: Sequence[str], rescored: Mapping[str, int]) -> None:
        if not stale and not rescored:
            return
        pipe = self.redis.pipeline(transaction=False)
        if stale:
            pipe.zrem(order, *stale)
        if rescored:
            pipe.zadd(order, dict(rescored), xx=True)
        await pipe.execute()

