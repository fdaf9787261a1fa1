"""Relay benchmarks: how many events the bridge fans out, what a socket costs, how fast resume replays.

Each measurement is an `async def` taking a running `BenchStack` and returning a plain dict (wall
times in seconds, memory in bytes, CPU as a fraction of one core); the report writer turns them
into tables and plots.

Events are injected the way the Dovecot Lua hook publishes them: `XADD <prefix>:dovecot MAXLEN ~ N *
e <msgpack event>` (hooks/mail-bridge-push.lua, bridge.codec), pipelined in batches. Every injected
event has a unique `key`, so the relay's once-per-key dedupe drops none. Both consumer groups read
them: the relay ("bridge") turns each into browser events for the account's room, and the indexer
("bridge-index") writes the store and, for message events, publishes an `unread_count` of its own.
Nothing is disabled: that cost is part of the bridge.

Kinds of injected event (`kind`):
  "flags"      flags.set of a `$Bench` keyword: the relay emits one `email_flags`; the indexer updates
               the store (a keyword moves no counts, so it neither recounts nor emits `unread_count`;
               a `\\Seen` change would).
  "subscribe"  mailbox.subscribe: the relay emits one `mailbox_updated`; the indexer writes nothing
               and emits nothing (the relay's cost alone).

CPU is read from /proc (bench/cpu.py: per group of process trees, and the machine), memory from
/proc/<pid>/status (VmRSS). The relay ceiling's window is also profiled with py-spy when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import redis.asyncio as aioredis

from bench.cpu import CpuMeter, busy_cpu_seconds, cpu_seconds
from bench.idle_watch import socket_inodes
from bench.socket_load import SocketFleet, raise_fd_limit
from bench.stack import BenchStack, Node
from bench.window import StepWindow
from bridge import codec, redis_keys
from bridge.events import ENTRY_FIELD, Event, FlagsSet, MailboxSubscribe, StreamNames

STREAM_MAXLEN = 1_000_000  # as the hook trims (mail_bridge_stream_maxlen default)
BATCH = 500
SOCKETS_PER_USER = 10
KINDS = {"flags": "email_flags", "subscribe": "mailbox_updated"}


# ============================================================================ /proc


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fd_limits(pid: int | str = "self") -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/<pid>/limits."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise RuntimeError(f"no open-files limit for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_connections(pid: int, remote_port: int) -> int:
    """Established TCP connections of a process to `remote_port` (its socket inodes matched
    against /proc/net/tcp and tcp6)."""
    inodes = {str(inode) for inode in socket_inodes(pid)}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == remote_port and cols[9] in inodes:
                    count += 1
    return count


class RssSampler:
    """Peak VmRSS of one process, sampled every `interval` seconds while running."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.peak = max(self.peak, rss_bytes(self.pid))


async def settle(
    pid: int, *, below: float = 0.03, window: float = 0.5, timeout: float = 30.0, plateau: bool = False
) -> float:
    """Wait until the process's background work is over (the first-connect backfill, a drain): its
    CPU use over `window` seconds is below `below` of a core. With `plateau`, also once it has
    levelled off (four windows within 0.05 of a core of each other, under half a core: thousands of
    idle sockets cost a steady share of a core in Engine.IO pings). Returns the seconds waited."""
    started = time.monotonic()
    recent: list[float] = []
    while time.monotonic() - started < timeout:
        c0 = cpu_seconds(pid)
        await asyncio.sleep(window)
        usage = (cpu_seconds(pid) - c0) / window
        if usage < below:
            break
        recent = [*recent[-3:], usage]
        if plateau and len(recent) == 4 and max(recent) < 0.5 and max(recent) - min(recent) < 0.05:
            break
    return round(time.monotonic() - started, 2)


async def machine_load(seconds: float = 1.0) -> float:
    """Cores busy on the whole machine over `seconds` (before a measurement: anything else running
    here, another stack or a test run, competes with the processes measured)."""
    c0 = busy_cpu_seconds()
    await asyncio.sleep(seconds)
    return round((busy_cpu_seconds() - c0) / seconds, 3)


async def idle_cpu(pid: int, seconds: float = 3.0) -> float:
    """The process's CPU use over `seconds`, as a fraction of one core."""
    c0 = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return round((cpu_seconds(pid) - c0) / seconds, 3)


