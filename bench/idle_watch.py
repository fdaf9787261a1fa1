"""The IMAP IDLE baseline: what an "email monitor daemon" costs and how fast it hears of new mail.

Such a daemon holds one IMAP connection per watched mailbox, each in IDLE (RFC 2177), and learns of
a new mail from an untagged `* N EXISTS`. `IdleFleet` is that daemon, reduced to the protocol: a
hand-written asyncio IMAP client (LOGIN with the user's own password, SELECT INBOX, IDLE) per user.
`idle_cost` counts what N such connections cost Dovecot (one `imap` process each, their memory,
the TCP connections), `idle_latency_probe` times delivery-to-EXISTS.

Dovecot is measured as Debian ships it: the stack's template sets none of the IDLE settings.
- `imap_idle_notify_interval` (default 2 mins): how often an idling client gets `* OK Still here`.
- `mailbox_idle_check_interval` (default 30 secs): the fallback stat() poll of an idling mailbox,
  for file systems without inotify; on a local disk inotify wakes the process at once.
- After an inotify wake-up Dovecot waits a fixed 500 ms before it syncs the mailbox and sends
  EXISTS: `NOTIFY_DELAY_MSECS` in src/lib-storage/mailbox-watch.c, a compile-time constant, no
  setting. So an IDLE client hears of a delivery about half a second after it was committed.
- `imap_hibernate_timeout` (default 0, off): idling connections stay in their own `imap` process.

Linux limits inotify instances per user (`fs.inotify.max_user_instances`, 128 by default) and every
idling `imap` process takes one, all as the one mail uid. Past that Dovecot logs "Inotify instance
limit ... exceeded, disabling" and those connections learn of new mail only from the 30 s poll.
`idle_cost` counts them (`without_inotify`); the stack does not change the kernel setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import smtplib
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypedDict

from bench.cpu import parse_stat, read_procs, stat_fields
from bench.stack import BenchStack

REIDLE_AFTER_S = 29 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_COUNT = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE)\b", re.IGNORECASE)


class Account(Protocol):
    @property
    def email(self) -> str: ...

    @property
    def password(self) -> str: ...


class IdleFleetError(RuntimeError):
    """Not every IDLE connection could be opened; the message says how many and why."""


class ImapError(Exception):
    """The server refused a command or ended the session."""


def _quoted(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("IMAP quoted strings cannot carry CR, LF or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One server response without its CRLF, literals (`{n}` + n octets) included; b"" at EOF."""
    line = await reader.readline()
    if not line.endswith(b"\n"):
        return b""
    parts = [line.rstrip(b"\r\n")]
    while (match := _LITERAL.search(parts[-1])) is not None:
        parts.append(await reader.readexactly(int(match.group(1))))
        more = await reader.readline()
        if not more.endswith(b"\n"):
            return b""
        parts.append(more.rstrip(b"\r\n"))
    return b"".join(parts)


# Connection states once LOGIN and SELECT are done.
STARTING = "starting"  # IDLE sent, waiting for the continuation
IDLING = "idling"  # "+ idling" received
RENEWING = "renewing"  # DONE sent to re-issue IDLE, waiting for IDLE's tagged completion
LOGGING_OUT = "logging-out"


@dataclass(eq=False)
class _Conn:
    account: Account
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    exists: int | None = None  # messages in INBOX as last reported by the server
    watching: bool = False  # SELECT done once: a higher EXISTS from now on is an arrival
    state: str = STARTING
    tag_number: int = 0
    idle_tag: bytes = b""
    logout_tag: bytes = b""
    closing: bool = False
    renew: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    local_port: int = 0

    def tag(self) -> bytes:
        self.tag_number += 1
        return b"i%d" % self.tag_number

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)


