"""The index's state in Redis: where a mail's filter summary meets its delivery, and each mailbox's
unread and total counts.

Both are kept out of the store because they are touched by every event: on FerretDB each store
operation is a round trip through Go and SQLite, and two of them per mail (the summary document,
the counts document) were what held the indexer below 100 mails/s. Redis does them in one
pipelined transaction per read.

Summaries: the filter's summary of a mail (attachments, size, category) and Dovecot's delivery of
it arrive in either order, on two streams. In one script per read, a summary is stored and takes
the list of deliveries that came before it; a delivery reads the summary and, only if it has not
come, leaves its document id on that list. Either the delivery sees the summary or the summary sees
the delivery, and a delivery that saw its summary is done: a later mail with the same Message-ID
does not rewrite it. Both are kept per account and Message-ID (`:index:facts:<sha>` and
`:index:wait:<sha>`, sha = SHA-256 of "<account, lower case>\0<Message-ID>", 32 hex digits): a
summary is stored for each envelope recipient, and for the submitter (its Sent copy), so a sender
who copies another mail's Message-ID reaches only the mail of the recipients it sends to. Entries
expire after a day (the filter publishes before Postfix delivers).

Counts: two hashes per account (`unread`, `total`, field = mailbox), moved by what each index write
did; a mailbox without fields (new, or Redis lost them) is counted from the store, as is one the
backfill filled in or a rename or delete touched. Several writers (the indexers of several bridge
nodes, the backfill) write documents first and move counts after, so a count taken in between would
include a document whose delta is still to come and be counted twice. Each writer therefore marks
the mailbox in a third hash (`writing`) before its documents and clears the mark in the same script
that moves the counts; a count is kept only if no mark is up and nothing moved while it was taken
(WATCH). Otherwise the fields stay absent, and the last writer to finish counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from bridge.events import Event, MailboxEvent, MailboxRename, MessageAdded, MtaAccepted
from bridge.mail_headers import believable_date
from bridge.store import FACTS, MailboxCounts, Store, message_doc_id

TTL_S = 86400
# A writer that died between its documents and its counts leaves its mark up this long at most
# (counts are then taken from the store on every read of that mailbox until it expires).
WRITING_TTL_S = 300

# KEYS: per mailbox its account's unread, total and writing hashes. ARGV: per mailbox the mailbox,
# the unread and total deltas, "1" if this writer marked it, "1" if it must be counted afresh.
# Returns per mailbox {known, unread, total}: known 0 means "count it".
_MOVE_COUNTS = """
local out = {}
for i = 1, #KEYS / 3 do
  local unread, total, writing = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local at = 5 * i - 4
  local mailbox = ARGV[at]
  if ARGV[at + 3] == '1' and redis.call('HINCRBY', writing, mailbox, -1) <= 0 then
    redis.call('HDEL', writing, mailbox)
  end
  if ARGV[at + 4] == '1' then
    redis.call('HDEL', unread, mailbox)
    redis.call('HDEL', total, mailbox)
    out[i] = {0, 0, 0}
  elseif redis.call('HEXISTS', total, mailbox) == 1 then
    local u = redis.call('HINCRBY', unread, mailbox, ARGV[at + 1])
    out[i] = {1, u, redis.call('HINCRBY', total, mailbox, ARGV[at + 2])}
  else
    out[i] = {0, 0, 0}
  end
end
return out
"""


# KEYS: per summary or delivery, its facts and wait keys. ARGV: the TTL, then per one "s" and the
# packed facts (a summary), or "d" and the document id (a delivery). Returns per summary the ids
# waiting for it; per delivery its facts, or nil when they have not come (its id now waits).
_MEET = """
local out = {}
for i = 1, #KEYS / 2 do
  local facts, wait = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, value = ARGV[2 * i], ARGV[2 * i + 1]
  if kind == 's' then
    redis.call('SET', facts, value, 'EX', ARGV[1])
    out[i] = redis.call('SMEMBERS', wait)
    redis.call('DEL', wait)
  else
    local found = redis.call('GET', facts)
    if found then
      out[i] = found
    else
      redis.call('SADD', wait, value)
      redis.call('EXPIRE', wait, ARGV[1])
      out[i] = false
    end
  end
