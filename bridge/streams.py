"""Redis Streams edge: publishing events and consuming them through a consumer group.

Publishing never blocks mail: `Publisher.publish` gives Redis a bounded time and otherwise writes
the event to the spool (bridge.spool), from which the drainer publishes it later, in order. An
event neither could take is lost: logged as LOST at once, and counted in the `<prefix>:events:lost`
hash (by stream) as soon as Redis answers again, for /metrics.

Consuming is at-least-once (Redis Streams consumer groups): an entry is acknowledged only after the
handler returned. Entries another consumer left pending for longer than `claim_idle_ms` are claimed
back (XAUTOCLAIM), and a group lost with a restarted Redis is recreated. A consumer also looks at its
own pending entries every `own_check_s`: a read whose reply was lost (redis-py repeats the command
on a new connection, and Redis hands that one only newer entries) left its entries pending on this
consumer, where no one else would take them before `claim_idle_ms`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from bridge import codec, redis_keys
from bridge.errors import DecodeError, Unavailable
from bridge.events import ENTRY_FIELD, Event
from bridge.redis_text import text
from bridge.spool import PENDING, spool_record, write_spool

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 0.5


def lost_key(prefix: str) -> str:
    """The hash counting, by stream, the events producers could neither publish nor spool."""
    return redis_keys.events_lost(prefix)


class Publisher:
    def __init__(self, redis: aioredis.Redis, spool_dir: Path, maxlen: int, *, lost_key: str) -> None:
        self.redis = redis
        self.spool_dir = spool_dir
        self.maxlen = maxlen
        self.lost_key = lost_key
        self.unreported: Counter[str] = Counter()  # lost events, by stream, not yet counted in Redis

    async def _report_lost(self) -> None:
        # Taken out before the await: concurrent publishes (one per mail in the filter) must not
        # report the same losses twice.
        counts, self.unreported = self.unreported, Counter()
        pipe = self.redis.pipeline(transaction=False)
        for stream, count in counts.items():
            pipe.hincrby(self.lost_key, stream, count)
        try:
            await asyncio.wait_for(pipe.execute(), PUBLISH_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError):
            self.unreported.update(counts)  # counted next time (the event itself is published)
        except asyncio.CancelledError:
            self.unreported.update(counts)  # not reported, not forgotten either
            raise

    async def publish(self, stream: str, event: Event) -> str | None:
        """XADD the event; on failure (or while older events wait in the spool) spool it instead.

        Returns the stream entry id, or None when the event went to the spool.
        """
        if not (self.spool_dir / PENDING).exists():
            try:
                entry_id = await asyncio.wait_for(
                    self.redis.xadd(stream, {ENTRY_FIELD: codec.encode(event)}, maxlen=self.maxlen, approximate=True),
                    PUBLISH_TIMEOUT_S,
                )
                if self.unreported:
                    await self._report_lost()
                return text(entry_id)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("[%s] redis unavailable (%s); spooling event", event.key, exc)
        try:
            write_spool(self.spool_dir, [spool_record(stream, event)])
        except OSError as exc:
            self.unreported[stream] += 1
            log.error("[%s] LOST event %s: redis and spool both failed: %s", event.key, event.kind, exc)
            raise
        return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded stream entry handed to a consumer's handler."""

    stream: str
    entry_id: str
    event: Event


# A handler takes the entries of one read, in stream order. It raises Unavailable or RedisError to
# leave them all pending (retried); any other exception is a bug, isolated to its entry (below).
Handler = Callable[[Sequence[Delivery]], Awaitable[None]]