class IdleFleet:
    """One IMAP connection per user, each SELECTed on INBOX and in IDLE, recording new mail.

    `async with IdleFleet(host, port, users) as fleet:` returns once every connection got
    `+ idling` (or raises `IdleFleetError`). Each `* N EXISTS` with N above the last count is
    appended to `arrivals` as `(email, time.time(), N)`. IDLE is re-issued (DONE, IDLE) every
    `reidle_after` seconds and whenever the server ends it; a dropped connection is opened again
    (counted in `reconnects`; a count that grew meanwhile is an arrival at reconnection time).
    """

    def __init__(
        self,
        host: str,
        port: int,
        users: Sequence[Account],
        *,
        concurrency: int = 100,
        attempts: int = 3,
        timeout: float = 20.0,
        reidle_after: float = REIDLE_AFTER_S,
    ) -> None:
        self.host = host
        self.port = port
        self.users = list(users)
        self.concurrency = concurrency
        self.attempts = attempts
        self.timeout = timeout
        self.reidle_after = reidle_after
        self.arrivals: list[tuple[str, float, int]] = []
        self.reconnects = 0
        self.errors: list[str] = []  # problems after the fleet was up (failed reconnects)
        self.open_seconds = 0.0
        self._conns: list[_Conn] = []
        self._arrived = asyncio.Event()
        self._closing = False

    # -- public

    @property
    def exists(self) -> dict[str, int]:
        """Each user's INBOX message count as the server last reported it."""
        return {c.account.email: c.exists or 0 for c in self._conns}

    @property
    def local_ports(self) -> set[int]:
        """The client-side TCP ports of the open connections (to find their server processes)."""
        return {c.local_port for c in self._conns if c.local_port}

    async def wait_for(self, count: int, timeout: float) -> list[tuple[str, float, int]]:
        """Wait until `arrivals` holds at least `count` entries; TimeoutError (saying how many) if not."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.arrivals) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.arrivals)} of {count} IDLE arrivals within {timeout:.1f} s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return list(self.arrivals)

    async def __aenter__(self) -> IdleFleet:
        started = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)
        conns = [_Conn(account) for account in self.users]

        async def bounded(conn: _Conn) -> None:
            async with gate:
                await self._open(conn)

        try:
            results = await asyncio.gather(*(bounded(c) for c in conns), return_exceptions=True)
        except BaseException:  # cancelled: drop what was opened, without waiting for LOGOUT
            for conn in conns:
                if conn.task is not None:
                    conn.task.cancel()
                _abort(conn)
            raise
        failures = [(c, r) for c, r in zip(conns, results, strict=True) if isinstance(r, BaseException)]
        self._conns = [c for c, r in zip(conns, results, strict=True) if not isinstance(r, BaseException)]
        if failures:
            await self._close_all()
            reasons = Counter(_describe(r) for _c, r in failures)
            listed = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(5))
            raise IdleFleetError(
                f"{len(self._conns)} of {len(conns)} IDLE connections to {self.host}:{self.port} opened, "
                f"{len(failures)} failed after {self.attempts} attempts each: {listed}"
            )
        self.open_seconds = time.monotonic() - started
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close_all()

    # -- opening

    async def _open(self, conn: _Conn) -> None:
        """Connect, LOGIN, SELECT INBOX, IDLE; retried with back-off. Starts the watch task."""
        last: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            try:
                await asyncio.wait_for(self._handshake(conn), self.timeout)
            except (OSError, EOFError, ImapError, TimeoutError, asyncio.IncompleteReadError) as exc:
                last = exc
                _abort(conn)
                continue
            conn.task = asyncio.create_task(self._watch(conn), name=f"idle {conn.account.email}")
            return
        assert last is not None
        raise last

    async def _handshake(self, conn: _Conn) -> None:
        conn.reader, conn.writer = await asyncio.open_connection(self.host, self.port)
        conn.local_port = int(conn.writer.get_extra_info("sockname")[1])
        greeting = await _read_response(conn.reader)
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting {greeting[:80]!r}" if greeting else "closed before the greeting")
        await self._command(conn, f"LOGIN {_quoted(conn.account.email)} {_quoted(conn.account.password)}")
        await self._command(conn, "SELECT INBOX")
        if conn.exists is None:
            raise ImapError("SELECT INBOX gave no EXISTS count")
        conn.watching = True
        conn.closing = False
        self._send_idle(conn)
        while conn.state == STARTING:
            line = await _read_response(conn.reader)
            if not line:
                raise EOFError("connection closed while starting IDLE")
            if line.startswith(b"+"):
                conn.state = IDLING
            elif line.startswith(b"*"):
                self._untagged(conn, line)
            else:
                raise ImapError(f"IDLE refused: {line[:120]!r}")
        self._schedule_renew(conn)

    async def _command(self, conn: _Conn, command: str) -> None:
        assert conn.reader is not None and conn.writer is not None
        tag = conn.tag()
        verb = command.split(maxsplit=1)[0]
        conn.send(tag + b" " + command.encode() + b"\r\n")
        await conn.writer.drain()
        while True:
            line = await _read_response(conn.reader)
            if not line:
                raise EOFError(f"connection closed during {verb}")
            if line.startswith(b"*"):
                self._untagged(conn, line)
            elif line.startswith(tag + b" "):
                status = line[len(tag) + 1 :]
                if not status.upper().startswith(b"OK"):
                    raise ImapError(f"{verb} refused: {status[:120].decode(errors='replace')}")
                return

    # -- idling

    def _send_idle(self, conn: _Conn) -> None:
        conn.idle_tag = conn.tag()
        conn.state = STARTING
        conn.send(conn.idle_tag + b" IDLE\r\n")

    def _schedule_renew(self, conn: _Conn) -> None:
        if conn.renew is not None:
            conn.renew.cancel()
        conn.renew = asyncio.get_running_loop().call_later(self.reidle_after, self._renew, conn)

    def _renew(self, conn: _Conn) -> None:
        conn.renew = None
        if conn.state == IDLING and not conn.closing:
            conn.state = RENEWING
            conn.send(b"DONE\r\n")

    def _untagged(self, conn: _Conn, line: bytes) -> None:
        match = _COUNT.match(line)
        if match is None:
            return  # "* OK Still here", FETCH flag updates, RECENT, BYE (EOF follows)
        number = int(match.group(1))
        if match.group(2).upper() == b"EXPUNGE":
            conn.exists = max(0, (conn.exists or 0) - 1)
            return
        if conn.watching and conn.exists is not None and number > conn.exists:
            self.arrivals.append((conn.account.email, time.time(), number))
            self._arrived.set()
        conn.exists = number

    async def _watch(self, conn: _Conn) -> None:
        """Read the server until LOGOUT completes; re-IDLE when IDLE ends, reconnect on a drop."""
        while True:
            assert conn.reader is not None
            try:
                line = await _read_response(conn.reader)
            except (OSError, asyncio.IncompleteReadError):
                line = b""
            if not line:
                if conn.closing or self._closing:
                    return
                if not await self._reconnect(conn):
                    return
                continue
            if line.startswith(b"*"):
                self._untagged(conn, line)
            elif line.startswith(b"+"):
                if conn.closing:
                    conn.send(b"DONE\r\n" + conn.logout_tag + b" LOGOUT\r\n")
                    conn.state = LOGGING_OUT
                else:
                    conn.state = IDLING
                    self._schedule_renew(conn)
            elif conn.logout_tag and line.startswith(conn.logout_tag + b" "):
                return
            elif line.startswith(conn.idle_tag + b" ") and not conn.closing:
                if line[len(conn.idle_tag) + 1 :].upper().startswith(b"OK"):
                    self._send_idle(conn)  # our DONE, or the server ended IDLE: idle again
                else:
                    self.errors.append(f"{conn.account.email}: IDLE ended with {line[:120]!r}")
                    if not await self._reconnect(conn):
                        return

    async def _reconnect(self, conn: _Conn) -> bool:
        _abort(conn)
        if conn.renew is not None:
            conn.renew.cancel()
        self.reconnects += 1
        reason = "no attempt"
        for attempt in range(self.attempts):
            await asyncio.sleep(0.2 * 2**attempt)
            try:
                await asyncio.wait_for(self._handshake(conn), self.timeout)
                return True
            except (OSError, EOFError, ImapError, TimeoutError, asyncio.IncompleteReadError) as exc:
                _abort(conn)
                reason = _describe(exc)
        self.errors.append(f"{conn.account.email}: connection lost, reconnect failed: {reason}")
        return False

    # -- closing

    async def _close_all(self) -> None:
        self._closing = True
        gate = asyncio.Semaphore(max(self.concurrency, 1))

        async def bounded(conn: _Conn) -> None:
            async with gate:
                await self._close(conn)

        await asyncio.gather(*(bounded(c) for c in self._conns), return_exceptions=True)

    async def _close(self, conn: _Conn) -> None:
        """DONE, LOGOUT, wait for the tagged OK (bounded), close the socket."""
        if conn.renew is not None:
            conn.renew.cancel()
        conn.closing = True
        conn.logout_tag = conn.tag()
        try:
            if conn.writer is None:
                pass  # lost, and the reconnect failed
            elif conn.state == IDLING:
                conn.send(b"DONE\r\n" + conn.logout_tag + b" LOGOUT\r\n")
                conn.state = LOGGING_OUT
            elif conn.state == RENEWING:
                conn.send(conn.logout_tag + b" LOGOUT\r\n")
                conn.state = LOGGING_OUT
            # STARTING: the watch task sends DONE + LOGOUT on the continuation
            if conn.task is not None:
                await asyncio.wait_for(asyncio.shield(conn.task), 5.0)
        except (OSError, TimeoutError):
            pass
        finally:
            if conn.task is not None and not conn.task.done():
                conn.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conn.task
            _abort(conn)


def _abort(conn: _Conn) -> None:
    if conn.writer is not None:
        conn.writer.close()
    conn.reader = conn.writer = None
    conn.exists = conn.exists if conn.watching else None
    conn.state = STARTING


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out (no greeting or no answer: Dovecot at a process or client limit?)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------- Dovecot's side (/proc)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    comm: str
    rss_bytes: int
    pss_bytes: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    socket_inodes: frozenset[int]


@dataclass(frozen=True)
class DovecotSnapshot:
    master_cpu_ticks: int
    children: list[ProcInfo]
    established: dict[int, int]  # server-side ESTABLISHED sockets on the IMAP port: inode -> peer port

    def named(self, comm: str) -> list[ProcInfo]:
        return [p for p in self.children if p.comm == comm]

    @property
    def cpu_ticks(self) -> int:
        """Dovecot's CPU so far: the master with its reaped children, plus the live children."""
        return self.master_cpu_ticks + sum(p.cpu_ticks for p in self.children)


