"""The consumer group edge on the stack's real Redis: whole reads to the handler, one XACK per read,
nothing acknowledged that was not handled, and a bug isolated to its own entry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis

from bridge import codec
from bridge.errors import Unavailable
from bridge.events import ENTRY_FIELD, FlagsSet
from bridge.streams import Consumer, Delivery


def flag_event(n: int) -> FlagsSet:
    return FlagsSet(key=f"k{n}", ts=0, account="a@example.test", mailbox="INBOX", uidvalidity=1, uid=n)


async def fill(redis: aioredis.Redis, stream: str, count: int) -> None:
    for n in range(count):
        await redis.xadd(stream, {ENTRY_FIELD: codec.encode(flag_event(n))})
    await redis.xadd(stream, {b"junk": b"not an event"})


async def pending(redis: aioredis.Redis, stream: str, group: str) -> int:
    info = await redis.xpending(stream, group)
    return int(info["pending"])


async def run_until(consumer: Consumer, done: asyncio.Event) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_read_is_handled_as_one_batch_and_acknowledged(redis_client: aioredis.Redis) -> None:
    stream = f"test:streams:{uuid.uuid4().hex}"
    await fill(redis_client, stream, 20)
    seen: list[list[str]] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery]) -> None:
        seen.append([d.event.key for d in batch])
        if sum(map(len, seen)) >= 20:
            done.set()

    consumer = Consumer(redis_client, (stream,), "g", "c1", handler, block_ms=100)
    await run_until(consumer, done)
    assert seen == [[f"k{n}" for n in range(20)]]  # one read, in stream order; the junk entry skipped
    assert await pending(redis_client, stream, "g") == 0  # the junk entry acknowledged too


async def test_a_bug_is_isolated_to_its_entry(redis_client: aioredis.Redis) -> None:
    stream = f"test:streams:{uuid.uuid4().hex}"
    await fill(redis_client, stream, 5)
    handled: list[str] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery]) -> None:
        if any(d.event.key == "k2" for d in batch):
            raise ValueError("a bug")
        handled.extend(d.event.key for d in batch)
        if len(handled) == 4:
            done.set()

    consumer = Consumer(redis_client, (stream,), "g", "c1", handler, block_ms=100)
    await run_until(consumer, done)
    assert handled == ["k0", "k1", "k3", "k4"]
    assert await pending(redis_client, stream, "g") == 0


async def test_an_unavailable_service_leaves_the_read_pending(redis_client: aioredis.Redis) -> None:
    stream = f"test:streams:{uuid.uuid4().hex}"
    await fill(redis_client, stream, 5)
    attempts = 0
    done = asyncio.Event()

    async def failing(batch: Sequence[Delivery]) -> None:
        nonlocal attempts
        attempts += 1
        done.set()
        raise Unavailable("store down")

    await run_until(Consumer(redis_client, (stream,), "g", "c1", failing, block_ms=100), done)
    assert attempts >= 1
    # Nothing of the read acknowledged, not even its undecodable entry: the read is retried whole.
    assert await pending(redis_client, stream, "g") == 6

    # A restarted consumer of the same name handles its own pending entries first.
    got: list[str] = []
    done = asyncio.Event()

    async def working(batch: Sequence[Delivery]) -> None:
        got.extend(d.event.key for d in batch)
        if len(got) >= 5:
            done.set()

    await run_until(Consumer(redis_client, (stream,), "g", "c1", working, block_ms=100), done)
    assert got == [f"k{n}" for n in range(5)]
    assert await pending(redis_client, stream, "g") == 0
