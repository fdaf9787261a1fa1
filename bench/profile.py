"""Function-level profiles of the bridge's processes with py-spy, and their summaries.

`Profiler` runs one `py-spy record --format raw` per process for the length of a measurement window
(started before it, stopped with SIGINT at its end, so py-spy writes what it has). py-spy samples
without pausing the process (`--nonblocking`) and leaves out idle threads (sleeping, e.g. in the
event loop's epoll). A thread that is runnable but waiting for a CPU is not idle: on a saturated
machine the samples are where the process spent its time, CPU or waiting for one (a loopback
socket write that wakes the reader is a typical place to be preempted). So each process's CPU over
the same window is measured too (`cpu_cores`), beside `busy`, the threads sampled on average.

A raw file holds collapsed stacks, one line per distinct stack, root first:
`process 12:"python -m bridge serve";<module> (/repo/bridge/__main__.py:5);... 17` (the process frame
only with `--subprocesses`). `summarise` turns them into (a) the share of samples by the area of the
leaf frame (the event loop, redis, pymongo, ..., the bridge's own code), (b) the bridge's functions
by inclusive share (a sample counts for every bridge function on its stack) and (c) the leaf
functions overall. Functions are told apart by name and file, not line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter

# Samples per second: py-spy's cost grows with it, and it shares the cores with what it measures
# (about 0.25 of a core at 250 Hz on two processes); 50 Hz over a 10 s window still gives ~500.
RATE_HZ = 50
TOP = 15
LIMIT_S = 900  # py-spy's own --duration: a bound in case a stop never comes
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 30.0

EVENT_LOOP = "asyncio/selectors"
BRIDGE = "bridge"
OTHER = "other"
# Leaf areas, in the order the report lists them when equal; each top-level package maps to one.
AREAS = (
    EVENT_LOOP,
    "redis",
    "pymongo",
    "engineio/socketio",
    "aiohttp",
    "aiosmtpd",
    "email (stdlib)",
    "msgpack",
    BRIDGE,
    OTHER,
)
_PACKAGE_AREA = {
    "asyncio": EVENT_LOOP,
    "selectors": EVENT_LOOP,
    "uvloop": EVENT_LOOP,
    "redis": "redis",
    "hiredis": "redis",
    "pymongo": "pymongo",
    "bson": "pymongo",
    "engineio": "engineio/socketio",
    "socketio": "engineio/socketio",
    # aiohttp and the libraries it is built on
    "aiohttp": "aiohttp",
    "multidict": "aiohttp",
    "yarl": "aiohttp",
    "propcache": "aiohttp",
    "aiosignal": "aiohttp",
    "frozenlist": "aiohttp",
    "aiohappyeyeballs": "aiohttp",
    "aiosmtpd": "aiosmtpd",
    "msgpack": "msgpack",
    "bridge": BRIDGE,
}
_STDLIB = re.compile(r"/lib/python3(?:\.\d+)?/")
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<path>.+?)(?::(?P<line>\d+))?\)$")
_PROCESS = re.compile(r'^process (\d+):".*?"(?:;|$)')


# ============================================================================ parsing


@dataclass(frozen=True)
class Frame:
    function: str
    path: str  # as py-spy wrote it: absolute with --full-filenames, else shortened to the package
    line: int | None = None


@dataclass(frozen=True)
class Stack:
    """One line of collapsed stacks: its frames (root first), its sample count, and the pid of the
    process frame py-spy put first (with --subprocesses), if any."""

    frames: tuple[Frame, ...]
    count: int
    pid: int | None = None


def parse_frame(text: str) -> Frame:
    """`function (path:line)`, `function (path)`, or anything else (kept whole as the function)."""
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "")
    line = match.group("line")
    return Frame(match.group("function"), match.group("path"), int(line) if line else None)


def parse_collapsed(text: str) -> list[Stack]:
    """Every well-formed line of a raw (collapsed) py-spy file; lines without a count are skipped."""
    stacks: list[Stack] = []
    for raw in text.splitlines():
        body, _, count = raw.rstrip().rpartition(" ")
        if not body or not count.isdigit():
            continue
        pid: int | None = None
        process = _PROCESS.match(body)
        if process is not None:
            pid = int(process.group(1))
            body = body[process.end() :]
        frames = tuple(parse_frame(part) for part in body.split(";") if part) if body else ()
        stacks.append(Stack(frames, int(count), pid))
    return stacks


# ============================================================================ summaries


def module_path(path: str) -> str:
    """The path from the top-level package on: `redis/asyncio/client.py`, `asyncio/events.py`,
    `bridge/realtime.py` (from site-packages, the standard library, the repository, or a path
    py-spy already shortened)."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    stdlib = _STDLIB.search(path)
    if stdlib is not None:
        return path[stdlib.end() :]
    where = path.rfind(f"/{BRIDGE}/")
    if where >= 0:
        return path[where + 1 :]
    return path


