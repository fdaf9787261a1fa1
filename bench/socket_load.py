"""Socket.IO load: thousands of browser-like sockets, in worker processes of their own.

python-socketio's AsyncClient costs too much per socket for 10,000 of them, so a worker speaks the
two protocols itself, over aiohttp websockets only (no long-polling):

  Engine.IO v4   ws://host:port/socket.io/?EIO=4&transport=websocket; the server opens with
                 `0{"sid",...,"pingInterval","pingTimeout"}`, pings with `2`, the client answers `3`;
                 one packet per websocket text frame.
  Socket.IO v5   the client connects to the default namespace with `40{"token","lastEventId"}`
                 (the bridge reads `auth.token` and `auth.lastEventId`); the server accepts with
                 `40{"sid":...}` or refuses with `44{"message":...}`; events are `42["name",payload]`;
                 `41` is a namespace disconnect.

Worker (`python -m bench.socket_load`): reads one JSON line on stdin

    {"urls": [...], "first": 0, "tokens": [...], "last_event_ids": [...] | null,
     "record": ["new_email", ...], "mode": "events" | "count", "connect_concurrency": 200,
     "compress": false}

Socket i of the fleet (i = `first` + its place in `tokens`) connects to urls[i % len(urls)]: with
several bridge nodes, one user's consecutive sockets land on different nodes, as a round-robin load
balancer would place them.

connects every socket (bounded concurrency, a refused or failed connect retried with backoff), then
prints JSON lines on stdout:

    {"ready": n_ok, "failed": n_failed, "connect_s": x, "t0": wall_time, "errors": {reason: n},
     "retried": {reason: n}}
    {"e": name, "k": key, "t": wall_time, "s": socket_index}     (mode "events", recorded kinds only;
                                                                 key = subject for new_email, else eventId)
    {"counts": {name: n}, "t": wall_time, "open": n_open}        (every second, both modes)
    {"done": true, "counts": {name: n}, "dropped": n}            (after "stop\\n" or EOF on stdin;
                                                                 dropped = sockets the server closed)

Controller: `SocketFleet`, an async context manager that runs the workers as asyncio subprocesses,
reads their output continuously and keeps `connected`, `received` and `counts` current.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import json
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp

REPO = Path(__file__).resolve().parent.parent
ENGINE_PATH = "/socket.io/?EIO=4&transport=websocket"
CONNECT_ATTEMPTS = 4
BACKOFF_S = 0.25
HANDSHAKE_TIMEOUT_S = 30.0
SUMMARY_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 10.0
CONFIG_LIMIT = 1 << 28  # the config line carries every token (10,000 tokens are about 3 MB)

Mode = Literal["events", "count"]
LastEventId = str | Mapping[str, str] | None


# ============================================================================ worker


class Refused(Exception):
    """The server answered the Socket.IO CONNECT with CONNECT_ERROR (`44`)."""


class HandshakeFailed(Exception):
    """The Engine.IO / Socket.IO handshake did not complete as the protocol says."""


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (each socket is one descriptor); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def socket_url(url: str) -> str:
    """The Engine.IO websocket endpoint of a bridge's web URL (http://host:port)."""
    base = url.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    return base + ENGINE_PATH


def event_key(name: str, payload: object) -> str:
    if not isinstance(payload, dict):
        return ""
    value = payload.get("subject") if name == "new_email" else payload.get("eventId")
    return "" if value is None else str(value)


