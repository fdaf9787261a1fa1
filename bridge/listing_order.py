"""Each mailbox's listing order, kept in Redis: a page of a mailbox's default listing without a scan.

FerretDB's SQLite backend (v1.24) answers only `{_id: <string>}` from an index; every other filter
reads, decodes and tests every message document of the server, so the first page of a mailbox cost
~2.4 s with 10,000 mails (docs/benchmarks.md, section 7), and grew with everyone's mail. Here the
order is a sorted set per mailbox (score: the message's arrival, `arrived`; member: its UID, then its
UIDVALIDITY, so ties sort by UID as the store's NEWEST does), and a page is a range of it whose
documents are then read one by one by `_id`, which both backends answer from an index.

Searches with a text term are answered here too. Beside the set, a hash keeps each message's search
digest (its searched text, lowercased: bridge.search_match), and one script walks the set newest
first, testing the text terms on the digests, until it has a page's worth of candidates; their
documents are then read by `_id` and the whole query is tested on them (flags and labels change, and
the document rules). A member without a digest is a candidate. Quick filters, and searches without a
text term, still go to the store (bridge.store_reads).

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

The digests follow the set: written with it after the document (an insert's from what it wrote,
a re-add's read back), filled with it (the fill marks the hash `built` as well), removed with it.

Memory: about 100 bytes per message for the order (a skiplist entry; small mailboxes are packed)
and the searched text for the digest (about 300 bytes for a typical mail).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from bridge import redis_keys
from bridge.search_match import digest, scan_terms, scope, selects
from bridge.search_query import SearchQuery
from bridge.store_reads import arrival, decode_cursor, encode_cursor
from bridge.store_writes import MessageKey, message_doc_id, visible

BUILT = "built"  # the mark of a complete set (sorts after every member: scored -inf) and hash
_FILL_CHUNK = 1000  # members per ZADD of a fill (a script argument list stays small)
_SCAN_BUDGET = 2000  # members one scan call looks at (each call holds Redis for about a millisecond)

# KEYS: the set, the digests, the account's generation hash. ARGV: the mailbox, the generation the
# fill read before it scanned, "1" on the fill's last chunk, then (score, member, digest) triples.
# Adds the members and digests that are not there (a writer's own stay) and, on the last chunk, the
# marks; nothing if a forget came meanwhile.
_FILL = """
local current = redis.call('HGET', KEYS[3], ARGV[1]) or '0'
if current ~= ARGV[2] then return 0 end
for i = 4, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1])
  redis.call('HSETNX', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], '-inf', '@BUILT@')
  redis.call('HSET', KEYS[2], '@BUILT@', '1')
end
return 1
""".replace("@BUILT@", BUILT)

# KEYS: the set, the digests. ARGV: how many to return, the cursor's arrival and member prefix ("",
# "" from the newest), how many members to look at, then (negated "1"/"0", field positions, needle)
# per text term (bridge.search_match.scan_terms). Returns false if the set is not complete (or,
# with terms, the digests), else {ended, last score, last member looked at, member, score, ...}:
# newest first after the cursor (those arrived later, and of those arrived in the same second the
# ones with a UID as high or higher, are skipped), the members whose digest passes every term. A
# term passes when its needle is in one of its fields, or, negated, in none; a member without a
# digest passes (its document decides).
_SCAN = """
if not redis.call('ZSCORE', KEYS[1], '@BUILT@') then return false end
local terms = {}
for i = 5, #ARGV, 3 do
  local fields = {}
  for k = 1, #ARGV[i + 1] do fields[k] = tonumber(string.sub(ARGV[i + 1], k, k)) end
  terms[#terms + 1] = {ARGV[i] == '1', fields, ARGV[i + 2]}
end
if #terms > 0 and redis.call('HEXISTS', KEYS[2], '@BUILT@') == 0 then return false end
local function passes(member)
  if #terms == 0 then return true end
  local packed = redis.call('HGET', KEYS[2], member)
  if not packed then return true end
  local text = cmsgpack.unpack(packed)
  for _, term in ipairs(terms) do
    local found = false
    for _, field in ipairs(term[2]) do
      local value = text[field]
      if value and string.find(value, term[3], 1, true) then found = true break end
    end
    if found == term[1] then return false end
  end
  return true
end
local start = 0
if ARGV[2] ~= '' then
  start = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[2])) do
    if member >= ARGV[3] then start = start + 1 end
  end