def _kib(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def socket_inodes(pid: int) -> frozenset[int]:
    """The inodes of a process's sockets (from /proc/<pid>/fd), as /proc/net/tcp names them."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return frozenset(inodes)


def _established(port: int) -> dict[int, int]:
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                if cols[3] == "01" and local_port == port:  # 01 = TCP_ESTABLISHED
                    found[int(cols[9])] = int(cols[2].rsplit(":", 1)[1], 16)
    return found


def dovecot_snapshot(
    master_pid: int, imap_port: int, comms: tuple[str, ...] = ("imap", "imap-login")
) -> DovecotSnapshot:
    """The master's children (RSS, PSS, CPU; sockets of `comms`), and the IMAP port's connections."""
    master = parse_stat(master_pid, *stat_fields(master_pid))
    children: list[ProcInfo] = []
    for stat in read_procs().values():
        if stat.ppid != master_pid:
            continue
        try:
            pss = 0
            with contextlib.suppress(OSError):
                pss = _kib(Path(f"/proc/{stat.pid}/smaps_rollup"), "Pss:")
            children.append(
                ProcInfo(
                    pid=stat.pid,
                    comm=stat.comm,
                    rss_bytes=_kib(Path(f"/proc/{stat.pid}/status"), "VmRSS:"),
                    pss_bytes=pss,
                    cpu_ticks=stat.ticks,
                    socket_inodes=socket_inodes(stat.pid) if stat.comm in comms else frozenset(),
                )
            )
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return DovecotSnapshot(master.ticks, children, _established(imap_port))


# ---------------------------------------------------------------------------- B: cost


class IdleCost(TypedDict):
    connections: int  # IDLE connections asked for (all opened, or IdleFleetError)
    established: int  # ESTABLISHED TCP connections on Dovecot's IMAP port, server side
    imap_processes: int  # all `imap` children of Dovecot's master
    fleet_imap_processes: int  # the `imap` processes holding one of the fleet's sockets
    rss_total_bytes: int  # VmRSS summed over the fleet's imap processes
    rss_per_connection_bytes: int
    pss_total_bytes: int  # proportional set size: shared library pages split between processes
    pss_per_connection_bytes: int
    imap_login_processes: int
    imap_login_rss_bytes: int
    open_seconds: float  # time to connect, LOGIN, SELECT and IDLE all of them
    dovecot_cpu_seconds: float  # CPU Dovecot spent on that (all its processes)
    idle_dovecot_cpu_seconds: float  # CPU Dovecot spent during `idle_window` seconds of idling
    idle_window_seconds: float
    close_seconds: float  # from LOGOUT until the imap processes were gone
    without_inotify: int  # connections Dovecot put on the 30 s poll (inotify instance limit)
    inotify_max_user_instances: int  # the kernel limit behind it


INOTIFY_WARNING = "Inotify instance limit"


def inotify_max_user_instances() -> int:
    return int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _count_since(path: Path, offset: int, needle: str) -> int:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return sum(1 for line in log if needle.encode() in line)
    except OSError:
        return 0


async def _wait_quiet(master_pid: int, port: int, fleet_pids: set[int], timeout: float) -> DovecotSnapshot:
    """Until none of `fleet_pids` is alive, no imap-login is left and no fleet socket stays open."""
    deadline = time.monotonic() + timeout
    while True:
        snap = dovecot_snapshot(master_pid, port)
        alive = {p.pid for p in snap.named("imap")} & fleet_pids
        if (not alive and not snap.named("imap-login")) or time.monotonic() > deadline:
            return snap
        await asyncio.sleep(0.1)


async def idle_cost(
    stack: BenchStack,
    users: Sequence[Account],
    counts: Sequence[int] = (10, 100, 1000),
    *,
    concurrency: int = 100,
    idle_window: float = 5.0,
) -> dict[int, IdleCost]:
    """For each N: open N IDLE connections (users[:N]), measure Dovecot's side, close, wait."""
    host, port = str(stack.info.imap["host"]), int(stack.info.imap["port"])
    master = stack.pid("dovecot")
    ticks = os.sysconf("SC_CLK_TCK")
    dovecot_log = Path(stack.info.log_dir) / "dovecot.log"
    results: dict[int, IdleCost] = {}
    for n in counts:
        if n > len(users):
            raise ValueError(f"{n} IDLE connections need {n} users, got {len(users)}")
        before = await _wait_quiet(master, port, set(), 30.0)
        log_offset = _log_size(dovecot_log)
        async with IdleFleet(host, port, users[:n], concurrency=concurrency) as fleet:
            await asyncio.sleep(0.5)  # imap-login processes exit once they handed the socket over
            opened = await _wait_quiet(master, port, set(), 10.0)
            await asyncio.sleep(idle_window)
            snap = dovecot_snapshot(master, port)
            fleet_ports = fleet.local_ports
            fleet_inodes = {inode for inode, peer in snap.established.items() if peer in fleet_ports}
            ours = [p for p in snap.named("imap") if p.socket_inodes & fleet_inodes]
            closing = time.monotonic()
        after = await _wait_quiet(master, port, {p.pid for p in ours}, 60.0)
        gone = {p.pid for p in after.named("imap")}.isdisjoint(p.pid for p in ours)
        if not gone:
            raise RuntimeError(f"N={n}: imap processes still alive 60 s after LOGOUT")
        rss = sum(p.rss_bytes for p in ours)
        pss = sum(p.pss_bytes for p in ours)
        logins = snap.named("imap-login")
        results[n] = IdleCost(
            connections=n,
            established=len(fleet_inodes),
            imap_processes=len(snap.named("imap")),
            fleet_imap_processes=len(ours),
            rss_total_bytes=rss,
            rss_per_connection_bytes=rss // max(len(ours), 1),
            pss_total_bytes=pss,
            pss_per_connection_bytes=pss // max(len(ours), 1),
            imap_login_processes=len(logins),
            imap_login_rss_bytes=sum(p.rss_bytes for p in logins),
            open_seconds=round(fleet.open_seconds, 3),
            dovecot_cpu_seconds=round((opened.cpu_ticks - before.cpu_ticks) / ticks, 2),
            idle_dovecot_cpu_seconds=round((snap.cpu_ticks - opened.cpu_ticks) / ticks, 2),
            idle_window_seconds=idle_window,
            close_seconds=round(time.monotonic() - closing, 2),
            without_inotify=_count_since(dovecot_log, log_offset, INOTIFY_WARNING),
            inotify_max_user_instances=inotify_max_user_instances(),
        )
    return results


# ---------------------------------------------------------------------------- C: latency


def _lmtp_send(host: str, port: int, recipient: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "idle-probe@outside.test"
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="outside.test")
    message.set_content("IDLE latency probe.\n")
    with smtplib.LMTP(host, port, timeout=10) as lmtp:
        lmtp.send_message(message, to_addrs=[recipient])


async def lmtp_deliver(host: str, port: int, recipient: str, subject: str = "idle probe") -> None:
    """Deliver one small mail straight to Dovecot's LMTP (blocking smtplib, in a thread)."""
    await asyncio.to_thread(_lmtp_send, host, port, recipient, subject)


class IdleProbe(TypedDict):
    users: int
    deliver_to_exists_ms: list[float]  # LMTP 250 (mail committed) to `* N EXISTS`
    send_to_exists_ms: list[float]  # LMTP connect to `* N EXISTS`
    min_ms: float  # of deliver_to_exists
    median_ms: float
    max_ms: float


async def idle_latency_probe(stack: BenchStack, users: Sequence[Account], *, gap: float = 1.0) -> IdleProbe:
    """IdleFleet over 5 users; one LMTP delivery each, one after another; delivery-to-EXISTS times."""
    chosen = list(users[:5])
    host, port = str(stack.info.imap["host"]), int(stack.info.imap["port"])
    lmtp_host, lmtp_port = str(stack.info.lmtp["host"]), int(stack.info.lmtp["port"])
    delivered: list[float] = []
    sent: list[float] = []
    async with IdleFleet(host, port, chosen) as fleet:
        for index, user in enumerate(chosen):
            await asyncio.sleep(gap)  # no Dovecot notify timer of the previous mail still pending
            start = time.time()
            await lmtp_deliver(lmtp_host, lmtp_port, user.email, f"idle probe {index}")
            done = time.time()
            arrivals = await fleet.wait_for(index + 1, 10.0)
            email, seen, _count = arrivals[index]
            if email != user.email:
                raise RuntimeError(f"EXISTS for {email}, expected {user.email}")
            delivered.append(round((seen - done) * 1000, 1))
            sent.append(round((seen - start) * 1000, 1))
    return IdleProbe(
        users=len(chosen),
        deliver_to_exists_ms=delivered,
        send_to_exists_ms=sent,
        min_ms=min(delivered),
        median_ms=statistics.median(delivered),
        max_ms=max(delivered),
    )