@dataclass
class WorkerConfig:
    urls: list[str]
    tokens: list[str]
    first: int = 0
    last_event_ids: list[Any] | None = None
    record: frozenset[str] = frozenset({"new_email"})
    mode: Mode = "events"
    connect_concurrency: int = 200
    compress: bool = False

    @classmethod
    def from_json(cls, line: bytes) -> WorkerConfig:
        data = json.loads(line)
        mode = data.get("mode", "events")
        if mode not in ("events", "count"):
            raise ValueError(f"mode must be events or count, not {mode!r}")
        tokens = [str(t) for t in data["tokens"]]
        ids = data.get("last_event_ids")
        if ids is not None and len(ids) != len(tokens):
            raise ValueError("last_event_ids must have one entry per token")
        urls = [str(u) for u in data["urls"]]
        if not urls:
            raise ValueError("urls must name at least one bridge")
        return cls(
            urls=urls,
            tokens=tokens,
            first=int(data.get("first", 0)),
            last_event_ids=ids,
            record=frozenset(str(r) for r in data.get("record", ["new_email"])),
            mode=mode,
            connect_concurrency=max(1, int(data.get("connect_concurrency", 200))),
            compress=bool(data.get("compress", False)),
        )


class Worker:
    def __init__(self, config: WorkerConfig, stdin: asyncio.StreamReader) -> None:
        self.config = config
        self.stdin = stdin
        self.counts: collections.Counter[str] = collections.Counter()
        self.sockets: dict[int, aiohttp.ClientWebSocketResponse] = {}
        self.readers: set[asyncio.Task[None]] = set()
        self.errors: collections.Counter[str] = collections.Counter()  # why sockets finally failed
        self.retried: collections.Counter[str] = collections.Counter()  # why connected sockets needed retries
        self.stop = asyncio.Event()
        self.stopping = False
        self.dropped = 0  # sockets the server closed before we stopped
        self._flush_scheduled = False

    # ------------------------------------------------------------------ output

    def emit(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()

    # ------------------------------------------------------------------ protocol

    async def _handshake(self, session: aiohttp.ClientSession, index: int) -> aiohttp.ClientWebSocketResponse:
        config = self.config
        ws = await session.ws_connect(
            socket_url(config.urls[(config.first + index) % len(config.urls)]),
            autoping=True,
            heartbeat=None,
            compress=15 if config.compress else 0,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                opening = await ws.receive()
                if opening.type is not aiohttp.WSMsgType.TEXT or not opening.data.startswith("0"):
                    raise HandshakeFailed(f"no Engine.IO open packet ({opening.type.name})")
                auth: dict[str, Any] = {"token": config.tokens[index]}
                if config.last_event_ids is not None and config.last_event_ids[index] is not None:
                    auth["lastEventId"] = config.last_event_ids[index]
                await ws.send_str("40" + json.dumps(auth, separators=(",", ":")))
                while True:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise HandshakeFailed(f"closed during the handshake ({msg.type.name})")
                    data: str = msg.data
                    if data == "2":
                        await ws.send_str("3")
                    elif data.startswith("40"):
                        return ws
                    elif data.startswith("44"):
                        reason: object = None
                        with contextlib.suppress(ValueError):
                            reason = json.loads(data[2:])
                        if isinstance(reason, dict):
                            reason = reason.get("message")
                        raise Refused(str(reason))
                    else:
                        raise HandshakeFailed(f"unexpected packet {data[:40]!r}")
        except BaseException:
            await ws.close()
            raise

    async def _connect(self, session: aiohttp.ClientSession, index: int, gate: asyncio.Semaphore) -> bool:
        error = "not attempted"
        for attempt in range(CONNECT_ATTEMPTS):
            if self.stop.is_set():
                self.errors["stopped before connecting"] += 1
                return False
            async with gate:
                try:
                    ws = await self._handshake(session, index)
                except Refused as exc:
                    error = f"refused: {exc}"[:120]
                except (aiohttp.ClientError, OSError, TimeoutError, HandshakeFailed) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:120]
                else:
                    if attempt:
                        self.retried[error] += 1
                    self.sockets[index] = ws
                    task = asyncio.create_task(self._read(index, ws))
                    self.readers.add(task)
                    task.add_done_callback(self.readers.discard)
                    return True
            if attempt + 1 < CONNECT_ATTEMPTS:
                await asyncio.sleep(BACKOFF_S * 2**attempt * random.uniform(0.5, 1.5))
        self.errors[error] += 1
        return False

    async def _read(self, index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        counts = self.counts
        events_mode = self.config.mode == "events"
        record = self.config.record
        try:
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break  # CLOSE, CLOSING, CLOSED or ERROR: the connection is over
                data: str = msg.data
                if data.startswith("42"):
                    if events_mode:
                        packet = json.loads(data[2:])
                        name = str(packet[0])
                        counts[name] += 1
                        if name in record:
                            payload = packet[1] if len(packet) > 1 else None
                            self.emit({"e": name, "k": event_key(name, payload), "t": time.time(), "s": index})
                    else:
                        # `42["name",...`: the name is the first JSON string; event names hold no quotes.
                        counts[data[4 : data.find('"', 4)]] += 1
                elif data == "2":
                    await ws.send_str("3")
                elif data.startswith("41") or data == "1":
                    break  # namespace disconnect, or Engine.IO close
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            self.sockets.pop(index, None)
            if not self.stopping:
                self.dropped += 1

    # ------------------------------------------------------------------ lifecycle

    async def _watch_stdin(self) -> None:
        while True:
            line = await self.stdin.readline()
            if not line or line.strip() == b"stop":
                self.stop.set()
                return

    async def _summaries(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), SUMMARY_INTERVAL_S)
            if not self.stop.is_set():
                self.emit({"counts": dict(self.counts), "t": time.time(), "open": len(self.sockets)})

    async def run(self) -> None:
        config = self.config
        watcher = asyncio.create_task(self._watch_stdin())
        connector = aiohttp.TCPConnector(limit=0, use_dns_cache=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            t0 = time.time()
            started = time.monotonic()
            gate = asyncio.Semaphore(config.connect_concurrency)
            results = await asyncio.gather(*(self._connect(session, i, gate) for i in range(len(config.tokens))))
            ok = sum(results)
            self.emit(
                {
                    "ready": ok,
                    "failed": len(results) - ok,
                    "connect_s": round(time.monotonic() - started, 4),
                    "t0": t0,
                    "errors": dict(self.errors.most_common(10)),
                    "retried": dict(self.retried.most_common(10)),
                }
            )
            summaries = asyncio.create_task(self._summaries())
            await self.stop.wait()
            self.stopping = True
            await summaries
            for task in list(self.readers):
                task.cancel()
            await asyncio.gather(*self.readers, return_exceptions=True)
            sockets = list(self.sockets.values())
            if sockets:
                await asyncio.wait([asyncio.create_task(ws.close()) for ws in sockets], timeout=CLOSE_TIMEOUT_S)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        self.emit({"done": True, "counts": dict(self.counts), "dropped": self.dropped})
        self._flush()


async def worker_main() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=CONFIG_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    line = await stdin.readline()
    if not line:
        raise SystemExit("socket_load: expected one JSON config line on stdin")
    await Worker(WorkerConfig.from_json(line), stdin).run()


def main() -> None:
    raise_fd_limit()
    try:
        uvloop = importlib.import_module("uvloop")  # optional: a faster event loop when installed
    except ImportError:
        asyncio.run(worker_main())
    else:
        uvloop.run(worker_main())


# ============================================================================ controller


class FleetError(RuntimeError):
    """The fleet could not be brought up as asked (too few sockets connected, a worker died)."""


@dataclass
class _Proc:
    number: int
    offset: int  # global index of this worker's first socket
    size: int
    process: asyncio.subprocess.Process
    ready: dict[str, Any] | None = None
    done: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    open: int = 0
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))


