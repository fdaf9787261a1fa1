"""Redis Streams edge: publishing events and consuming them through a consumer group.

Publishing never blocks mail: `Publisher.publish` gives Redis a bounded time and otherwise writes
the event to the spool (bridge.spool), from which the drainer publishes it later, in order.

Consuming is at-least-once (Redis Streams consumer groups): an entry is acknowledged only after the
handler returned. Entries another consumer left pending for longer than `claim_idle_ms` are claimed
back (XAUTOCLAIM), and a group lost with a restarted Redis is recreated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from bridge import codec
from bridge.errors import DecodeError, Unavailable
from bridge.events import ENTRY_FIELD, Event
from bridge.spool import PENDING, spool_record, write_spool

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 0.5


class Publisher:
    def __init__(self, redis: aioredis.Redis, spool_dir: Path, maxlen: int) -> None:
        self.redis = redis
        self.spool_dir = spool_dir
        self.maxlen = maxlen

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
                return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("[%s] redis unavailable (%s); spooling event", event.key, exc)
        try:
            write_spool(self.spool_dir, [spool_record(stream, event)])
        except OSError as exc:
            log.error("[%s] LOST event %s: redis and spool both failed: %s", event.key, event.kind, exc)
            raise
        return None


Handler = Callable[[str, str, Event], Awaitable[None]]


class Consumer:
    """Reads several streams through one consumer group and hands each event to `handler`."""

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
    ) -> None:
        self.redis = redis
        self.streams = streams
        self.group = group
        self.name = name
        self.handler = handler
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                # From the start of the stream: a new group misses nothing already published.
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
                log.info("[%s] consumer group %s created", stream, self.group)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _handle(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        payload = fields.get(ENTRY_FIELD)
        try:
            if payload is None:
                raise DecodeError("entry has no 'e' field")
            event = codec.decode(payload)
        except DecodeError as exc:
            log.error("[%s %s] undecodable entry acknowledged and skipped: %s", stream, entry_id, exc)
        else:
            try:
                await self.handler(stream, entry_id, event)
            except (Unavailable, RedisError):
                # Not acknowledged: retried from the pending list once the service is back. A Redis
                # error inside the handler (pool exhausted, connection lost) is the same case: the
                # event was not relayed or indexed, so acknowledging it would lose it.
                raise
            except Exception:
                # A bug must not wedge the stream behind one entry: log it with its id, move on.
                log.exception("[%s %s] handler failed; entry acknowledged", stream, entry_id)
        await self.redis.xack(stream, self.group, entry_id)

    async def _claim(self) -> None:
        for stream in self.streams:
            start = "0-0"
            while True:
                result: Any = await self.redis.xautoclaim(
                    stream, self.group, self.name, self.claim_idle_ms, start_id=start, count=self.batch
                )
                start_raw, entries = result[0], result[1]
                for entry_id, fields in entries:
                    if fields is not None:
                        await self._handle(stream, _s(entry_id), fields)
                start = _s(start_raw)
                if start == "0-0" or not entries:
                    break

    async def _pending_own(self) -> None:
        """Entries delivered to this consumer name before a restart and never acknowledged."""
        for stream in self.streams:
            response: Any = await self.redis.xreadgroup(self.group, self.name, {stream: "0"}, count=self.batch)
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    if fields:
                        await self._handle(stream, _s(entry_id), fields)

    async def run(self) -> None:
        failing = False
        claimed_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if failing or claimed_at == 0.0:
                    await self.ensure_groups()
                    await self._pending_own()
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
                    stream = _s(stream_raw)
                    for entry_id, fields in entries:
                        await self._handle(stream, _s(entry_id), fields)
            except (RedisError, OSError, Unavailable) as exc:
                if not failing:
                    log.warning("consumer %s/%s: paused, retrying: %s", self.group, self.name, exc)
                failing = True
                await asyncio.sleep(0.5)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
