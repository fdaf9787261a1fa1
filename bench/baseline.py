"""The bare server: the same Postfix and Dovecot without mail-bridge, under the same load, as the
baseline our costs are divided by.

The stack is the launcher's with `BRIDGE_STACK_BARE` (bridge.stack): the same versions, settings,
users and LMTP delivery, but no content filter, push hook or dedupe script, and no Redis, store or
bridge. Each step sends the same open-loop SMTP load as the latency stage (bench.smtp_load) to the
same number of users, each watched by one IMAP IDLE connection as there, and measures:
- CPU per mail by process group (bench.cpu), over the step's window, as for our path;
- SMTP send (the mail's due time) → the mail visible over IMAP (the IDLE `* N EXISTS` that covers
  it: a user's k-th new mail, by due time, is the first EXISTS reaching k);
- whether the server keeps up: every mail accepted and visible, p99 under KEEP_UP_S (as
  bench.capacity judges our path), stepping the rate up until it does not.
`compare` then divides our path's figures (the latency stage's steps with one socket per user, the
sustained-rate stage) by these.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from bench.capacity import KEEP_UP_S
from bench.cpu import BRIDGE, INFRASTRUCTURE, MACHINE
from bench.idle_watch import IdleFleet
from bench.latency import idle_caught_up, percentiles
from bench.smtp_load import Plan, Sent, run_open_loop
from bench.stack import BenchStack, User
from bench.window import StepWindow

DRAIN_TIMEOUT_S = 60.0
PARTS_RATE = 50.0  # the rate at which each of our parts is priced alone (bench.__main__'s parts stage)
SERVER_GROUPS = (*INFRASTRUCTURE, BRIDGE)  # the mail server's processes: not the benchmark's own


def cpu_ms_per_mail(step: Mapping[str, Any], mails: int) -> dict[str, float]:
    """Each group's CPU over the step's window, in milliseconds per mail sent; `server` is the
    mail server's groups together (the benchmark's own load left out)."""
    seconds = float(step.get("cpu_window_s") or 0)
    cores = step.get("cpu_cores") or {}
    if not mails or not seconds:
        return {}
    out = {group: cores[group] * seconds * 1000 / mails for group in (*SERVER_GROUPS, MACHINE) if group in cores}
    out["server"] = sum(out.get(group, 0.0) for group in SERVER_GROUPS)
    return out


def visible_latencies(
    mails: Sequence[Sent], initial: Mapping[str, int], arrivals: Sequence[tuple[str, float, int]]
) -> tuple[list[float], int]:
    """SMTP send → visible over IMAP per mail (seconds), and how many were never seen: a user's
    k-th mail (by due time) is visible at the first EXISTS that reaches its count before + k."""
    per_user: dict[str, list[Sent]] = defaultdict(list)
    for mail in mails:
        per_user[mail.recipient].append(mail)
    seen: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for email, t, count in arrivals:
        seen[email].append((t, count))
    latencies: list[float] = []
    missing = 0
    for email, items in per_user.items():
        items.sort(key=lambda m: m.due)
        times = sorted(seen.get(email, []))
        base = initial.get(email, 0)
        for k, mail in enumerate(items, start=1):
            hit = next((t for t, count in times if count >= base + k), None)
            if hit is None:
                missing += 1
            else:
                latencies.append(hit - mail.due)
    return latencies, missing


async def bare_step(stack: BenchStack, users: list[User], *, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """One open-loop step at `rate`, watched by one IDLE per user."""
    async with IdleFleet(stack.info.imap["host"], stack.info.imap["port"], users) as idle:
        initial = dict(idle.exists)
        plan = Plan(rate=rate, seconds=seconds, recipients=[u.email for u in users], tag=tag)
        started = time.monotonic()
        async with StepWindow(stack, tag) as window:
            mails = await asyncio.to_thread(run_open_loop, stack.info.smtp["host"], stack.info.smtp["port"], plan)
            ok = [m for m in mails if not m.error]
            await idle_caught_up(idle, initial, ok, DRAIN_TIMEOUT_S)
        latencies, missing = visible_latencies(ok, initial, list(idle.arrivals))
    stats = percentiles(latencies)
    step = {
        "rate": rate,
        "mails": len(mails),
        "smtp_errors": len(mails) - len(ok),
        "visible": len(latencies),
        "missing": missing,
        "smtp_to_visible": stats,
        "wall_s": round(time.monotonic() - started, 1),
        **window.summary(),
    }
    step["cpu_ms_per_mail"] = cpu_ms_per_mail(step, len(mails))
    step["passed"] = not step["smtp_errors"] and not missing and stats["p99"] < KEEP_UP_S * 1000
    return step


async def bare_stage(
    stack: BenchStack, users: list[User], *, rates: Sequence[float], capacity_rates: Sequence[int], seconds: float
) -> dict[str, Any]:
    """The latency grid's rates, then rates stepped up until the bare server no longer keeps up."""
    steps = []
    for rate in rates:
        steps.append(await bare_step(stack, users, rate=rate, seconds=seconds, tag=f"bare{rate:g}"))
        print(f"bare {rate:g}/s: {steps[-1]}", flush=True)
    capacity = []
    best = 0
    for rate in capacity_rates:
        step = await bare_step(stack, users, rate=rate, seconds=seconds, tag=f"barecap{rate}-{int(time.time())}")
        capacity.append(step)
        print(f"bare sustained {rate}/s: {'pass' if step['passed'] else 'FAIL'} {step}", flush=True)
        if not step["passed"]:
            break
        best = rate
    return {"steps": steps, "capacity": {"best": best, "steps": capacity}, "users": len(users), "seconds": seconds}


