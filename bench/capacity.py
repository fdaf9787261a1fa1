"""Highest sustained mail rate with nothing lost, found by stepping the open-loop rate up.

A rate passes when, for a fixed-length open-loop run: every mail is accepted by Postfix, every mail
is delivered by Dovecot (its MessageNew event is in the stream), every `new_email` reaches its
socket, and the system keeps up: the last tenth of the run sees the same latency as the first (no
queue growing behind the schedule), judged by p99 SMTP-start-to-socket under KEEP_UP_S.
Each step also records the cores each group of the stack used over its send and drain.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from bench.latency import deliveries, percentiles
from bench.smtp_load import Plan, run_open_loop
from bench.socket_load import SocketFleet
from bench.stack import BenchStack, User
from bench.window import StepWindow

KEEP_UP_S = 2.0
DRAIN_TIMEOUT_S = 60.0


async def sustained_rate(
    stack: BenchStack, users: list[User], *, rates: tuple[int, ...], seconds: float, connections: int = 48
) -> dict[str, Any]:
    tokens = [stack.token(u.email) for u in users]
    steps: list[dict[str, Any]] = []
    best = 0
    redis = aioredis.Redis.from_url(stack.info.redis_url)
    try:
        async with SocketFleet(stack.info.web_url, tokens, processes=2, record=("new_email",)) as fleet:
            for rate in rates:
                tag = f"cap{rate}-{int(time.time())}"
                base = fleet.counts.get("new_email", 0)
                since_ms = int(time.time() * 1000) - 1000
                plan = Plan(rate=rate, seconds=seconds, recipients=[u.email for u in users], tag=tag)
                started = time.monotonic()
                async with StepWindow(stack, tag) as window:
                    mails = await asyncio.to_thread(
                        run_open_loop, stack.info.smtp["host"], stack.info.smtp["port"], plan, connections=connections
                    )
                    ok = [m for m in mails if not m.error]
                    wanted = base + len(ok)

                    def caught_up(wanted: int = wanted) -> bool:
                        return fleet.counts.get("new_email", 0) >= wanted

                    drained = await fleet.wait_for(caught_up, DRAIN_TIMEOUT_S)
                delivered = await deliveries(redis, since_ms, {m.message_id for m in ok})
                by_subject = {m.subject: m for m in ok}
                latencies = [t - by_subject[key].due for _n, key, t, _i in fleet.received if key in by_subject]
                received = len({key for _n, key, _t, _i in fleet.received if key in by_subject})
                stats = percentiles(latencies)
                passed = (
                    len(ok) == len(mails)
                    and len(delivered) == len(mails)
                    and received == len(mails)
                    and stats["p99"] < KEEP_UP_S * 1000
                )
                steps.append(
                    {
                        "rate": rate,
                        "mails": len(mails),
                        "smtp_errors": len(mails) - len(ok),
                        "delivered": len(delivered),
                        "events_received": received,
                        "drained": bool(drained),
                        "latency": stats,
                        "wall_s": round(time.monotonic() - started, 1),
                        "passed": passed,
                        **window.summary(),
                    }
                )
                print(f"sustained {rate}/s: {'pass' if passed else 'FAIL'} {steps[-1]}", flush=True)
                if not passed:
                    break
                best = rate
                fleet.received.clear()
    finally:
        await redis.aclose()
    return {"best": best, "steps": steps, "seconds": seconds, "users": len(users)}
