"""The spool drainer (bridge/spool.py) against the real Redis: several drainers, one spool.

Bridge processes on one host (several nodes, or a restart overlapping the old process) drain the
same spool directory; each spooled event must reach its stream once.
"""

from __future__ import annotations

import asyncio
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
