"""End-to-end latency under open-loop load, ours and IMAP IDLE's, for the same mails in one run.

For each mail we know: when it was due (the open-loop schedule; "SMTP send start"), when Dovecot
delivered it (the `ts` of the hook's MessageNew event, read back from the ingest stream), when each
of the recipient's sockets got `new_email`, and when the recipient's IDLE connection got the
`* N EXISTS` that covers it. Clocks: one machine, wall time everywhere.

Over the step's window (from the first mail's send to the last delivery seen, at the sockets and
at IDLE) the cores each group of the stack used are measured, and, for a chosen step, each bridge
process is profiled (bench/window.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.idle_watch import IdleFleet
from bench.postfix_log import step_delays
from bench.smtp_load import Plan, Sent, run_open_loop
from bench.socket_load import SocketFleet
from bench.stack import BenchStack, User
from bench.window import StepWindow
from bridge import codec
from bridge.events import MessageNew

DOVECOT_STREAM = "mail:dovecot"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (nearest rank), and the count."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1] * 1000

    return {"n": len(ordered), "p50": rank(50), "p95": rank(95), "p99": rank(99), "max": ordered[-1] * 1000}


@dataclass
class LatencyRun:
    rate: float
    sockets: int
    users: int
    mails: int
    delivered: int
    errors: int
    socket_deliveries: int
    socket_deliveries_expected: int
    smtp_to_socket: list[float] = field(default_factory=list)
    delivery_to_socket: list[float] = field(default_factory=list)
    smtp_to_idle: list[float] = field(default_factory=list)
    delivery_to_idle: list[float] = field(default_factory=list)
    idle_missing: int = 0
    window: dict[str, Any] = field(default_factory=dict)  # StepWindow.summary(): cores by group, profile

    def summary(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "sockets": self.sockets,
            "users": self.users,
            "mails": self.mails,
            "delivered": self.delivered,
            "errors": self.errors,
            "socket_deliveries": self.socket_deliveries,
            "socket_deliveries_expected": self.socket_deliveries_expected,
            "idle_missing": self.idle_missing,
            "smtp_to_socket": percentiles(self.smtp_to_socket),
            "delivery_to_socket": percentiles(self.delivery_to_socket),
            "smtp_to_idle": percentiles(self.smtp_to_idle),
            "delivery_to_idle": percentiles(self.delivery_to_idle),
            **self.window,
        }


async def deliveries(redis: aioredis.Redis, since_ms: int, message_ids: set[str]) -> dict[str, MessageNew]:
    """The hook's MessageNew events for these mails (by Message-ID), from the ingest stream."""
    found: dict[str, MessageNew] = {}
    cursor = f"{since_ms}-0"
    while True:
        entries: Any = await redis.xrange(DOVECOT_STREAM, min=cursor, count=2000)
        if not entries:
            return found
        for _entry_id, fields in entries:
            event = codec.decode(fields[b"e"])
            if isinstance(event, MessageNew) and event.message_id.strip() in message_ids:
                found.setdefault(event.message_id.strip(), event)
        cursor = "(" + (entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0])