end
return out
"""


def summary_accounts(event: MtaAccepted) -> set[str]:
    """Whose mail the summary describes: each envelope recipient's, and the submitter's Sent copy."""
    accounts = {rcpt.lower() for rcpt in event.rcpt_to if rcpt}
    if event.sasl_user:
        accounts.add(event.sasl_user.lower())
    return accounts


def summary_facts(event: MtaAccepted) -> dict[str, Any]:
    return {"hasAttachments": bool(event.attachments), "size": event.size, "category": event.category}


class IndexCache:
    def __init__(self, redis: aioredis.Redis, store: Store, prefix: str) -> None:
        self.redis = redis
        self.store = store
        self.prefix = prefix
        self._move_counts = redis.register_script(_MOVE_COUNTS)
        self._meet = redis.register_script(_MEET)

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
            facts, early = await self.meet(events)
            changes = await self.store.apply(events, facts, early)
        except BaseException:  # cancelled too (the bridge stopping): the marks must not stay up
            # The store may hold part of this read's writes, which the retry will not see as new:
            # the kept counts of these mailboxes can no longer be moved by deltas. Forget them
            # (counted afresh from the store next time) and clear the marks.
            with contextlib.suppress(RedisError, OSError):
                await self.move_counts({}, touched, touched)
            raise
        return await self.move_counts(changes.deltas, changes.recounts, touched)

    def _writing_key(self, account: str) -> str:
        return f"{self.prefix}:index:writing:{account}"

    async def begin_writes(self, mailboxes: set[tuple[str, str]]) -> None:
        """Mark these mailboxes as having documents written whose counts are still to move."""
        if not mailboxes:
            return
        pipe = self.redis.pipeline(transaction=False)
        for account, mailbox in mailboxes:
            pipe.hincrby(self._writing_key(account), mailbox, 1)
            pipe.expire(self._writing_key(account), WRITING_TTL_S)
        await pipe.execute()

    def _keys(self, account: str, message_id: str) -> list[str]:
        """The facts and wait keys of one account's mail with this Message-ID (an address holds no
        NUL, so the first one ends the account)."""
        name = f"{account.lower()}\0{message_id}".encode("utf-8", "surrogateescape")
        digest = hashlib.sha256(name).hexdigest()[:32]
        return [f"{self.prefix}:index:facts:{digest}", f"{self.prefix}:index:wait:{digest}"]

    async def meet(self, events: Sequence[Event]) -> tuple[dict[int, dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """({event index: facts} for the read's deliveries whose summary is known, [(message
        document id, facts)] for deliveries indexed before their summary came)."""
        keys: list[str] = []
        args: list[str | bytes | int] = [TTL_S]
        plan: list[tuple[int, int, int]] = []  # (event index, place of its first reply, replies)
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                accounts = sorted(summary_accounts(event))
                plan.append((index, len(keys) // 2, len(accounts)))
                packed = msgpack.packb(summary_facts(event))
                for account in accounts:
                    keys += self._keys(account, event.message_id)
                    args += ["s", packed]
            elif isinstance(event, MessageAdded) and event.message_id:
                plan.append((index, len(keys) // 2, 1))
                keys += self._keys(event.account, event.message_id)
                args += ["d", message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)]
        facts: dict[int, dict[str, Any]] = {}
        early: list[tuple[str, dict[str, Any]]] = []
        if not keys:
            return facts, early
        replies: Any = await self._meet(keys=keys, args=args)
        for index, place, count in plan:
            event = events[index]
            if isinstance(event, MtaAccepted):
                for waiting in replies[place : place + count]:
                    early.extend((_text(doc_id), summary_facts(event)) for doc_id in waiting or ())
            elif isinstance(replies[place], bytes):
                found = msgpack.unpackb(replies[place], raw=False)
                facts[index] = {k: found[k] for k in FACTS}
        return facts, early

    def _counts_keys(self, account: str) -> tuple[str, str]:
        return f"{self.prefix}:index:unread:{account}", f"{self.prefix}:index:total:{account}"

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
            unread_key, total_key = self._counts_keys(account)
            keys += [unread_key, total_key, self._writing_key(account)]
            du, dt = deltas.get((account, mailbox), (0, 0))
            args += [mailbox, du, dt, int((account, mailbox) in marked), int((account, mailbox) in recount)]
        replies: Any = await self._move_counts(keys=keys, args=args)
        out = []
        for (account, mailbox), (known, kept_unread, kept_total) in zip(mailboxes, replies, strict=True):
            if (account, mailbox) not in deltas:
                continue
            unread, total = (kept_unread, kept_total) if known else await self.recount(account, mailbox)
            out.append(MailboxCounts(account, mailbox, int(unread), int(total)))
        return out

    async def end_backfill(self, account: str, mailbox: str) -> tuple[int, int]:
        """After the backfill wrote a mailbox's documents: clear its mark, drop the kept counts
        (they did not see those documents) and count afresh."""
        await self.move_counts({}, {(account, mailbox)}, {(account, mailbox)})
        return await self.recount(account, mailbox)

    async def recount(self, account: str, mailbox: str) -> tuple[int, int]:
        """Count the mailbox in the store, and keep the result if it is sure to be right: no
        writer is between its documents and its counts (no mark), and none moved the counts or
        raised a mark while it was taken (WATCH). Otherwise the count is returned, not kept: the
        writer still at work counts again when it is done."""
        unread_key, total_key = self._counts_keys(account)
        writing_key = self._writing_key(account)
        unread, total = 0, 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for _attempt in range(3):
                await pipe.watch(unread_key, total_key, writing_key)
                busy = await pipe.hget(writing_key, mailbox)
                unread, total = await self.store.counts(account, mailbox)
                if busy is not None and int(busy) > 0:
                    await pipe.reset()  # type: ignore[no-untyped-call]
                    break
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(unread_key, mailbox, unread)
                pipe.hset(total_key, mailbox, total)
                try:
                    await pipe.execute()
                    break
                except WatchError:
                    continue  # counted again, from after the change
        return unread, total

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        """(unread, total): the kept counts, or, if there are none, counted from the store."""
        unread_key, total_key = self._counts_keys(account)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(unread_key, mailbox)
        pipe.hget(total_key, mailbox)
        unread, total = await pipe.execute()
        if unread is None or total is None:
            return await self.store.counts(account, mailbox)
        return int(unread), int(total)


def _with_believable_date(event: Event) -> Event:
    """A delivery whose Date it cannot have had (mail_headers.believable_date) as one without a
    Date: the store then dates it by its arrival, as the browsers' `new_email` does."""
    if isinstance(event, MessageAdded) and event.date is not None:
        date = believable_date(event.date, event.ts // 1000)
        if date != event.date:
            return dataclasses.replace(event, date=date)
    return event


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
