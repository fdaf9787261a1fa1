"""Waiting in tests for something another process does: a ceiling against hangs, never a speed
assertion (speed is measured in the benchmarks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis


def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `check` until it holds; a Redis that is not up yet counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """The same inside an event loop, for a predicate on state the loop's own tasks update."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