class Consumer:
    """Reads several streams through one consumer group and hands each read's events to `handler`.

    A whole read (up to `batch` entries) goes to the handler at once, and is acknowledged with one
    XACK per stream: under load, per-event round trips to Redis (and to the store) are what bound
    throughput, so the relay and the indexer pipeline their work per read.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        streams: tuple[str, ...],
        group: str,
        name: str,
        handler: Handler,
        *,
        batch: int = 256,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        own_check_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.streams = streams
        self.group = group
        self.name = name
        self.handler = handler
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.own_check_s = own_check_s

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                # From the start of the stream: a new group misses nothing already published.
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
                log.info("[%s] consumer group %s created", stream, self.group)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _handle(self, stream: str, entries: Sequence[tuple[Any, Any]]) -> None:
        """Decode, hand over, acknowledge one read's entries of one stream."""
        ids: list[str] = []
        deliveries: list[Delivery] = []
        for entry_id_raw, fields in entries:
            entry_id = text(entry_id_raw)
            ids.append(entry_id)
            payload = fields.get(ENTRY_FIELD) if fields else None
            try:
                if payload is None:
                    raise DecodeError("entry has no 'e' field")
                deliveries.append(Delivery(stream, entry_id, codec.decode(payload)))
            except DecodeError as exc:
                log.error("[%s %s] undecodable entry acknowledged and skipped: %s", stream, entry_id, exc)
        if deliveries:
            try:
                await self.handler(deliveries)
            except (Unavailable, RedisError):
                # Not acknowledged: retried from the pending list once the service is back. A Redis
                # error inside the handler (pool exhausted, connection lost) is the same case: the
                # events were not relayed or indexed, so acknowledging them would lose them.
                raise
            except Exception:
                log.exception(
                    "[%s %s..%s] batch handler failed; retrying its entries one by one", stream, ids[0], ids[-1]
                )
                await self._one_by_one(deliveries)
        if ids:
            await self.redis.xack(stream, self.group, *ids)

    async def _one_by_one(self, deliveries: Sequence[Delivery]) -> None:
        # A bug must not wedge the stream behind one entry: log it with its id, move on. The
        # handlers are idempotent per key, so entries of the failed batch may be handled again.
        for delivery in deliveries:
            try:
                await self.handler([delivery])
            except (Unavailable, RedisError):
                raise
            except Exception:
                log.exception("[%s %s] handler failed; entry acknowledged", delivery.stream, delivery.entry_id)

    async def _claim(self) -> None:
        for stream in self.streams:
            start = "0-0"
            while True:
                result: Any = await self.redis.xautoclaim(
                    stream, self.group, self.name, self.claim_idle_ms, start_id=start, count=self.batch
                )
                start_raw, entries = result[0], result[1]
                # Entries deleted from the stream meanwhile come back with no fields: acknowledge them.
                await self._handle(stream, entries)
                start = text(start_raw)
                if start == "0-0" or not entries:
                    break

    async def _pending_own(self) -> None:
        """Entries delivered to this consumer name before a restart and never acknowledged."""
        for stream in self.streams:
            cursor = "0"
            while True:
                response: Any = await self.redis.xreadgroup(self.group, self.name, {stream: cursor}, count=self.batch)
                entries = [e for _stream, stream_entries in response or [] for e in stream_entries]
                if not entries:
                    break
                await self._handle(stream, entries)
                cursor = text(entries[-1][0])

    async def run(self) -> None:
        failing = False
        claimed_at = 0.0
        checked_own_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            _raise_if_cancelled()
            try:
                if failing or claimed_at == 0.0:
                    await self.ensure_groups()
                if failing or checked_own_at is None or loop.time() - checked_own_at >= self.own_check_s:
                    # Before the next read (nothing of this consumer's is being handled now): what
                    # a lost reply left pending here, and what a failed read left.
                    await self._pending_own()
                    checked_own_at = loop.time()
                if loop.time() - claimed_at > self.claim_idle_ms / 1000:
                    await self._claim()
                    claimed_at = loop.time()
                streams: Any = dict.fromkeys(self.streams, ">")
                response: Any = await self.redis.xreadgroup(
                    self.group, self.name, streams, count=self.batch, block=self.block_ms
                )
                if failing:
                    log.info("consumer %s/%s recovered", self.group, self.name)
                    failing = False
                for stream_raw, entries in response or []:
                    await self._handle(text(stream_raw), entries)
            except (RedisError, OSError, Unavailable) as exc:
                if not failing:
                    log.warning("consumer %s/%s: paused, retrying: %s", self.group, self.name, exc)
                failing = True
                await asyncio.sleep(0.5)


def _raise_if_cancelled() -> None:
    """Python 3.11's asyncio.wait_for, which redis-py awaits replies through, returns the reply
    and drops a cancellation that lands just as the reply arrives (CPython gh-86296, fixed in
    3.12). The task still counts the request, so a loop that checks it stops as asked."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