def compare(
    bare: Mapping[str, Any], latency: Sequence[Mapping[str, Any]], capacity: Mapping[str, Any]
) -> dict[str, Any]:
    """Our path against the bare server, rate by rate (our latency steps with one socket per user,
    the same users and load), and the highest sustained rates."""
    users = int(bare["users"])
    rows = []
    for base in bare["steps"]:
        ours = next((r for r in latency if r["rate"] == base["rate"] and r["sockets"] == users), None)
        if ours is None:
            continue
        ours_ms = cpu_ms_per_mail(ours, int(ours["mails"]))
        bare_ms = base["cpu_ms_per_mail"]
        rows.append(
            {
                "rate": base["rate"],
                "bare_ms": bare_ms,
                "ours_ms": ours_ms,
                "server_ratio": ours_ms.get("server", 0) / bare_ms["server"] if bare_ms.get("server") else None,
                "ours_own_ms": ours_ms.get(BRIDGE),
                "bare_visible": base["smtp_to_visible"],
                "ours_socket": ours["smtp_to_socket"],
                "ours_idle": ours["smtp_to_idle"],
            }
        )
    best_bare, best_ours = int(bare["capacity"]["best"]), int(capacity.get("best", 0))
    return {
        "rows": rows,
        "sustained": {"bare": best_bare, "ours": best_ours, "ratio": best_ours / best_bare if best_bare else None},
    }


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def redis_per_mail(step: Mapping[str, Any], mails: int) -> tuple[float, float, list[tuple[str, float]]]:
    """Redis commands per mail, new connections per mail, and the commands by calls per mail
    (most first), from a step's window (bench.window's `redis_calls`)."""
    calls = dict(step.get("redis_calls") or {})
    if not mails or not calls:
        return 0.0, 0.0, []
    connections = calls.pop("(connections)", 0) / mails
    by_command = sorted(((name, n / mails) for name, n in calls.items()), key=lambda item: -item[1])
    return sum(n for _name, n in by_command), connections, by_command


def _added_line(base: Mapping[str, Any], parts: Mapping[str, Any], ours: Mapping[str, Any] | None) -> list[str]:
    """Dovecot's and Postfix's extra CPU with us, and how much of Dovecot's each part explains."""
    if ours is None:
        return []
    bare_ms, ours_ms = cpu_ms_per_mail(base, int(base["mails"])), cpu_ms_per_mail(ours, int(ours["mails"]))
    if "dovecot" not in bare_ms or "dovecot" not in ours_ms:
        return []
    added = {
        part: cpu_ms_per_mail(step, int(step["mails"])).get("dovecot", 0.0) - bare_ms["dovecot"]
        for part, step in parts.items()
    }
    extra = ours_ms["dovecot"] - bare_ms["dovecot"]
    postfix = ours_ms.get("postfix", 0.0) - bare_ms.get("postfix", 0.0)
    each = ", ".join(f"the {part} {ms:.1f} ms" for part, ms in added.items())
    return [
        f"- With us Dovecot spends {extra:.1f} ms more per mail than bare; priced alone, {each}; "
        f"{extra - sum(added.values()):.1f} ms is not explained by either alone. Postfix spends {postfix:.1f} ms "
        "more: each mail passes its queue twice (in, and back from the after-queue content filter)."
    ]


def _redis_line(what: str, step: Mapping[str, Any] | None) -> list[str]:
    if step is None:
        return []
    total, connections, by_command = redis_per_mail(step, int(step.get("mails") or 0))
    if not by_command:
        return []
    top = ", ".join(f"{name.upper()} {n:.1f}" for name, n in by_command[:8])
    return [
        f"- {what}: {total:.1f} Redis commands and {connections:.2f} new connections per mail ({top}); "
        "Redis counts the commands a script runs, so EVALSHA's own commands are among them."
    ]