class SocketFleet:
    """`len(tokens)` sockets spread over `processes` worker processes, and over the bridge nodes at
    `url` (one URL, or a list: socket i goes to the (i mod n)-th).

    `received` holds (name, key, wall time, global socket index) for each recorded event (mode
    "events"); `counts` the events received per name, all sockets together (updated on every event
    line and from the workers' one-second summaries, in both modes).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        tokens: Sequence[str],
        *,
        processes: int = 2,
        record: Sequence[str] = ("new_email",),
        mode: Mode = "events",
        last_event_ids: Sequence[LastEventId] | None = None,
        connect_concurrency: int = 200,
        ready_timeout: float = 120.0,
        min_connected: float = 0.99,
        compress: bool = False,
    ) -> None:
        if not tokens:
            raise ValueError("a fleet needs at least one token")
        if last_event_ids is not None and len(last_event_ids) != len(tokens):
            raise ValueError("last_event_ids must have one entry per token")
        self.urls = [url] if isinstance(url, str) else list(url)
        self.tokens = list(tokens)
        self.processes = max(1, min(processes, len(self.tokens)))
        self.record = tuple(record)
        self.mode: Mode = mode
        self.last_event_ids = list(last_event_ids) if last_event_ids is not None else None
        self.connect_concurrency = connect_concurrency
        self.ready_timeout = ready_timeout
        self.min_connected = min_connected
        self.compress = compress
        self.connected = 0
        self.failed = 0
        self.connect_s = 0.0  # the slowest worker's time to connect all its sockets
        self.connect_started = 0.0  # wall time the first worker began connecting
        self.errors: dict[str, int] = {}  # why sockets failed, after every attempt
        self.retried: dict[str, int] = {}  # why sockets that did connect needed more than one attempt
        self.received: list[tuple[str, str, float, int]] = []
        self.counts: dict[str, int] = {}
        self.pids: list[int] = []
        self._procs: list[_Proc] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ state

    @property
    def open(self) -> int:
        """Sockets open at the workers' last summaries."""
        return sum(p.open for p in self._procs)

    @property
    def dropped(self) -> int:
        """Sockets the server closed (known once the fleet stopped)."""
        return sum(int((p.done or {}).get("dropped", 0)) for p in self._procs)

    def _recount(self) -> None:
        total: collections.Counter[str] = collections.Counter()
        for proc in self._procs:
            total.update(proc.counts)
        self.counts = dict(total)

    def _line(self, proc: _Proc, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            proc.stderr_tail.append(f"(stdout) {raw[:200]!r}")
            return
        if "e" in data:
            name = str(data["e"])
            self.received.append((name, str(data["k"]), float(data["t"]), proc.offset + int(data["s"])))
            proc.counts[name] = proc.counts.get(name, 0) + 1
            self.counts[name] = self.counts.get(name, 0) + 1
        elif "counts" in data and "done" not in data:
            proc.counts = {str(k): int(v) for k, v in data["counts"].items()}
            proc.samples.append((float(data["t"]), dict(proc.counts)))
            proc.open = int(data.get("open", 0))
            self._recount()
        elif "ready" in data:
            proc.ready = data
            proc.open = int(data["ready"])
        elif "done" in data:
            proc.done = data
            proc.counts = {str(k): int(v) for k, v in data["counts"].items()}
            proc.open = 0
            self._recount()
        self._changed.set()

    async def _read_stdout(self, proc: _Proc) -> None:
        stream = proc.process.stdout
        assert stream is not None
        while line := await stream.readline():
            self._line(proc, line)
        self._changed.set()

    async def _read_stderr(self, proc: _Proc) -> None:
        stream = proc.process.stderr
        assert stream is not None
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            proc.stderr_tail.append(text)
            print(f"[socket_load {proc.number}] {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SocketFleet:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def _start(self) -> None:
        n, k = len(self.tokens), self.processes
        bounds = [n * i // k for i in range(k + 1)]
        for number in range(k):
            lo, hi = bounds[number], bounds[number + 1]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.socket_load",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=REPO,
                limit=1 << 20,
            )
            proc = _Proc(number, lo, hi - lo, process)
            self._procs.append(proc)
            self.pids.append(process.pid)
            self._tasks.append(asyncio.create_task(self._read_stdout(proc)))
            self._tasks.append(asyncio.create_task(self._read_stderr(proc)))
            config = {
                "urls": self.urls,
                "first": lo,
                "tokens": self.tokens[lo:hi],
                "last_event_ids": self.last_event_ids[lo:hi] if self.last_event_ids is not None else None,
                "record": list(self.record),
                "mode": self.mode,
                "connect_concurrency": max(1, self.connect_concurrency // k),
                "compress": self.compress,
            }
            assert process.stdin is not None
            process.stdin.write(json.dumps(config).encode() + b"\n")
            await process.stdin.drain()

        def all_ready() -> bool:
            return all(p.ready is not None or p.process.returncode is not None for p in self._procs)

        if not await self.wait_for(all_ready, self.ready_timeout):
            waiting = [p.number for p in self._procs if p.ready is None]
            raise FleetError(f"socket workers {waiting} not ready after {self.ready_timeout:.0f} s")
        dead = [p for p in self._procs if p.ready is None]
        if dead:
            await asyncio.sleep(0.1)  # let the reader collect the traceback
            tail = " | ".join(dead[0].stderr_tail)
            raise FleetError(f"socket worker {dead[0].number} exited ({dead[0].process.returncode}): {tail}")
        errors: collections.Counter[str] = collections.Counter()
        retried: collections.Counter[str] = collections.Counter()
        for proc in self._procs:
            assert proc.ready is not None
            errors.update({str(k): int(v) for k, v in proc.ready.get("errors", {}).items()})
            retried.update({str(k): int(v) for k, v in proc.ready.get("retried", {}).items()})
        self.errors = dict(errors)
        self.retried = dict(retried)
        self.connected = sum(int(p.ready["ready"]) for p in self._procs if p.ready)
        self.failed = sum(int(p.ready["failed"]) for p in self._procs if p.ready)
        self.connect_s = max(float(p.ready["connect_s"]) for p in self._procs if p.ready)
        self.connect_started = min(float(p.ready["t0"]) for p in self._procs if p.ready)
        if self.connected < self.min_connected * n:
            raise FleetError(
                f"only {self.connected} of {n} sockets connected ({self.failed} failed"
                f" after {CONNECT_ATTEMPTS} attempts each: {self.errors})"
            )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self, timeout: float = 30.0) -> None:
        for proc in self._procs:
            stdin = proc.process.stdin
            if stdin is None or stdin.is_closing():
                continue
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                stdin.write(b"stop\n")
                await stdin.drain()
            stdin.close()
        waits = [asyncio.create_task(p.process.wait()) for p in self._procs]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=timeout)
            if pending:
                for proc in self._procs:
                    if proc.process.returncode is None:
                        proc.process.kill()  # only our own children
                await asyncio.gather(*pending, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # ------------------------------------------------------------------ queries

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds (re-checked after every line a worker prints); False on
        timeout, or once every worker has exited without it holding."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if (
                self._procs
                and all(p.process.returncode is not None for p in self._procs)
                and not any(not t.done() for t in self._tasks)
            ):
                return predicate()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
        return True

    def rate_between(self, t0: float, t1: float | None = None, name: str | None = None) -> float:
        """Events per second received by all sockets together between wall times t0 and t1 (or the
        latest summary), from the workers' one-second summaries; `name` restricts it to one event."""

        def total(counts: dict[str, int]) -> int:
            return counts.get(name, 0) if name is not None else sum(counts.values())

        rate = 0.0
        for proc in self._procs:
            window = [s for s in proc.samples if s[0] >= t0 and (t1 is None or s[0] <= t1)]
            if len(window) >= 2 and window[-1][0] > window[0][0]:
                rate += (total(window[-1][1]) - total(window[0][1])) / (window[-1][0] - window[0][0])
        return rate

    def rate_since(self, t0: float, name: str | None = None) -> float:
        return self.rate_between(t0, None, name)


if __name__ == "__main__":
    main()
