"""The spool drainer (bridge/spool.py) against the real Redis: several drainers, one spool.

Bridge processes on one host (several nodes, or a restart overlapping the old process) drain the
same spool directory; each spooled event must reach its stream once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge import codec
from bridge.events import MessageNew
from bridge.spool import PENDING, SpoolDrainer, spool_record, write_spool
from bridge.stack.launcher import StackInfo


@pytest.fixture
async def client(stack: StackInfo) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(stack.redis_url)
    yield redis
    await redis.aclose()


def _event(n: int) -> MessageNew:
    return MessageNew(
        key=f"spool-test:{uuid.uuid4().hex}:{n}",
        ts=n,
        account="spool@example.test",
        mailbox="INBOX",
        uidvalidity=1,
        uid=n + 1,
        subject=f"spooled {n}",
    )


async def test_drainers_sharing_a_spool_publish_each_event_once(client: aioredis.Redis, tmp_path: Path) -> None:
    stream = f"test:spool:{uuid.uuid4().hex[:8]}"
    sent = []
    for f in range(200):
        events = [_event(f * 5 + i) for i in range(5)]
        sent += [e.key for e in events]
        write_spool(tmp_path, [spool_record(stream, e) for e in events])
    (tmp_path / PENDING).touch()
    drainers = [SpoolDrainer(client, tmp_path, maxlen=100_000) for _ in range(3)]
    try:
        published = await asyncio.gather(*(d.drain_once() for d in drainers))
        keys = [codec.decode(fields[b"e"]).key for _id, fields in await client.xrange(stream)]
    finally:
        await client.delete(stream)
    assert sum(published) == 1000
    assert keys == sent  # each once, in the spool's order
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".mp", ".tmp") or p.name == PENDING] == []


def _name() -> str:
    return f"{time.time_ns() // 1000:016d}-{secrets.randbits(32):08x}"


async def _stream_keys(client: aioredis.Redis, stream: str) -> list[str]:
    return [codec.decode(fields[b"e"]).key for _id, fields in await client.xrange(stream)]


async def test_a_file_still_being_written_holds_back_the_marker_and_what_came_after_it(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    """A producer writes its .tmp; a later producer's file is complete. Neither may be overtaken, and
    the marker must stay up (or the next event would go straight to Redis, ahead of both)."""
    stream = f"test:spool:{uuid.uuid4().hex[:8]}"
    first, later = [_event(n) for n in range(3)], [_event(10 + n) for n in range(2)]
    records = [spool_record(stream, e) for e in first]
    writing = tmp_path / f"{_name()}.tmp"
    writing.write_bytes(b"".join(records[:2]))  # mid-write
    (tmp_path / PENDING).touch()
    await asyncio.sleep(0.001)  # a later name
    write_spool(tmp_path, [spool_record(stream, e) for e in later])
    drainer = SpoolDrainer(client, tmp_path, maxlen=1000)
    try:
        assert await drainer.drain_once() == 0
        assert (tmp_path / PENDING).exists()
        assert await client.xlen(stream) == 0
        writing.write_bytes(b"".join(records))  # the producer finishes, and renames its file
        os.replace(writing, writing.with_suffix(".mp"))
        assert await drainer.drain_once() == 5
        assert await _stream_keys(client, stream) == [e.key for e in first + later]
    finally:
        await client.delete(stream)
    assert not (tmp_path / PENDING).exists()


async def test_a_file_its_producer_left_unfinished_is_published(client: aioredis.Redis, tmp_path: Path) -> None:
    """A producer that died between writing its .tmp and renaming it: its events are not left behind
    for ever (and, with them, every event after them): the complete records are published, a
    truncated tail is kept in bad/."""
    stream = f"test:spool:{uuid.uuid4().hex[:8]}"
    whole, cut = [_event(n) for n in range(2)], [_event(10 + n) for n in range(3)]
    left = tmp_path / f"{_name()}.tmp"
    left.write_bytes(b"".join(spool_record(stream, e) for e in whole))
    torn = tmp_path / f"{_name()}.tmp"
    tail = b"".join(spool_record(stream, e) for e in cut)
    torn.write_bytes(tail[: len(tail) - 5])
    an_hour_ago = time.time() - 3600
    for path in (left, torn):
        os.utime(path, (an_hour_ago, an_hour_ago))
    (tmp_path / PENDING).touch()
    try:
        assert await SpoolDrainer(client, tmp_path, maxlen=1000).drain_once() == 4
        assert await _stream_keys(client, stream) == [e.key for e in whole + cut[:2]]
    finally:
        await client.delete(stream)
    assert [p.name for p in (tmp_path / "bad").iterdir()] == [torn.name]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".drain.lock"]