def area(path: str) -> str:
    """The area of the code a frame's file belongs to (one of AREAS)."""
    module = module_path(path)
    top = module.split("/", 1)[0].removesuffix(".py")
    if top == "email":  # the standard library's; a package of that name would be another thing
        return "email (stdlib)" if "-packages/" not in path else OTHER
    return _PACKAGE_AREA.get(top, OTHER)


def _key(frame: Frame) -> tuple[str, str]:
    return frame.function, module_path(frame.path)


def _ranked(counts: Counter[tuple[str, str]], total: int, top: int) -> list[dict[str, Any]]:
    return [
        {"function": function, "file": file, "samples": n, "share": round(n / total, 4)}
        for (function, file), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    ]


def _entry_depth(frames: Sequence[Frame]) -> int:
    """How many frames lead from the process's start to its event loop (`<module>`, `main`,
    `serve`, `asyncio.run`): they are on every sample of the loop's thread, so they are left out of
    the inclusive ranking. Under uvloop the loop itself is compiled code py-spy does not show, so
    the chain ends after the last frame of the command-line module (`bridge/__main__.py`) instead.
    0 when the stack has neither (another thread)."""
    loop = next((i for i, frame in enumerate(frames) if area(frame.path) == EVENT_LOOP), None)
    if loop is not None:
        return loop
    entry = [i for i, frame in enumerate(frames) if module_path(frame.path).endswith("__main__.py")]
    return entry[-1] + 1 if entry else 0


def summarise(stacks: Iterable[Stack], top: int = TOP) -> dict[str, Any]:
    """Samples in all; shares by leaf area; the `top` bridge functions by inclusive share (those
    the event loop runs, not the start-up chain that leads to it); the `top` leaf functions overall;
    and, when py-spy named processes, the samples of each."""
    areas: Counter[str] = Counter()
    leaves: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    processes: Counter[int] = Counter()
    total = 0
    for stack in stacks:
        total += stack.count
        if stack.pid is not None:
            processes[stack.pid] += stack.count
        if not stack.frames:
            areas[OTHER] += stack.count
            continue
        leaf = stack.frames[-1]
        areas[area(leaf.path)] += stack.count
        leaves[_key(leaf)] += stack.count
        for key in {_key(f) for f in stack.frames[_entry_depth(stack.frames) :] if area(f.path) == BRIDGE}:
            inclusive[key] += stack.count
    order = {name: i for i, name in enumerate(AREAS)}
    summary: dict[str, Any] = {
        "samples": total,
        "areas": [
            {"area": name, "samples": n, "share": round(n / total, 4)}
            for name, n in sorted(areas.items(), key=lambda item: (-item[1], order.get(item[0], len(order))))
        ],
        "bridge_inclusive": _ranked(inclusive, total, top),
        "leaves": _ranked(leaves, total, top),
    }
    if processes:
        summary["processes"] = {str(pid): n for pid, n in processes.most_common()}
    return summary


# ============================================================================ recording


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class _Recording:
    service: str
    pid: int
    output: Path
    log: Path
    process: asyncio.subprocess.Process | None = None
    error: str | None = None

    def log_error(self) -> str:
        """py-spy's `Error: ...` line (before its Rust backtrace), else its last lines."""
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("Error")]
            return " | ".join(errors or lines[-3:])
        return ""