async def settle_all(pids: Sequence[int], **kwargs: Any) -> float:
    """`settle` for several processes at once; the longest wait."""
    waits = await asyncio.gather(*(settle(pid, **kwargs) for pid in pids))
    return max(waits, default=0.0)


async def warm_accounts(
    stack: BenchStack,
    accounts: Sequence[str],
    *,
    wave: int = 100,
    processes: int = 2,
    nodes: Sequence[Node] | None = None,
) -> dict[str, Any]:
    """Connect one socket per account to each node, `wave` accounts at a time, and wait each wave
    out: an account's first connection starts its backfill (IMAP and the store), which is not what
    a socket costs (and a node's first sight of an account costs it one store lookup). Waves,
    because a thousand backfills at once time out against Dovecot and are postponed to the next
    connection (that is, into the measurement)."""
    nodes = list(nodes or stack.nodes()[:1])
    imap_port = int(stack.info.imap["port"])
    cpu0, started = sum(cpu_seconds(n.pid) for n in nodes), time.monotonic()
    for lo in range(0, len(accounts), wave):
        tokens = [stack.token(a) for a in accounts[lo : lo + wave]]
        for node in nodes:
            async with SocketFleet(node.url, tokens, processes=processes, mode="count"):
                deadline = time.monotonic() + 60
                # Backfill is over when the node holds no IMAP connection and is idle again.
                while time.monotonic() < deadline:
                    await settle(node.pid, below=0.05, timeout=max(0.0, deadline - time.monotonic()))
                    if tcp_connections(node.pid, imap_port) == 0:
                        break
    return {
        "accounts": len(accounts),
        "wave": wave,
        "nodes": len(nodes),
        "seconds": round(time.monotonic() - started, 2),
        "bridge_cpu_s": round(sum(cpu_seconds(n.pid) for n in nodes) - cpu0, 2),
    }


# ============================================================================ the stack's names


@dataclass(frozen=True)
class Names:
    prefix: str
    relay_group: str

    @property
    def dovecot(self) -> str:
        return StreamNames(self.prefix).dovecot

    @property
    def index_group(self) -> str:
        return f"{self.relay_group}-index"

    def resume_log(self, account: str) -> str:
        return redis_keys.resume_log(self.prefix, account)


def names_of(stack: BenchStack) -> Names:
    env = stack.launcher.settings.base_env
    return Names(env.get("BRIDGE_STREAM_PREFIX", "mail"), env.get("BRIDGE_CONSUMER_GROUP", "bridge"))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def group_state(redis: aioredis.Redis, stream: str) -> dict[str, dict[str, int | None]]:
    """{group: {"lag", "pending"}} from XINFO GROUPS (lag is None when Redis cannot tell)."""
    infos: Any = await redis.xinfo_groups(stream)
    out: dict[str, dict[str, int | None]] = {}
    for info in infos:
        lag = info.get("lag")
        out[_text(info["name"])] = {"lag": None if lag is None else int(lag), "pending": int(info["pending"])}
    return out


async def wait_drained(
    redis: aioredis.Redis, stream: str, groups: Sequence[str], timeout: float
) -> tuple[bool, float, dict[str, dict[str, int | None]]]:
    """Wait until every group has read and acknowledged everything: (drained, seconds, last state)."""
    started = time.monotonic()
    while True:
        state = await group_state(redis, stream)
        if all(state.get(g, {}).get("lag") == 0 and state.get(g, {}).get("pending") == 0 for g in groups):
            return True, round(time.monotonic() - started, 3), state
        if time.monotonic() - started > timeout:
            return False, round(time.monotonic() - started, 3), state
        await asyncio.sleep(0.1)


async def skip_backlog(redis: aioredis.Redis, stream: str, groups: Sequence[str]) -> dict[str, int | None]:
    """Move the groups past everything not yet read (XGROUP SETID $), so a backlog left by a
    saturating run does not load the next measurement; returns how many entries each skipped."""
    state = await group_state(redis, stream)
    for group in groups:
        await redis.xgroup_setid(stream, group, "$")
    return {g: state.get(g, {}).get("lag") for g in groups}


# ============================================================================ metrics page


