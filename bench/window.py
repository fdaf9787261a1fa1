"""One step's measurement window: cores used by each group of the stack and, when asked, a py-spy
profile of each bridge process over the same window.

    window = StepWindow(stack, "lat100x10", profile_dir=stack.state / "profiles")
    async with window:            # or: await window.start() ... await window.stop()
        ...                       # send, then wait for the drain
    window.cpu_cores              # {"postfix": 0.21, ..., "bridge": 0.93, "load": 0.2, "machine": 1.9}
    window.profile                # Profiler.stop()'s dict, or None
    window.redis_calls            # {"xadd": 120, ..., "(connections)": 40}: Redis's own counters

Redis's counters (INFO commandstats, and new connections from INFO stats) are read at both ends
of the window when the stack runs Redis; the two INFO calls of the reading are left out. They
count every client's commands: in the benchmark only the stack's processes speak to Redis.

The profiler starts first and stops last, so its own start-up and write-out are outside the
window; its CPU inside the window is its own group, "profiler" (not the load's).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from bench.cpu import PROFILER, CpuMeter
from bench.profile import Profiler
from bench.stack import BenchStack


class StepWindow:
    def __init__(self, stack: BenchStack, tag: str, *, profile_dir: Path | None = None) -> None:
        self.stack = stack
        self.tag = tag
        self.profile_dir = profile_dir
        self.cpu_cores: dict[str, float] = {}
        self.seconds = 0.0
        self.profile: dict[str, Any] | None = None
        self._meter: CpuMeter | None = None
        self._profiler: Profiler | None = None
        self.redis_calls: dict[str, int] = {}
        self._redis_before: dict[str, int] | None = None

    async def start(self) -> None:
        self._redis_before = await self._redis_counters()
        roots = self.stack.cpu_roots()
        if self.profile_dir is not None:
            self._profiler = Profiler(self.stack.bridge_services(), self.profile_dir, self.tag)
            await self._profiler.start()
            if self._profiler.pids:
                roots[PROFILER] = self._profiler.pids
        self._meter = CpuMeter(roots)
        self._meter.start()

    async def stop(self) -> None:
        if self._meter is not None:
            self.cpu_cores = self._meter.stop()
            self.seconds = round(self._meter.seconds, 2)
            self._meter = None
        if self._redis_before is not None:
            after = await self._redis_counters() or {}
            delta = {name: after.get(name, 0) - self._redis_before.get(name, 0) for name in after}
            delta["(connections)"] = delta.get("(connections)", 0) - 1  # the second reading's own
            self.redis_calls = {name: calls for name, calls in sorted(delta.items()) if calls > 0}
            self._redis_before = None
        if self._profiler is not None:
            self.profile = await self._profiler.stop()
            self._profiler = None

    def summary(self) -> dict[str, Any]:
        """What a step's result carries: cores by group, the window's length, the profile if any."""
        out: dict[str, Any] = {"cpu_cores": self.cpu_cores, "cpu_window_s": self.seconds}
        if self.redis_calls:
            out["redis_calls"] = self.redis_calls
        if self.profile is not None:
            out["profile"] = self.profile
        return out

    async def _redis_counters(self) -> dict[str, int] | None:
        """Calls per command and connections received so far; None when the stack has no Redis."""
        if "redis" not in self.stack.services():
            return None
        client = aioredis.Redis.from_url(self.stack.info.redis_url)
        try:
            commands = await client.info("commandstats")
            stats = await client.info("stats")
        finally:
            await client.aclose()
        counters = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in commands.items()}
        counters["info"] = 0  # the reading's own
        counters["(connections)"] = int(stats["total_connections_received"])
        return counters

    async def __aenter__(self) -> StepWindow:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