async def latency_run(
    stack: BenchStack,
    users: list[User],
    *,
    rate: float,
    seconds: float,
    sockets_per_user: int,
    tag: str,
    profile_dir: Path | None = None,
) -> LatencyRun:
    """One open-loop run at `rate`, watched at once by sockets (ours) and one IDLE per mailbox (theirs);
    with `profile_dir`, the bridge's processes are profiled over the step (raw files there)."""
    tokens = [stack.token(u.email) for u in users for _ in range(sockets_per_user)]
    owner = [u.email for u in users for _ in range(sockets_per_user)]
    redis = aioredis.Redis.from_url(stack.info.redis_url)
    try:
        async with (
            SocketFleet(stack.info.web_url, tokens, processes=2, record=("new_email",)) as fleet,
            IdleFleet(stack.info.imap["host"], stack.info.imap["port"], users) as idle,
        ):
            since_ms = int(time.time() * 1000) - 1000
            initial = dict(idle.exists)  # each INBOX's count before this run's mails
            plan = Plan(rate=rate, seconds=seconds, recipients=[u.email for u in users], tag=tag)
            step_start = time.time()
            async with StepWindow(stack, tag, profile_dir=profile_dir) as window:
                mails = await asyncio.to_thread(run_open_loop, stack.info.smtp["host"], stack.info.smtp["port"], plan)
                ok = [m for m in mails if not m.error]
                # The fleet is this run's own: every new_email it counts is one of these mails.
                expected = len(ok) * sockets_per_user
                await fleet.wait_for(lambda: fleet.counts.get("new_email", 0) >= expected, 60)
                await idle_caught_up(idle, initial, ok)
            step_end = time.time()
            delivered = await deliveries(redis, since_ms, {m.message_id for m in ok})
    finally:
        await redis.aclose()
    run = _analyse(
        rate,
        sockets_per_user,
        users=users,
        mails=mails,
        delivered=delivered,
        fleet=fleet,
        idle=idle,
        initial=initial,
        owner=owner,
    )
    run.window = {
        **window.summary(),
        "postfix_delays": step_delays(stack.state / "log" / "postfix.log", step_start, step_end),
    }
    return run


async def idle_caught_up(idle: IdleFleet, initial: dict[str, int], mails: list[Sent], timeout: float = 40) -> None:
    """IDLE coalesces: mails delivered within Dovecot's notify delay share one EXISTS. Wait until
    each mailbox's count covers its mails (what is still missing then is reported)."""
    wanted: dict[str, int] = defaultdict(int)
    for mail in mails:
        wanted[mail.recipient] += 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = idle.exists
        if all(counts.get(email, 0) >= initial.get(email, 0) + n for email, n in wanted.items()):
            return
        await asyncio.sleep(0.1)


def _analyse(
    rate: float,
    sockets_per_user: int,
    *,
    users: list[User],
    mails: list[Sent],
    delivered: dict[str, MessageNew],
    fleet: SocketFleet,
    idle: IdleFleet,
    initial: dict[str, int],
    owner: list[str],
) -> LatencyRun:
    ok = [m for m in mails if not m.error]
    by_subject = {m.subject: m for m in ok}
    run = LatencyRun(
        rate=rate,
        sockets=len(owner),
        users=len(users),
        mails=len(mails),
        delivered=len(delivered),
        errors=len(mails) - len(ok),
        socket_deliveries=0,
        socket_deliveries_expected=len(ok) * sockets_per_user,
    )
    for _name, key, t, index in fleet.received:
        mail = by_subject.get(key)
        if mail is None or owner[index] != mail.recipient:
            continue
        run.socket_deliveries += 1
        run.smtp_to_socket.append(t - mail.due)
        event = delivered.get(mail.message_id)
        if event is not None:
            run.delivery_to_socket.append(t - event.ts / 1000)
    # IDLE: the mailbox's k-th new mail (in delivery order) is announced by the first EXISTS >= base+k.
    per_user: dict[str, list[tuple[float, Sent]]] = defaultdict(list)
    for mail in ok:
        event = delivered.get(mail.message_id)
        if event is not None:
            per_user[mail.recipient].append((event.ts / 1000, mail))
    arrivals: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for email, t, count in idle.arrivals:
        arrivals[email].append((t, count))
    for email, items in per_user.items():
        items.sort(key=lambda pair: pair[0])
        seen = sorted(arrivals.get(email, []))
        base = initial.get(email, 0)
        for k, (delivered_at, mail) in enumerate(items, start=1):
            hit = next((t for t, count in seen if count >= base + k), None)
            if hit is None:
                run.idle_missing += 1
                continue
            run.smtp_to_idle.append(hit - mail.due)
            run.delivery_to_idle.append(hit - delivered_at)
    return run