_METRIC = re.compile(r"^(mailbridge_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN)$")


async def scrape(http: aiohttp.ClientSession, *web_urls: str) -> dict[str, float]:
    """The bridge's /metrics as {"name{labels}": value}; with several nodes, their sums (the
    counters are what is read here)."""
    out: dict[str, float] = {}
    for web_url in web_urls:
        async with http.get(web_url + "/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            match = _METRIC.match(line)
            if match:
                name, labels, value = match.groups()
                key = f"{name}{{{labels}}}" if labels else name
                out[key] = out.get(key, 0.0) + float(value)
    return out


HEARD = "mailbridge_fanout_messages_total"  # events a node heard on its accounts' channels


def _relayed(metrics: dict[str, float]) -> dict[str, float]:
    prefix = 'mailbridge_events_relayed_total{event="'
    return {k[len(prefix) : -2]: v for k, v in metrics.items() if k.startswith(prefix)}


# ============================================================================ injection


class Injector:
    """Builds unique ingest events of one kind and XADDs them as the hook does, pipelined."""

    def __init__(self, redis: aioredis.Redis, stream: str, kind: str = "flags") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}")
        self.redis = redis
        self.stream = stream
        self.kind = kind
        self.run = secrets.token_hex(4)
        self.serial = itertools.count(1)
        self.injected = 0
        self._templates: dict[str, dict[str, Any]] = {}

    def _template(self, account: str) -> dict[str, Any]:
        template = self._templates.get(account)
        if template is None:
            event: Event
            if self.kind == "flags":
                event = FlagsSet(
                    key="k", ts=0, account=account, mailbox="INBOX", uidvalidity=1, uid=1, keywords=("$Bench",)
                )
            else:
                event = MailboxSubscribe(key="k", ts=0, account=account, mailbox="INBOX")
            template = self._templates[account] = codec.to_wire(event)
        return template

    def payload(self, account: str) -> bytes:
        n = next(self.serial)
        wire = dict(self._template(account))
        wire["key"] = f"bench:{self.run}:{n}"
        wire["ts"] = int(time.time() * 1000)
        if self.kind == "flags":
            wire["uid"] = n
        packed: bytes = msgpack.packb(wire, use_bin_type=True)
        return packed

    def check(self, account: str) -> None:
        """The hand-built entries are exactly what the codec writes (decoded back to the same event)."""
        event = codec.decode(self.payload(account))
        assert event.key.startswith(f"bench:{self.run}:"), event

    async def send(self, accounts: Sequence[str], count: int) -> None:
        """`count` events, round-robin over `accounts`, in pipelined batches."""
        left = count
        while left > 0:
            n = min(BATCH, left)
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(n):
                account = accounts[self.injected % len(accounts)]
                pipe.xadd(self.stream, {ENTRY_FIELD: self.payload(account)}, maxlen=STREAM_MAXLEN, approximate=True)
                self.injected += 1
            await pipe.execute()
            left -= n


@dataclass
class InjectionStats:
    injected: int
    seconds: float
    throttled_s: float

    @property
    def per_s(self) -> float:
        return self.injected / self.seconds if self.seconds else 0.0

    @property
    def unthrottled_per_s(self) -> float:
        busy = self.seconds - self.throttled_s
        return self.injected / busy if busy > 0 else 0.0