def parts_lines(bare: Mapping[str, Any], ours: Mapping[str, Any] | None) -> list[str]:
    """What each of our Dovecot-side parts costs alone: a bare stack with only that part added,
    at the same rate, against the bare server and our whole path."""
    parts: Mapping[str, Any] = bare.get("parts") or {}
    base = next((step for step in bare["steps"] if parts and step["rate"] == PARTS_RATE), None)
    if not parts or base is None:
        return []
    names = {"dedupe": "+ dedupe Sieve script (and its LMTP settings)", "hook": "+ push hook (and Redis)"}
    lines = [
        f"What each of our parts costs on its own, at {PARTS_RATE:g} mails/s: the bare stack again with only "
        "that part of mail-bridge added (`BRIDGE_STACK_BARE_WITH`), the same load and users, ms of CPU per mail.",
        "",
        "| stack | Postfix | Dovecot | Redis | filter + bridge | server |",
        "|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, Mapping[str, Any]]] = [("bare", base)]
    rows += [(names.get(part, part), step) for part, step in parts.items()]
    if ours is not None:
        rows.append(("with us (everything)", ours))
    for name, step in rows:
        ms = cpu_ms_per_mail(step, int(step["mails"]))
        lines.append(
            f"| {name} | {_ms(ms.get('postfix'))} | {_ms(ms.get('dovecot'))} | {_ms(ms.get('redis'))} | "
            f"{_ms(ms.get(BRIDGE))} | {_ms(ms.get('server'))} |"
        )
    lines.append("")
    lines += _added_line(base, parts, ours)
    lines += _redis_line("The push hook alone", parts.get("hook"))
    lines += _redis_line(f"Our whole path at {PARTS_RATE:g} mails/s", ours)
    return [*lines, ""]


def _latency_row(latency: Sequence[Mapping[str, Any]], *, at_most: float, sockets: int) -> Mapping[str, Any] | None:
    """The latency step with `sockets` sockets at the highest rate not above `at_most`."""
    rows = [r for r in latency if r["sockets"] == sockets and r["rate"] <= at_most]
    return max(rows, key=lambda r: r["rate"]) if rows else None


def goal_rows(results: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """Every goal of issue 19, measured in this run: (goal, measured, met)."""
    comparison, bare = results["against_bare"], results["bare"]
    rows, sustained = comparison["rows"], comparison["sustained"]
    goals: list[tuple[str, str, bool]] = []
    at50 = next((r for r in rows if r["rate"] == 50), rows[-1] if rows else None)
    if at50 is not None and at50["server_ratio"] is not None:
        goals.append(
            (
                "whole-server CPU per mail with us ≤ 1.3x the bare server's",
                f"{at50['server_ratio']:.2f}x at {at50['rate']:g} mails/s",
                at50["server_ratio"] <= 1.3,
            )
        )
        own = at50["ours_own_ms"]
        goals.append(
            (
                "our own processes ≤ 2 ms of CPU per mail at 50 mails/s",
                f"{_ms(own)} ms (filter and bridge together)",
                own is not None and own <= 2.0,
            )
        )
    ratio = sustained["ratio"]
    if ratio is not None:
        goals.append(("highest sustained rate ≥ 80% of the bare server's", f"{ratio:.0%}", ratio >= 0.8))
    latency = results.get("latency") or []
    sockets = max((r["sockets"] for r in latency), default=0)
    eighty = 0.8 * sustained["bare"]
    row = _latency_row(latency, at_most=eighty, sockets=sockets)
    base = next((b for b in bare["steps"] if row is not None and b["rate"] == row["rate"]), None)
    if row is not None and base is not None:
        ceiling = base["smtp_to_visible"]["p99"] + 50
        p99 = row["smtp_to_socket"]["p99"]
        goals.append(
            (
                f"at 80% of the bare rate ({eighty:g} mails/s; nearest step {row['rate']:g}), {sockets} sockets: "
                "SMTP → socket p99 ≤ bare SMTP → IMAP-visible p99 + 50 ms",
                f"{p99:.0f} ms against {ceiling:.0f} ms",
                p99 <= ceiling,
            )
        )
    half = [r for r in latency if r["sockets"] == sockets and r["rate"] <= eighty / 2]
    if half:
        worst = max(r["delivery_to_socket"]["p99"] for r in half)
        rates = ", ".join(f"{r['rate']:g}" for r in half)
        goals.append(
            (
                f"Dovecot → socket p99 ≤ 20 ms up to half that rate ({eighty / 2:g} mails/s)",
                f"worst {worst:.0f} ms (steps at {rates} mails/s)",
                worst <= 20,
            )
        )
    relay = results.get("relay") or {}
    if relay:
        per_s = float(relay.get("deliveries_per_s", 0))
        goals.append(("one bridge process ≥ 20,000 socket deliveries/s", f"{per_s:,.0f}", per_s >= 20_000))
    scale = [r for r in results.get("scale") or [] if r.get("bridge_cpu_ms_per_event")]
    if len(scale) > 1:
        one = float(scale[0]["bridge_cpu_ms_per_event"])
        spread = [float(r["bridge_cpu_ms_per_event"]) / one - 1 for r in scale]
        goals.append(
            (
                f"bridge CPU per delivered event flat (±15%) from 1 to {scale[-1]['nodes']} processes",
                " → ".join(f"{r['bridge_cpu_ms_per_event']:.2f}" for r in scale)
                + f" ms ({max(spread, key=abs):+.0%} at most)",
                all(abs(x) <= 0.15 for x in spread),
            )
        )
    memory = results.get("memory") or {}
    tenk = next((r for r in memory.get("rows", []) if r["n"] >= 10_000), None)
    if tenk is not None:
        mib = tenk["rss_bytes"] / 2**20
        goals.append(("10,000 idle sockets ≤ 300 MiB (the bridge process)", f"{mib:.0f} MiB", mib <= 300))
    resume = results.get("resume") or {}
    if "median_ms" in resume:
        goals.append(
            (
                "1,000 missed events replayed in ≤ 50 ms",
                f"median {resume['median_ms']:.0f} ms",
                float(resume["median_ms"]) <= 50,
            )
        )
    return goals


def report_lines(results: Mapping[str, Any]) -> list[str]:
    """The section at the top of docs/benchmarks.md: our path divided by the bare server's."""
    comparison, bare = results["against_bare"], results["bare"]
    rows, sustained = comparison["rows"], comparison["sustained"]
    lines = [
        "## Against a bare server",
        "",
        "The same Postfix and Dovecot without mail-bridge (no content filter, push hook or dedupe script; no "
        "Redis, store or bridge), under the same open-loop SMTP load to the same "
        f"{bare['users']} users, each watched by one IMAP IDLE connection, in the same run (bench/baseline.py). "
        "CPU is per mail sent, over each step's window; *server* is every process of the mail server "
        "(the benchmark's own clients left out); *ours* is the filter and the bridge.",
        "",
        "| mails/s | bare server ms/mail | with us ms/mail | ratio | ours (filter + bridge) | Postfix bare → with us "
        "| Dovecot bare → with us | Redis + store |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b, o = row["bare_ms"], row["ours_ms"]
        ratio = row["server_ratio"]
        lines.append(
            f"| {row['rate']:g} | {_ms(b.get('server'))} | {_ms(o.get('server'))} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | {_ms(o.get(BRIDGE))} | "
            f"{_ms(b.get('postfix'))} → {_ms(o.get('postfix'))} | {_ms(b.get('dovecot'))} → {_ms(o.get('dovecot'))} | "
            f"{_ms(o.get('redis', 0) + o.get('ferretdb', 0))} |"
        )
    lines += [
        "",
        "| mails/s | bare: SMTP → visible over IMAP p50 / p99 | with us: SMTP → IMAP (IDLE) p50 / p99 "
        "| with us: SMTP → socket p50 / p99 |",
        "|---|---|---|---|",
    ]
    for row in rows:
        v, i, s = row["bare_visible"], row["ours_idle"], row["ours_socket"]
        lines.append(
            f"| {row['rate']:g} | {v['p50']:.0f} / {v['p99']:.0f} ms | {i['p50']:.0f} / {i['p99']:.0f} ms "
            f"| {s['p50']:.0f} / {s['p99']:.0f} ms |"
        )
    ratio = sustained["ratio"]
    lines += [
        "",
        f"Highest sustained rate with nothing lost (p99 under {KEEP_UP_S:.0f} s, 10 s steps): bare "
        f"{sustained['bare']} mails/s, with us {sustained['ours']} mails/s"
        + (f" ({ratio:.0%} of the bare server's)." if ratio is not None else "."),
        "",
    ]
    users = int(bare["users"])
    ours_at = next((r for r in results.get("latency") or [] if r["rate"] == PARTS_RATE and r["sockets"] == users), None)
    lines += parts_lines(bare, ours_at)
    lines += ["| Goal (issue 19) | Measured | |", "|---|---|---|"]
    lines += [
        f"| {goal} | {measured} | {'met' if ok else '**not met**'} |" for goal, measured, ok in goal_rows(results)
    ]
    return [*lines, ""]