end
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[4])
local out = {0, '', ''}
while true do
  local step = math.min(budget, 200)
  local chunk = redis.call('ZREVRANGE', KEYS[1], start, start + step - 1, 'WITHSCORES')
  for i = 1, #chunk, 2 do
    local member = chunk[i]
    if member == '@BUILT@' then out[1] = 1 return out end
    out[2], out[3] = chunk[i + 1], member
    budget = budget - 1
    if passes(member) then
      out[#out + 1] = member
      out[#out + 1] = chunk[i + 1]
    end
    if (#out - 3) / 2 >= want or budget == 0 then return out end
  end
  if #chunk < 2 * step then out[1] = 1 return out end
  start = start + step
end
""".replace("@BUILT@", BUILT)


class OrderedDocuments(Protocol):
    """What the order needs of the store (bridge.store.Store)."""

    async def documents(self, ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    async def arrivals(self, account: str, mailbox: str) -> list[tuple[int, int, int, bytes]]: ...


def member(uidvalidity: int, uid: int) -> str:
    """A message's member: its UID first (ties in arrival sort by it), zero-padded to sort as text."""
    return f"{uid:010d}:{uidvalidity}"


def _parse(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    uid, uidvalidity = text.split(":")
    return int(uidvalidity), int(uid)


Page = tuple[list[dict[str, Any]], str | None]


class ListingOrder:
    def __init__(self, redis: aioredis.Redis, store: OrderedDocuments, prefix: str) -> None:
        self.redis = redis
        self.store = store
        self.prefix = prefix
        self._fill = redis.register_script(_FILL)
        self._scan = redis.register_script(_SCAN)

    def _keys(self, account: str, mailbox: str) -> list[str]:
        """The mailbox's set, its digests, the account's generation hash."""
        p = self.prefix
        return [
            redis_keys.listing_order(p, account, mailbox),
            redis_keys.search_digests(p, account, mailbox),
            redis_keys.listing_generation(p, account),
        ]

    # -- writes (after the documents they stand for)

    async def arrive(self, scored: Iterable[tuple[MessageKey, int, bytes]], unscored: Iterable[MessageKey]) -> None:
        """Add messages whose documents were written: `scored` with the arrival and search digest
        their insert wrote, `unscored` (an add that inserted nothing) with those their document holds."""
        scored = list(scored)
        unscored = list(unscored)
        if unscored:
            docs = await self.store.documents([message_doc_id(*key) for key in unscored])
            pairs = zip(unscored, docs, strict=True)
            scored += [(key, arrival(doc), digest(doc)) for key, doc in pairs if visible(doc)]
        if not scored:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (account, mailbox, uidvalidity, uid), arrived, searched in scored:
            order, digests, _generation = self._keys(account, mailbox)
            name = member(uidvalidity, uid)
            pipe.zadd(order, {name: arrived})
            pipe.hset(digests, name, searched)
        await pipe.execute()

    async def depart(self, keys: Iterable[MessageKey]) -> None:
        """Remove messages whose documents are gone (expunged)."""
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for account, mailbox, uidvalidity, uid in keys:
            order, digests, _generation = self._keys(account, mailbox)
            pipe.zrem(order, member(uidvalidity, uid))
            pipe.hdel(digests, member(uidvalidity, uid))
            count += 1
        if count:
            await pipe.execute()

    async def forget(self, mailboxes: Iterable[tuple[str, str]]) -> None:
        """Drop these mailboxes' sets (renamed, deleted, backfilled): the next listing fills them
        from the store, and a fill already reading it does not count."""
        pipe = self.redis.pipeline(transaction=True)
        count = 0
        for account, mailbox in mailboxes:
            order, digests, generation = self._keys(account, mailbox)
            pipe.hincrby(generation, mailbox, 1)
            pipe.delete(order, digests)
            count += 1
        if count:
            await pipe.execute()

    async def fill(self, account: str, mailbox: str) -> bool:
        """Fill the mailbox's set and digests from its documents in the store; whether it counted."""
        keys = self._keys(account, mailbox)
        generation = await self.redis.hget(keys[2], mailbox)
        expected = generation.decode() if isinstance(generation, bytes) else str(generation or "0")
        found = await self.store.arrivals(account, mailbox)
        rows = [(arrived, member(uidvalidity, uid), searched) for uidvalidity, uid, arrived, searched in found]
        chunks = [rows[i : i + _FILL_CHUNK] for i in range(0, len(rows), _FILL_CHUNK)] or [[]]
        for n, chunk in enumerate(chunks):
            last = "1" if n == len(chunks) - 1 else "0"
            args: list[str | int | bytes] = [mailbox, expected, last]
            for row in chunk:
                args += row
            if not await self._fill(keys=keys, args=args):
                return False
        return True

    # -- reads

    async def page(
        self, account: str, mailbox: str, limit: int, after: tuple[int, int] | None, query: SearchQuery | None = None
    ) -> list[dict[str, Any]] | None:
        """Up to `limit` + 1 documents of the mailbox, newest first, after the cursor position
        `after` (arrival, UID), those `query` selects if given (it must have scan terms); None if
        the mailbox's set (or, for a query, its digests) is not built: the caller fills it or asks
        the store."""
        keys = self._keys(account, mailbox)[:2]
        terms: list[str] = []
        for negated, fields, needle in (scan_terms(query) if query is not None else None) or []:
            terms += ["1" if negated else "0", fields, needle]
        found: dict[str, Mapping[str, Any]] = {}
        while len(found) <= limit:
            cursor = ["", ""] if after is None else [after[0], f"{after[1]:010d}:"]
            reply = await self._scan(keys=keys, args=[limit + 1 - len(found), *cursor, _SCAN_BUDGET, *terms])
            if reply is None:
                return None
            ended, last_score, last_member, *rest = reply
            members = [_parse(name) for name in rest[0::2]]
            scores = [int(float(score)) for score in rest[1::2]]
            if members:
                docs = await self.store.documents([message_doc_id(account, mailbox, uv, uid) for uv, uid in members])
                stale, rescored = [], {}
                for (uidvalidity, uid), score, doc in zip(members, scores, docs, strict=True):
                    if not visible(doc):
                        stale.append(member(uidvalidity, uid))
                        continue
                    if arrival(doc) != score:  # set by a writer that could not know; the document rules
                        rescored[member(uidvalidity, uid)] = arrival(doc)
                    if query is None or selects(query, doc):
                        found[str(doc["_id"])] = doc
                await self._repair(keys, stale, rescored)
            if int(ended) or not last_member:
                break
            after = (int(float(last_score)), _parse(last_member)[1])  # read on from the last one looked at
        # Repaired scores can reorder what was read: the store's order (store_reads.NEWEST).
        docs_found = sorted(found.values(), key=lambda d: (arrival(d), int(d["uid"])), reverse=True)
        return [dict(d) for d in docs_found[: limit + 1]]

    async def listing(self, account: str, mailbox: str, limit: int, cursor: str | None) -> Page | None:
        """A page of the mailbox's default listing as bridge.store's `listing` gives it (documents,
        next cursor), the set filled first if it is not built; None if it could not be (a rename or
        a backfill came while filling it): the caller lists from the store."""
        return await self._paged(account, mailbox, limit, cursor, None)

    async def search(
        self, account: str, mailbox: str, query: SearchQuery, limit: int, cursor: str | None
    ) -> Page | None:
        """A page of what `query` selects, as bridge.store's `listing` with a search gives it, from
        the scope's set and digests (filled first if need be); None if this query is the store's to
        answer (no text term to narrow by, `in:` two mailboxes) or the fill did not count."""
        where = scope(query, mailbox)
        if where is None or scan_terms(query) is None:
            return None
        return await self._paged(account, where, limit, cursor, query)

    async def _paged(
        self, account: str, mailbox: str, limit: int, cursor: str | None, query: SearchQuery | None
    ) -> Page | None:
        after = decode_cursor(cursor) if cursor else None  # InvalidInput for a cursor not ours
        docs = await self.page(account, mailbox, limit, after, query)
        if docs is None and await self.fill(account, mailbox):
            docs = await self.page(account, mailbox, limit, after, query)
        if docs is None:
            return None
        page = docs[:limit]
        return page, encode_cursor(page[-1]) if len(docs) > limit else None

    async def _repair(self, keys: Sequence[str], stale: Sequence[str], rescored: Mapping[str, int]) -> None:
        if not stale and not rescored:
            return
        pipe = self.redis.pipeline(transaction=False)
        if stale:
            pipe.zrem(keys[0], *stale)
            pipe.hdel(keys[1], *stale)
        if rescored:
            pipe.zadd(keys[0], dict(rescored), xx=True)
        await pipe.execute()
