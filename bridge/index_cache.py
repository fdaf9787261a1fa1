"""The index's state in Redis: where a mail's filter summary meets its delivery, and each mailbox's
unread and total counts.

Both are kept out of the store because they are touched by every event: on FerretDB each store
operation is a round trip through Go and SQLite, and two of them per mail (the summary document,
the counts document) were what held the indexer below 100 mails/s. Redis does them in one
pipelined transaction per read.

Summaries: the filter's summary of a mail (attachments, size, category) and Dovecot's delivery of
it arrive in either order, on two streams. In one MULTI/EXEC per read, a summary is stored and takes
the list of deliveries that came before it; a delivery reads the summary and, in case it has not
come, leaves its document id on that list. Either the delivery sees the summary or the summary sees
the delivery. Entries expire after a day (the filter publishes before Postfix delivers).

Counts: two hashes per account (`unread`, `total`, field = mailbox), moved by what each index write
did; a mailbox without fields (new, or Redis lost them) is counted from the store, as is one the
backfill filled in. A count is kept only if no other writer moved the counts while it was taken.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from bridge.events import Event, MessageAdded, MtaAccepted
from bridge.store import FACTS, MailboxCounts, Store, message_doc_id

TTL_S = 86400


def summary_facts(event: MtaAccepted) -> dict[str, Any]:
    return {"hasAttachments": bool(event.attachments), "size": event.size, "category": event.category}


class IndexCache:
    def __init__(self, redis: aioredis.Redis, store: Store, prefix: str) -> None:
        self.redis = redis
        self.store = store
        self.prefix = prefix

    async def apply(self, events: Sequence[Event]) -> list[MailboxCounts]:
        """Index one read of events: summaries met here, documents written in the store, counts
        moved here. Returns the counts of each mailbox the read changed."""
        facts, early = await self.meet(events)
        changes = await self.store.apply(events, facts, early)
        return await self.move_counts(changes.deltas, changes.recounts)

    def _key(self, kind: str, message_id: str) -> str:
        digest = hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{self.prefix}:index:{kind}:{digest}"

    async def meet(self, events: Sequence[Event]) -> tuple[dict[int, dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """({event index: facts} for the read's deliveries whose summary is known, [(message
        document id, facts)] for deliveries indexed before their summary came)."""
        pipe = self.redis.pipeline(transaction=True)
        plan: list[tuple[int, int]] = []  # (event index, place of its first reply)
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                plan.append((index, len(pipe)))
                facts_key, wait_key = self._key("facts", event.message_id), self._key("wait", event.message_id)
                pipe.set(facts_key, msgpack.packb(summary_facts(event)), ex=TTL_S)
                pipe.smembers(wait_key)
                pipe.delete(wait_key)
            elif isinstance(event, MessageAdded) and event.message_id:
                plan.append((index, len(pipe)))
                wait_key = self._key("wait", event.message_id)
                pipe.get(self._key("facts", event.message_id))
                doc_id = message_doc_id(event.account, event.mailbox, event.uidvalidity, event.uid)
                pipe.sadd(wait_key, doc_id)
                pipe.expire(wait_key, TTL_S)
        facts: dict[int, dict[str, Any]] = {}
        early: list[tuple[str, dict[str, Any]]] = []
        if not plan:
            return facts, early
        replies = await pipe.execute()
        for index, place in plan:
            event = events[index]
            if isinstance(event, MtaAccepted):
                waiting = replies[place + 1] or set()
                early.extend((_text(doc_id), summary_facts(event)) for doc_id in waiting)
            elif isinstance(replies[place], bytes):
                found = msgpack.unpackb(replies[place], raw=False)
                facts[index] = {k: found[k] for k in FACTS}
        return facts, early

    def _counts_keys(self, account: str) -> tuple[str, str]:
        return f"{self.prefix}:index:unread:{account}", f"{self.prefix}:index:total:{account}"

    async def move_counts(
        self, deltas: Mapping[tuple[str, str], Sequence[int]], recount: set[tuple[str, str]]
    ) -> list[MailboxCounts]:
        """Apply the read's count changes; the counts of each mailbox touched, in order."""
        if not deltas:
            return []
        pipe = self.redis.pipeline(transaction=True)
        for account, mailbox in deltas:
            unread_key, total_key = self._counts_keys(account)
            pipe.hexists(total_key, mailbox)
            pipe.hincrby(unread_key, mailbox, deltas[(account, mailbox)][0])
            pipe.hincrby(total_key, mailbox, deltas[(account, mailbox)][1])
        replies = await pipe.execute()
        out = []
        for n, (account, mailbox) in enumerate(deltas):
            known, unread, total = replies[3 * n : 3 * n + 3]
            if not known or (account, mailbox) in recount:
                unread, total = await self.recount(account, mailbox)
            out.append(MailboxCounts(account, mailbox, int(unread), int(total)))
        return out

    async def recount(self, account: str, mailbox: str) -> tuple[int, int]:
        """Count the mailbox in the store, and keep the result. The indexer and the backfill both
        write documents first and counts after, so a count is right unless another writer moved
        the counts while it was taken: the keys are WATCHed from before the count, and a change
        voids the write and counts again."""
        unread_key, total_key = self._counts_keys(account)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _attempt in range(3):
                await pipe.watch(unread_key, total_key)
                unread, total = await self.store.counts(account, mailbox)
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