async def inject_for(
    injector: Injector,
    accounts: Sequence[str],
    seconds: float,
    *,
    rate: float | None = None,
    backlog: Callable[[], Awaitable[int | None]] | None = None,
    max_backlog: int | None = None,
) -> InjectionStats:
    """Inject for `seconds`: as fast as Redis takes them (rate None) or paced at `rate` events/s.
    With `max_backlog`, injection pauses while `backlog()` (the relay's lag) exceeds it, so a run
    that outpaces the relay keeps it saturated without piling up minutes of work."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    throttled = 0.0
    checked = 0.0
    first = injector.injected
    while (now := loop.time()) < deadline:
        if backlog is not None and max_backlog is not None and now - checked > 0.1:
            checked = now
            lag = await backlog()
            while lag is not None and lag > max_backlog and loop.time() < deadline:
                await asyncio.sleep(0.05)
                lag = await backlog()
                if lag is not None and lag <= max_backlog // 2:
                    break
            throttled += loop.time() - now
            if loop.time() >= deadline:
                break
        if rate is not None:
            due = int((loop.time() - started) * rate) - (injector.injected - first)
            if due <= 0:
                await asyncio.sleep(min(0.01, deadline - loop.time()))
                continue
            await injector.send(accounts, min(due, BATCH))
        else:
            await injector.send(accounts, BATCH)
    return InjectionStats(injector.injected - first, loop.time() - started, throttled)


def _tokens(stack: BenchStack, emails: Sequence[str], per_user: int) -> list[str]:
    out: list[str] = []
    for email in emails:
        token = stack.token(email)
        out.extend([token] * per_user)
    return out


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


# ============================================================================ 1. relay ceiling


async def relay_ceiling(
    stack: BenchStack,
    sockets: int = 1000,
    users: int = 100,
    seconds: float = 10.0,
    *,
    kind: str = "flags",
    processes: int = 2,
    connect_concurrency: int = 100,
    rate: float | None = None,
    max_backlog: int = 5_000,
    drain_timeout: float = 30.0,
    profile_dir: Path | None = None,
    nodes: Sequence[Node] | None = None,
    by_user: bool = False,
) -> dict[str, Any]:
    """Events/s the bridge relays to `sockets` sockets of `users` users (sockets split evenly),
    with events injected for `seconds` as fast as Redis takes them (or at `rate`/s).

    With several `nodes` (default: the stack's own bridge alone), socket i connects to node
    i mod n, so each user's sockets are spread over the nodes as a round-robin balancer would;
    every event then reaches every node with a socket of its user (on its channel), and each
    emits to its own sockets. With `by_user`, every socket of user u connects to node u mod n, as a
    balancer that routes by account would: each node then hears only its users' events (the
    result's `nodes_heard` counts them, and `nodes_cpu_s` each node's CPU over the same time).

    Steady state is the window from `warmup` after the first injection to the end of injection,
    measured from the socket workers' one-second counts. The relay's and the indexer's lag are read
    at the end of injection; then up to `drain_timeout` seconds are given to drain, and what is left
    is skipped (XGROUP SETID $) so the next measurement starts clean. The cores each group of the
    stack used are measured over the steady-state window; with `profile_dir`, each bridge process
    is profiled over it too (raw files there)."""
    names = names_of(stack)
    nodes = list(nodes or stack.nodes()[:1])
    urls = [n.url for n in nodes]
    bridge = nodes[0].pid
    accounts = [u.email for u in stack.add_users(users, f"relay{secrets.token_hex(2)}-")]
    per_user = max(1, sockets // users)
    tokens = [t for email in accounts for t in [stack.token(email)] * per_user][:sockets]
    # Socket i connects to fleet_urls[i mod its length]: the tokens come grouped by user.
    fleet_urls = [urls[(i // per_user) % len(urls)] for i in range(len(tokens))] if by_user else urls
    relay_event = KINDS[kind]
    warmup = min(2.0, seconds / 4)
    redis = aioredis.Redis.from_url(stack.info.redis_url)
    http = aiohttp.ClientSession()
    try:
        # The accounts' first connections (backfill: IMAP and the store) before anything is timed.
        warmed = await warm_accounts(stack, accounts, processes=processes, nodes=nodes)
        fleet_started = time.monotonic()
        async with SocketFleet(
            fleet_urls, tokens, processes=processes, mode="count", connect_concurrency=connect_concurrency
        ) as fleet:
            connect_wall_s = time.monotonic() - fleet_started
            settled_s = await settle_all([n.pid for n in nodes], below=0.05, timeout=60, plateau=True)
            injector = Injector(redis, names.dovecot, kind)
            injector.check(accounts[0])

            async def relay_lag() -> int | None:
                return (await group_state(redis, names.dovecot)).get(names.relay_group, {}).get("lag")

            injected0 = injector.injected

            async def backlog() -> int | None:
                # The relay's lag, or, when the nodes fall behind it, the events injected that the
                # sockets have not had yet (on their way over the channels or in socket buffers;
                # the workers report counts once a second, so this reads up to a second high).
                lag = await relay_lag()
                shown = fleet.counts.get(relay_event, 0) / per_user
                undelivered = int(injector.injected - injected0 - shown)
                return max(lag or 0, undelivered) if lag is not None else undelivered

            machine_before = await machine_load()
            redis0: Any = await redis.info("memory")
            keys0 = int(await redis.dbsize())
            window_meter = StepWindow(stack, "relay", profile_dir=profile_dir)
            metrics0 = await scrape(http, *urls)
            heard0 = [(await scrape(http, u)).get(HEARD, 0.0) for u in urls]
            node_cpu0 = [cpu_seconds(n.pid) for n in nodes]
            t_start = time.time()
            rss_before = rss_bytes(bridge)
            with RssSampler(bridge) as rss:

                async def measure_window() -> None:
                    await asyncio.sleep(warmup)
                    await window_meter.start()

                window_task = asyncio.create_task(measure_window())
                stats = await inject_for(
                    injector, accounts, seconds, rate=rate, backlog=backlog, max_backlog=max_backlog
                )
                t_end = time.time()
                await window_task
                await window_meter.stop()
                cpu = window_meter.cpu_cores
                metrics1 = await scrape(http, *urls)
                node_cpu1 = [cpu_seconds(n.pid) for n in nodes]
                heard1 = [(await scrape(http, u)).get(HEARD, 0.0) for u in urls]
                lag_end = await group_state(redis, names.dovecot)
                # One more summary from every worker so the window's last second is counted.
                await asyncio.sleep(1.2)
                drained, drain_s, lag_after = await wait_drained(
                    redis, names.dovecot, [names.relay_group], drain_timeout
                )
            redis1: Any = await redis.info("memory")
            keys1 = int(await redis.dbsize())
            relayed_total = int(_relayed(await scrape(http, *urls)).get(relay_event, 0.0))
            relayed_total -= int(_relayed(metrics0).get(relay_event, 0.0))
            skipped = await skip_backlog(redis, names.dovecot, [names.relay_group, names.index_group])
            window = (t_start + warmup, t_end)
            deliveries = {name: round(fleet.rate_between(*window, name=name), 1) for name in sorted(fleet.counts)}
            deliveries.pop("resume_point", None)
            total = round(sum(deliveries.values()), 1)
            window_s = t_end - t_start - warmup
            relayed0, relayed1 = _relayed(metrics0), _relayed(metrics1)
            bridge_rates = {
                name: round((relayed1[name] - relayed0.get(name, 0.0)) / (t_end - t_start), 1)
                for name in sorted(relayed1)
                if relayed1[name] - relayed0.get(name, 0.0) > 0
            }
            lat_n = metrics1.get("mailbridge_relay_latency_seconds_count", 0.0) - metrics0.get(
                "mailbridge_relay_latency_seconds_count", 0.0
            )
            lat_s = metrics1.get("mailbridge_relay_latency_seconds_sum", 0.0) - metrics0.get(
                "mailbridge_relay_latency_seconds_sum", 0.0
            )
            relay_lag_end = lag_end.get(names.relay_group, {})
            result: dict[str, Any] = {
                "sockets": len(tokens),
                "connected": fleet.connected,
                "users": users,
                "sockets_per_user": per_user,
                "kind": kind,
                "seconds": seconds,
                "warmup_s": warmup,
                "window_s": round(window_s, 2),
                "processes": fleet.processes,
                "nodes": len(nodes),
                "connect_s": round(fleet.connect_s, 3),
                "connect_wall_s": round(connect_wall_s, 3),
                "connect_retried": fleet.retried,
                "settle_s": settled_s,
                "warm": warmed,
                "injected": stats.injected,
                "injected_per_s": round(stats.per_s, 1),
                "inject_unthrottled_per_s": round(stats.unthrottled_per_s, 1),
                "inject_throttled_s": round(stats.throttled_s, 2),
                "inject_rate_target": rate,
                "max_backlog": max_backlog,
                "socket_deliveries_per_s": {"total": total, **deliveries},
                # Each ingest event reaches every socket of its user: divide the fan-out back out.
                "events_relayed_per_s": round(deliveries.get(relay_event, 0.0) / per_user, 1),
                "browser_events_per_s": round(total / per_user, 1),
                "bridge_emits_per_s": bridge_rates,
                "relay_latency_mean_s": round(lat_s / lat_n, 4) if lat_n else None,
                **window_meter.summary(),
                # Bridge CPU per relayed ingest event (all its fan-out and the indexer's share
                # included): steadier than events/s when something else competes for the cores.
                "bridge_cpu_ms_per_event": round(
                    1000 * cpu.get("bridge", 0.0) / (deliveries.get(relay_event, 0.0) / per_user), 3
                )
                if deliveries.get(relay_event)
                else None,
                "machine_cores_busy_before": machine_before,
                "machine_cores": os.cpu_count(),
                # The first node's (the stack's own bridge); the others' at the end.
                "bridge_rss_bytes": {"before": rss_before, "peak": rss.peak, "after": rss_bytes(bridge)},
                "nodes_rss_bytes": {n.name: rss_bytes(n.pid) for n in nodes},
                # Redis grows by the ingest entries, the resume-log entries and one dedupe key per
                # event (`<prefix>:relayed:<key>`, kept 24 h).
                "redis": {
                    "used_memory_delta_bytes": int(redis1["used_memory"]) - int(redis0["used_memory"]),
                    "keys_delta": keys1 - keys0,
                    "relayed_events": relayed_total,
                    "injected_events": stats.injected,
                },
                "lag_at_end": lag_end,
                "kept_up": relay_lag_end.get("lag") is not None
                and int(relay_lag_end.get("lag") or 0) + int(relay_lag_end.get("pending") or 0) <= 256,
                "relay_drained": drained,
                "relay_drain_s": drain_s,
                "lag_after_drain": lag_after,
                "skipped_backlog": skipped,
                "received_total": dict(fleet.counts),
                # Flat names the report reads.
                "deliveries_per_s": total,
                "events_per_s": round(deliveries.get(relay_event, 0.0) / per_user, 1),
                "fanout": per_user,
                "by_user": by_user,
                # From the first scrape to the last, per node: the events it heard on its
                # accounts' channels, its CPU seconds, and the events published meanwhile (each
                # relayed event is published once, on its account's channel).
                "nodes_heard": [int(b - a) for a, b in zip(heard0, heard1, strict=True)],
                "nodes_cpu_s": [round(b - a, 3) for a, b in zip(node_cpu0, node_cpu1, strict=True)],
                "published": int(sum(relayed1.values()) - sum(relayed0.values())),
            }
        result["dropped_sockets"] = fleet.dropped
        return result
    finally:
        await http.close()
        await redis.aclose()


# ============================================================================ 2. socket memory


async def socket_memory(
    stack: BenchStack,
    counts: Sequence[int] = (1000, 10000),
    *,
    sockets_per_user: int = SOCKETS_PER_USER,
    processes: int = 2,
    connect_concurrency: int = 100,
    compress: bool = False,
    warm: bool = True,
) -> dict[str, Any]:
    """Bridge VmRSS with no sockets, then with each of `counts` idle sockets (`sockets_per_user`
    per user; one user set of max(counts)/sockets_per_user, shared by every count): the per-socket
    delta, the connect time and CPU, the idle CPU. Each fleet is closed after it is measured.

    With `warm`, every account has connected once before (see warm_accounts), so the numbers are
    the sockets' own; the first connections' cost is reported apart, under "warm"."""
    bridge = stack.pid("bridge")
    own_soft, own_hard = raise_fd_limit()
    bridge_soft, bridge_hard = fd_limits(bridge)
    imap_port = int(stack.info.imap["port"])
    n_users = -(-max(counts) // sockets_per_user)
    accounts = [u.email for u in stack.add_users(n_users, f"mem{secrets.token_hex(2)}-")]
    tokens_all = _tokens(stack, accounts, sockets_per_user)
    http = aiohttp.ClientSession()
    result: dict[str, Any] = {
        "sockets_per_user": sockets_per_user,
        "compress": compress,
        "processes": processes,
        "connect_concurrency": connect_concurrency,
        "fd_limits": {
            "bridge": {"soft": bridge_soft, "hard": bridge_hard},
            "orchestrator": {"soft": own_soft, "hard": own_hard},
        },
        "runs": [],
    }
    try:
        if warm:
            result["warm"] = await warm_accounts(stack, accounts, processes=processes)
        result["settle_s"] = await settle(bridge)
        result["baseline_rss_bytes"] = rss_bytes(bridge)
        result["baseline_fds"] = open_fds(bridge)
        result["baseline_idle_cpu"] = await idle_cpu(bridge)
        result["machine_cores_busy_before"] = await machine_load()
        for count in counts:
            run: dict[str, Any] = {"sockets": count, "users": -(-count // sockets_per_user)}
            needed = result["baseline_fds"] + count
            if needed > bridge_soft:
                run["skipped"] = (
                    f"needs about {needed} descriptors in the bridge, whose RLIMIT_NOFILE is {bridge_soft}"
                    f" (soft) / {bridge_hard} (hard), inherited from the shell that started the stack"
                )
                result["runs"].append(run)
                continue
            await settle(bridge)
            run["rss_before_bytes"] = before = rss_bytes(bridge)
            cpu0 = cpu_seconds(bridge)
            meter = CpuMeter(stack.cpu_roots())
            meter.start()
            started = time.monotonic()
            async with SocketFleet(
                stack.info.web_url,
                tokens_all[:count],
                processes=processes,
                mode="count",
                connect_concurrency=connect_concurrency,
                compress=compress,
            ) as fleet:
                run["connect_wall_s"] = round(time.monotonic() - started, 3)
                run["cpu_cores_connecting"] = meter.stop()
                run["connect_s"] = round(fleet.connect_s, 3)
                run["connected"] = fleet.connected
                run["connect_errors"] = fleet.errors
                run["connect_retried"] = fleet.retried
                run["bridge_cpu_connect_s"] = round(cpu_seconds(bridge) - cpu0, 3)
                run["bridge_cpu_per_connect_ms"] = round(
                    1000 * run["bridge_cpu_connect_s"] / max(1, fleet.connected), 3
                )
                run["settle_s"] = await settle(bridge, timeout=60, plateau=True)
                run["rss_with_bytes"] = with_sockets = rss_bytes(bridge)
                run["idle_cpu"] = await idle_cpu(bridge)
                run["open_fds"] = open_fds(bridge)
                metrics = await scrape(http, stack.info.web_url)
                run["bridge_sockets_gauge"] = metrics.get("mailbridge_sockets_connected")
                run["per_socket_bytes"] = round((with_sockets - before) / max(1, fleet.connected))
                run["worker_rss_bytes"] = sum(rss_bytes(p) for p in fleet.pids)
                run["imap_connections"] = tcp_connections(bridge, imap_port)
            await settle(bridge)
            run["rss_after_close_bytes"] = rss_bytes(bridge)
            run["open_fds_after_close"] = open_fds(bridge)
            run["dropped_sockets"] = fleet.dropped
            result["runs"].append(run)
        measured = [r for r in result["runs"] if "rss_with_bytes" in r]
        # Flat rows the report reads: sockets, RSS with them, added over no sockets, per socket.
        result["rows"] = [
            {
                "n": r["sockets"],
                "rss_bytes": r["rss_with_bytes"],
                "rss_delta_bytes": r["rss_with_bytes"] - result["baseline_rss_bytes"],
                "per_socket_bytes": r["per_socket_bytes"],
                "connect_s": r["connect_s"],
            }
            for r in measured
        ]
        result["imap_connections_while_connected"] = max((r["imap_connections"] for r in measured), default=0)
        return result
    finally:
        await http.close()


# ============================================================================ 3. resume replay


async def resume_replay(
    stack: BenchStack, events: int = 1000, *, repeats: int = 5, kind: str = "flags", timeout: float = 60.0
) -> dict[str, Any]:
    """Reconnect with lastEventId after `events` events were missed: time from starting the connect
    to the first and to the last replayed event, `repeats` times.

    The replayed entries are everything in the account's resume log after the socket's last id
    (the `events` relay events, and whatever the indexer logged for them, e.g. `unread_count` for a
    \\Seen change); both groups are drained before the reconnect, so the log is complete."""
    names = names_of(stack)
    relay_event = KINDS[kind]
    record = ("resume_point", "resync", "email_flags", "unread_count", "mailbox_updated")
    account = stack.add_users(1, f"resume{secrets.token_hex(2)}-")[0].email
    token = stack.token(account)
    redis = aioredis.Redis.from_url(stack.info.redis_url)
    log_key = names.resume_log(account)
    runs: list[dict[str, Any]] = []
    try:
        injector = Injector(redis, names.dovecot, kind)
        injector.check(account)
        # A first connection starts the account's backfill (IMAP, which may create mailboxes and
        # so log events of its own): let it finish before anything is timed.
        async with SocketFleet(stack.info.web_url, [token], processes=1, record=record) as warm:
            await warm.wait_for(lambda: bool(warm.received), 10)
            await settle(stack.pid("bridge"))
        machine_before = await machine_load()
        for _ in range(repeats):
            async with SocketFleet(stack.info.web_url, [token], processes=1, record=record) as first:

                def connected(fleet: SocketFleet = first) -> bool:
                    return bool(fleet.received)

                await first.wait_for(connected, 10)
                await asyncio.sleep(0.2)  # anything else already on its way
                since = first.received[-1][1]
            await injector.send([account], events)
            drained, drain_s, _state = await wait_drained(
                redis, names.dovecot, [names.relay_group, names.index_group], timeout
            )
            entries: Any = await redis.xrange(log_key, min=f"({since}", max="+")
            expected = [_text(entry_id) for entry_id, _fields in entries]
            kinds = [_text(fields[b"n"]) for _entry_id, fields in entries]
            wanted = set(expected)
            spawn = time.time()
            async with SocketFleet(
                stack.info.web_url, [token], processes=1, record=record, last_event_ids=[since]
            ) as second:

                def complete(fleet: SocketFleet = second, wanted: set[str] = wanted) -> bool:
                    return sum(1 for r in fleet.received if r[1] in wanted) >= len(wanted)

                got_all = await second.wait_for(complete, timeout)
                t0 = second.connect_started
                replayed = [r for r in second.received if r[1] in wanted]
                ids = [r[1] for r in replayed]
                times = [r[2] for r in replayed]
                flag_times = [r[2] for r in replayed if r[0] == relay_event]
                runs.append(
                    {
                        "drained": drained,
                        "drain_s": drain_s,
                        "log_entries_after_id": len(expected),
                        "relay_events_after_id": kinds.count(relay_event),
                        "replayed": len(replayed),
                        "complete": got_all,
                        "in_order": ids == expected[: len(ids)],
                        "duplicates": len(ids) - len(set(ids)),
                        "resync": second.counts.get("resync", 0),
                        "connect_s": round(second.connect_s, 4),
                        "spawn_to_connect_s": round(t0 - spawn, 4),
                        "time_to_first_s": round(min(times) - t0, 4) if times else None,
                        "time_to_last_s": round(max(times) - t0, 4) if times else None,
                        "time_to_last_relay_event_s": round(max(flag_times) - t0, 4) if flag_times else None,
                    }
                )
        firsts = [r["time_to_first_s"] for r in runs if r["time_to_first_s"] is not None]
        lasts = [r["time_to_last_s"] for r in runs if r["time_to_last_s"] is not None]
        lasts_relay = [r["time_to_last_relay_event_s"] for r in runs if r["time_to_last_relay_event_s"] is not None]
        return {
            "events": events,
            "kind": kind,
            "repeats": repeats,
            "time_to_first_s": _summary(firsts) if firsts else None,
            "time_to_last_s": _summary(lasts) if lasts else None,
            "time_to_last_relay_event_s": _summary(lasts_relay) if lasts_relay else None,
            "replay_per_s_median": round(statistics.median(r["replayed"] / r["time_to_last_s"] for r in runs))
            if lasts and all(r["time_to_last_s"] for r in runs)
            else None,
            "machine_cores_busy_before": machine_before,
            "all_complete_in_order": all(r["complete"] and r["in_order"] and not r["duplicates"] for r in runs),
            "runs": runs,
            # Flat names the report reads: connect start to the last replayed event, in ms.
            "median_ms": round(statistics.median(lasts) * 1000, 1) if lasts else None,
            "min_ms": round(min(lasts) * 1000, 1) if lasts else None,
            "max_ms": round(max(lasts) * 1000, 1) if lasts else None,
        }
    finally:
        await redis.aclose()