class Profiler:
    """py-spy on each of `targets` ({service name: pid}) from `start()` to `stop()`; raw files go to
    `directory` as `<tag>-<service>.txt` (py-spy's own output beside them, `.log`)."""

    def __init__(self, targets: Mapping[str, int], directory: Path, tag: str, *, rate: int = RATE_HZ) -> None:
        self.rate = rate
        self.directory = directory
        self._recordings = [
            _Recording(name, pid, directory / f"{tag}-{name}.txt", directory / f"{tag}-{name}.log")
            for name, pid in targets.items()
        ]
        self._started = 0.0
        self._meter = CpuMeter({r.service: [r.pid] for r in self._recordings})

    @property
    def pids(self) -> list[int]:
        """The py-spy processes (to count their CPU apart from the load's)."""
        return [r.process.pid for r in self._recordings if r.process is not None]

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = py_spy()
        for recording in self._recordings:
            if binary is None:
                recording.error = "py-spy not found (it is in the bench extra: pip install -e '.[bench]')"
                continue
            await self._spawn(binary, recording)
        await asyncio.gather(*(self._sampling(r) for r in self._recordings if r.process is not None))
        self._started = time.monotonic()
        self._meter.start()

    async def _spawn(self, binary: str, recording: _Recording) -> None:
        argv = [
            *(binary, "record", "--pid", str(recording.pid), "--rate", str(self.rate)),
            *("--duration", str(LIMIT_S), "--format", "raw", "--output", str(recording.output)),
            *("--nonblocking", "--full-filenames", "--subprocesses"),
        ]
        try:
            with recording.log.open("wb") as log:
                recording.process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # a terminal's Ctrl-C is the benchmark's to handle
                )
        except OSError as exc:
            recording.error = f"py-spy could not be started: {exc}"

    async def _sampling(self, recording: _Recording) -> None:
        """Until py-spy says it samples (or exits, or START_TIMEOUT_S): the window starts after it."""
        assert recording.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and recording.process.returncode is None:
            with contextlib.suppress(OSError):
                if b"Sampling process" in recording.log.read_bytes():
                    return
            await asyncio.sleep(0.02)

    async def stop(self) -> dict[str, Any]:
        """Stop every py-spy (SIGINT: it writes its file and exits) and summarise the files:
        {"rate_hz", "seconds", "services": {name: summary, or {"pid", "error"}}}."""
        seconds = time.monotonic() - self._started
        cpu = self._meter.stop()
        for recording in self._recordings:
            if recording.process is not None and recording.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    recording.process.send_signal(signal.SIGINT)
        await asyncio.gather(*(self._reap(r) for r in self._recordings if r.process is not None))
        return {
            "rate_hz": self.rate,
            "seconds": round(seconds, 2),
            "services": {r.service: self._result(r, seconds, cpu.get(r.service, 0.0)) for r in self._recordings},
        }

    async def _reap(self, recording: _Recording) -> None:
        assert recording.process is not None
        try:
            await asyncio.wait_for(recording.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                recording.process.kill()  # our own child
            await recording.process.wait()
            recording.error = f"py-spy did not stop within {STOP_TIMEOUT_S:.0f} s of SIGINT"

    def _result(self, recording: _Recording, seconds: float, cpu_cores: float) -> dict[str, Any]:
        code = recording.process.returncode if recording.process is not None else None
        if recording.error is None and (code != 0 or not recording.output.exists()):
            recording.error = f"py-spy exited with {code}: {recording.log_error() or 'no output'}"
        if recording.error is not None:
            return {"pid": recording.pid, "error": recording.error}
        summary = summarise(parse_collapsed(recording.output.read_text(errors="replace")))
        # Samples over the samples one always-busy thread would give: threads not idle, on average.
        busy = summary["samples"] / (self.rate * seconds) if seconds > 0 else 0.0
        return {
            "pid": recording.pid,
            "raw": str(recording.output),
            "seconds": round(seconds, 2),
            "busy": round(busy, 3),
            "cpu_cores": cpu_cores,
            **summary,
        }


def headline(profile: Mapping[str, Any], areas: int = 4, functions: int = 3) -> str:
    """One line per profiled process: its top leaf areas and its top bridge functions (inclusive)."""
    parts: list[str] = []
    for service, result in profile.get("services", {}).items():
        if "error" in result:
            parts.append(f"{service}: not profiled ({result['error']})")
            continue
        top_areas = ", ".join(f"{a['area']} {a['share']:.0%}" for a in result["areas"][:areas])
        top_functions = ", ".join(f"`{f['function']}` {f['share']:.0%}" for f in result["bridge_inclusive"][:functions])
        parts.append(
            f"{service} ({result['cpu_cores']:.2f} cores, {result['busy']:.2f} threads not idle on average): "
            f"leaf samples {top_areas}; bridge functions (inclusive) {top_functions or 'none'}"
        )
    return "; ".join(parts)
