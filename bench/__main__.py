"""`make bench`: the whole benchmark on the real stack, one run, written to docs/benchmarks.md.

Stages (each bounded in count and time, loopback only):
0. the bare server (bench.baseline): the same Postfix and Dovecot without mail-bridge, under the same
   load, first, on a stack of its own; our figures are divided by its; then one step at 50 mails/s
   on a bare stack with each of our Dovecot-side parts alone (the push hook, the dedupe script);
1. latency at 10, 50, 100, 200 mails/s with 100 and 1,000 sockets, IMAP IDLE watching the same mails,
   with the cores each process group used per step and a py-spy profile of the bridge at 100/s x 1,000;
2. cost of 10 / 100 / 1,000 watched users: IDLE's connections and Dovecot processes against ours;
3. the highest sustained rate with nothing lost;
4. the relay ceiling of the bridge (profiled too), and memory per socket at 1,000 and 10,000 sockets;
5. the same relay ceiling with one, two and three bridge processes sharing the sockets;
6. the time to replay 1,000 missed events;
7. the web client with 10,000 mails in INBOX, in headless Chromium (bench.web).
`--quick` runs a small version of each (a smoke test of the benchmark itself). `--stages` runs a
subset (and then writes no report, it prints the results; `--stages web` alone rewrites the report's
web section, the rest of it left as the last whole run wrote it), `--rates` and `--sockets-per-user` set
the latency stage's grid: `--stages latency --rates 100 --sockets-per-user 10` measures one step.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from pymongo import MongoClient

from bench import report, web_report
from bench.baseline import PARTS_RATE, bare_stage, bare_step, compare
from bench.capacity import sustained_rate
from bench.cpu import BRIDGE, MACHINE, service_group
from bench.idle_watch import idle_cost
from bench.latency import latency_run
from bench.profile import headline
from bench.relay import relay_ceiling, resume_replay, socket_memory
from bench.smtp_load import Plan, run_open_loop
from bench.socket_floor import memory_note, socket_floor
from bench.socket_load import SocketFleet
from bench.stack import REPO, STATE, BenchStack, User, running_stack
from bench.web import web_stage
from bridge.settings import BARE_PARTS

_N = TypeVar("_N", int, float)

METHOD = """\
- **Stack**: the same launcher as `make run` (Redis, FerretDB, Dovecot with our Lua hook, Postfix with
  our after-queue filter, one bridge process), in `var/bench-stack`, with the browser-facing limits
  (sockets per user, requests per second) raised so they do not cap the measurement.
- **Load**: an open-loop SMTP sender (`bench/smtp_load.py`): mail *i* is due at start + *i*/rate and
  latency counts from that due time, so a sender or server falling behind shows up instead of being
  hidden (no coordinated omission). Persistent connections to Postfix's port 25 listener.
- **Clients**: Socket.IO clients in separate processes (`bench/socket_load.py`, Engine.IO v4 over
  websockets, written for low per-socket cost), each with a token for one user; the IMAP IDLE
  baseline (`bench/idle_watch.py`) holds one IDLE connection per watched mailbox, logged in as the
  user, on Debian's Dovecot defaults.
- **Times**: "SMTP" is the mail's due time at the sender; "Dovecot" is the `ts` of the Lua hook's
  MessageNew event (taken when Dovecot commits the delivery); "socket" is when the client process
  read the `new_email` frame; "IDLE" is when the IDLE connection read the `* N EXISTS` covering the
  mail. All wall-clock times on one machine.
- **Relay ceiling**: flag-change events injected straight into the ingest stream (as the hook
  writes them), as fast as Redis takes them; counted at the sockets.
- **CPU by process group** (`bench/cpu.py`): over each step's window (latency and sustained-rate
  steps: from the first send to the last delivery seen; relay ceiling: its steady state), the CPU
  time of every process, read from /proc at both ends and grouped by walking parent links up to the
  launcher's services (`postfix`, `dovecot`, `redis`, `ferretdb`; every other service is the
  `bridge`'s), this benchmark's own processes (`load`) and py-spy (`profiler`); a process that
  exits inside the window is counted through its parent's reaped-children time. `machine` is all
  CPUs busy (/proc/stat); `rest` is what no group accounts for (the kernel's loopback work,
  anything else on the machine).
- **Profiles** (`bench/profile.py`): py-spy 250 times a second on each bridge process, without
  pausing it, over one latency step's window and the relay ceiling's. Idle (sleeping) threads are
  not sampled, runnable ones are: the shares are of the time a thread was running Python or
  waiting for a CPU to run it, shown beside the process's CPU over the same window.
"""


FIXES = """\
Fixed from earlier runs' profiles (each change measured with this benchmark's stages before and after):

- **FerretDB scanned the whole table for every `_id` lookup**: its SQLite backend compares
  `_ferretdb_sjson->'$._id'` but indexes `_ferretdb_sjson->"_id"`, and SQLite matches index expressions
  as written. `scripts/install-ferretdb.sh` now builds it with that one line written the index's way:
  an upsert by `_id` went from 10 ms to 1.1 ms at 650 documents (and had grown with the table).
- **Every index write was a scan**: FerretDB uses no index but `_id`'s, so writes by (account, mailbox,
  UIDVALIDITY, UID) read the whole collection. Message documents now have that key as their `_id`.
- **Two store round trips per mail for bookkeeping** (the filter summary's document, the counts
  recount): both moved to one Redis transaction per read (`bridge/index_cache.py`). Before, the index
  fell behind from 100 mails/s (25,000 entries behind by the end of the 200 mails/s step); after, it
  keeps up at 100 mails/s.
- **The relay made 3 sequential Redis round trips per event**: now one pipeline per step for a whole
  read (up to 256 events). The relay ceiling went from 3,738 socket deliveries/s to between 11,500
  and 17,600 in the runs since.
- **The content filter shared the relay's event loop**: it is its own process now, on uvloop, with
  re-injection connections kept open. **Postfix passed it at most 10 mails at once**: at 100 mails/s
  mail waited 9 s for a slot; now 50.
- **The Dovecot hook gave Redis 100 ms**: on the saturated machine deliveries hit it and spooled
  (and everyone spools while the spool drains); now 250 ms, and the spool drains every 0.1 s.
- **Dovecot parsed the hook for every delivery**: push_notification_lua starts a Lua state per mail
  user, which in LMTP is per delivery. Priced on the bare stack with only the hook, 50 mails/s, two
  runs each: Dovecot 6.0-6.5 ms of CPU per mail with the hook's source, 4.2-4.6 with the same hook
  precompiled (`bridge/hook_bytecode.py`), 3.4 with an empty script; its Redis connection and XADD
  cost under 0.1 ms. The installer and the stack now precompile it with the compiler of the Lua that
  Dovecot links.

Tried and left out: keeping the hook's Redis connection between transactions (a new Lua state per
delivery holds none: it only helped IMAP sessions, where it should not); Postfix caching its
connections to the content filter (`smtp_connection_cache_destinations`: connections were reused,
CPU unchanged within noise, two runs each); a plugin list per user to price Dovecot's parts
(Dovecot 2.3.19 cannot serve users with different plugin lists from one lmtp process).

Next, from the profiles and the parts table: (1) the content filter and Postfix's second queue pass
(an after-queue filter, by design: it never loses or bounces mail). A before-queue mode (Postfix's
smtpd_proxy_filter to the same filter) would pass each mail through the queue once, at the cost of
holding the client's SMTP session while the filter runs. (2) The bridge's CPU per mail is mostly
socket writes and Redis round trips per event (the profile's aiohttp, asyncio and redis shares):
coalescing a read's events per socket into one frame. (3) What is left of the hook: a Lua state per
delivery, which only Dovecot's own plugin could keep (a C push driver, or Dovecot 2.4's Lua API).
(4) The spool under saturation: once one delivery's hook misses its 250 ms, every producer writes to
the spool until it is drained (that keeps the stream in order); keep order per producer instead.
"""


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict[str, Any]:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    return {
        "cpus": os.cpu_count(),
        "memory_gib": int(meminfo["MemTotal"].split()[0]) / 2**20,
        "os": platform.platform(terse=True),
        "commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {
            "Dovecot": _cmd(["dovecot", "--version"]).split()[0],
            "Postfix": _cmd(["postconf", "-dh", "mail_version"]),
            "Redis": _cmd(["redis-server", "--version"]).split()[2].removeprefix("v="),
            "Python": platform.python_version(),
            "aiohttp": version("aiohttp"),
            "python-socketio": version("python-socketio"),
        },
    }


def imap_connections(port: int) -> int:
    """Established TCP connections to the IMAP port, counted on the server side (/proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":
                count += 1
    return count


STAGES = ("bare", "latency", "cost", "capacity", "relay", "scale", "routed", "resume", "web")
CAPACITY_RATES = (25, 50, 75, 100, 150, 200, 300, 400, 600, 800)
NODE_COUNTS = (1, 2, 3)
ROUTED_NODE_COUNTS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Options:
    """What to run: the stages, and the latency stage's grid (rates empty: the default for the size)."""

    quick: bool = False
    stages: tuple[str, ...] = STAGES
    rates: tuple[float, ...] = ()
    sockets_per_user: tuple[int, ...] = (1, 10)

    @property
    def complete(self) -> bool:
        """Every stage runs: only then is there a whole report to write."""
        return set(self.stages) == set(STAGES)

    @property
    def latency_rates(self) -> tuple[float, ...]:
        return self.rates or ((10, 50) if self.quick else (10, 50, 100, 200))

    @property
    def profiled(self) -> tuple[float, int]:
        """The latency step whose bridge processes are profiled: the highest rate at the most sockets
        per user (200 x 10 in the full run). Not the goal's step (100 x 10): py-spy costs about a
        fifth of a core, which that step's figures must not pay."""
        return max(self.latency_rates), max(self.sockets_per_user)

    def as_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "stages": list(self.stages),
            "rates": list(self.latency_rates),
            "sockets_per_user": list(self.sockets_per_user),
            "profiled_step": {"rate": self.profiled[0], "sockets_per_user": self.profiled[1]},
        }


# ============================================================================ what the numbers say


def _cores(cpu: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.items()) or "not measured"


def _load_text(cpu: Mapping[str, float], cpus: int) -> str:
    machine = cpu.get(MACHINE)
    saturated = machine is not None and machine >= 0.9 * cpus
    return f"{_cores(cpu)} (of {cpus}{'; the machine was saturated' if saturated else ''})"


def _bridge_processes(results: Mapping[str, Any]) -> str:
    names = [name for name, group in results.get("services", {}).items() if group == BRIDGE]
    return f"{len(names)} process{'es' if len(names) != 1 else ''} ({', '.join(names)})"


def _profile_note(where: str, profile: Mapping[str, Any] | None) -> str:
    if not profile:
        return ""
    return f" Where the bridge's samples went ({where}, section Profiles): {headline(profile)}."


def shortfalls(results: dict[str, Any]) -> list[str]:
    """What this run's numbers say about each goal it misses: measured facts, and what is not yet known."""
    notes = []
    lat = results["latency"]
    relay = results["relay"]
    cpus = int(results["machine"]["cpus"] or 1)
    profiled = next((r for r in lat if "profile" in r), None)
    behind = [r for r in lat if r["delivery_to_socket"]["p50"] > r["delivery_to_idle"]["p50"]]
    if behind:
        first = min(behind, key=lambda r: (r["rate"], r["sockets"]))
        where = f"{profiled['rate']:.0f} mails/s, {profiled['sockets']} sockets" if profiled else ""
        notes.append(
            f"From {first['rate']:.0f} mails/s ({first['sockets']} sockets) our path falls behind *after* Dovecot's "
            f"delivery: Dovecot → socket p50 {first['delivery_to_socket']['p50']:.0f} ms against IDLE's "
            f"{first['delivery_to_idle']['p50']:.0f} ms for the same mails, so events wait in Redis for the bridge. "
            f"Cores used during that step, by process group: {_load_text(first.get('cpu_cores', {}), cpus)}; "
            f"the bridge ran as {_bridge_processes(results)}."
            + _profile_note(where, profiled.get("profile") if profiled else None)
        )
    queued = [r for r in lat if r["smtp_to_socket"]["p50"] - r["delivery_to_socket"]["p50"] > 100]
    if queued:
        worst = min(queued, key=lambda r: (r["rate"], r["sockets"]))
        gap = worst["smtp_to_socket"]["p50"] - worst["delivery_to_socket"]["p50"]
        hops = worst.get("postfix_delays", {})
        inside = (
            f" Postfix's log for that step: mail waited {hops['filter']['in_queue_p50']:.2f} s at p50 "
            f"({hops['filter']['in_queue_p95']:.2f} s at p95) in the queue manager for a slot to the content filter, "
            f"whose transaction (scan and re-injection) took {hops['filter']['transfer_p50']:.2f} s at p50; "
            f"the LMTP delivery to Dovecot waited {hops['lmtp']['in_queue_p50']:.2f} s and took "
            f"{hops['lmtp']['transfer_p50']:.2f} s."
            if "filter" in hops and "lmtp" in hops
            else ""
        )
        notes.append(
            f"From {worst['rate']:.0f} mails/s ({worst['sockets']} sockets) time piles up *before* Dovecot's "
            f"delivery ({gap:.0f} ms at p50 between the SMTP send and Dovecot's delivery), the same for IDLE."
            + inside
            + f" Cores used during that step: {_load_text(worst.get('cpu_cores', {}), cpus)}: every service "
            "shares the 2 cores, and the filter's 50 slots (each mostly waiting on a busy Postfix and Dovecot) "
            "pass fewer mails a second than arrive."
        )
    capacity = results["capacity"]
    if capacity["best"] < 300:
        failed = next((s for s in capacity["steps"] if not s["passed"]), None)
        detail = (
            f"the first failing step, {failed['rate']} mails/s, lost nothing ({failed['delivered']} of "
            f"{failed['mails']} delivered, {failed['events_received']} events at sockets) but fell behind the "
            f"schedule (p99 {failed['latency']['p99']:.0f} ms); cores used: "
            f"{_load_text(failed.get('cpu_cores', {}), cpus)}"
            if failed
            else "no step failed"
        )
        notes.append(f"Sustained rate: highest passing step {capacity['best']} mails/s; {detail}, as above.")
    if relay["deliveries_per_s"] < 20_000:
        notes.append(
            f"Relay ceiling: {relay['deliveries_per_s']:.0f} socket deliveries/s ({relay['events_per_s']:.0f} "
            f"events/s, fan-out {relay['fanout']}), with the injector throttled to keep the backlog bounded; "
            f"cores used: {_load_text(relay.get('cpu_cores', {}), cpus)}."
            + _profile_note("relay-ceiling window", relay.get("profile"))
        )
    notes += memory_note(results.get("memory", {}))
    resume = results["resume"]
    if resume["median_ms"] > 50:
        runs = resume.get("runs", [])
        firsts = [r["time_to_first_s"] * 1000 for r in runs if r.get("time_to_first_s") is not None]
        spans = [
            (r["time_to_last_s"] - r["time_to_first_s"]) * 1000 for r in runs if r.get("time_to_last_s") is not None
        ]
        notes.append(
            f"Resume: {resume['median_ms']:.0f} ms at the median from the reconnect to the last of 1,000 replayed "
            + (
                f"events: the first came {min(firsts):.0f} to {max(firsts):.0f} ms after the connect began (the "
                f"WebSocket and Socket.IO handshakes, the token, the log read), the 1,000 then took "
                f"{min(spans):.0f} to {max(spans):.0f} ms, one WebSocket frame each. "
                if firsts and spans
                else "events. "
            )
            + "Next: profile the connect path, and encode the replay's packets without python-socketio's per-emit work."
        )
    return notes


# ============================================================================ stages


def _brief(result: Mapping[str, Any]) -> dict[str, Any]:
    """A step's result without its profile (printed on a line of its own)."""
    return {key: value for key, value in result.items() if key != "profile"}


def _profile_dir(stack: BenchStack) -> Path:
    return stack.state / "profiles"


async def warm_up(stack: BenchStack, users: list[User], *, index: bool = True) -> None:
    """Mailboxes that have had mail: a user's first delivery also creates the mailbox in Dovecot,
    a one-off cost that is not what these runs measure. With `index`, each user's socket has also
    connected once and the backfill that a first connection starts (IMAP, the store) is over: it
    would otherwise fall into the first step's CPU."""
    warm = Plan(rate=50, seconds=len(users) / 50, recipients=[u.email for u in users], tag="warm-up")
    await asyncio.to_thread(run_open_loop, stack.info.smtp["host"], stack.info.smtp["port"], warm)
    await asyncio.sleep(3)
    if not index:
        return
    client: MongoClient[dict[str, Any]] = MongoClient(stack.info.mongodb_url)
    accounts = client["mailbridge"]["accounts"]
    emails = [u.email for u in users]

    def wait_indexed(timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if accounts.count_documents({"account": {"$in": emails}, "indexed": True}) >= len(emails):
                return
            time.sleep(0.5)

    try:
        async with SocketFleet(stack.info.web_url, [stack.token(e) for e in emails], processes=1, record=()):
            await asyncio.to_thread(wait_indexed)
    finally:
        client.close()
    await asyncio.sleep(1)


async def latency_stage(stack: BenchStack, users: list[User], options: Options) -> list[dict[str, Any]]:
    latency = []
    for sockets_per_user in options.sockets_per_user:
        for rate in options.latency_rates:
            tag = f"lat{rate:g}x{sockets_per_user}"
            profiled = (rate, sockets_per_user) == options.profiled
            result = await latency_run(
                stack,
                users,
                rate=rate,
                seconds=4 if options.quick else 10,
                sockets_per_user=sockets_per_user,
                tag=tag,
                profile_dir=_profile_dir(stack) if profiled else None,
            )
            latency.append(result.summary())
            print(f"latency {rate:g}/s, {result.sockets} sockets: {_brief(latency[-1])}", flush=True)
            if "profile" in latency[-1]:
                print(f"profile {tag}: {headline(latency[-1]['profile'])}", flush=True)
    return latency


async def cost_stage(stack: BenchStack, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """IDLE's cost against ours for 10 / 100 / 1,000 watched users, and the bridge's memory per socket."""
    watched = stack.add_users(100 if quick else 1000, "watch")
    counts = (10, 100) if quick else (10, 100, 1000)
    idle = await idle_cost(stack, watched, counts=counts)
    idle_rows = [
        {
            "n": n,
            "connections": c["established"],
            "imap_processes": c["fleet_imap_processes"],
            # PSS: shared library pages split between the processes (RSS would count them N times)
            "rss_bytes": c["pss_total_bytes"],
            "rss_sum_bytes": c["rss_total_bytes"],
            "open_s": c["open_seconds"],
            "dovecot_cpu_s": c["dovecot_cpu_seconds"],
            "without_inotify": c["without_inotify"],
            "inotify_limit": c["inotify_max_user_instances"],
        }
        for n, c in sorted(idle.items())
    ]
    memory = await socket_memory(stack, counts=(*counts, *(() if quick else (10_000,))))
    cost = {
        "idle": idle_rows,
        "ours": [row for row in memory["rows"] if row["n"] in counts],
        "ours_imap_connections": memory.get("imap_connections_while_connected", 0),
    }
    print(f"cost: {cost}", flush=True)
    return cost, memory


async def scale_stage(stack: BenchStack, quick: bool) -> list[dict[str, Any]]:
    """The relay ceiling again with 1, 2 and 3 bridge processes (unprofiled, same load for each):
    the sockets are spread over the nodes, every event reaches each node over its user's channel."""
    return await _across_nodes(stack, quick, NODE_COUNTS, by_user=False)


async def routed_stage(stack: BenchStack, quick: bool) -> list[dict[str, Any]]:
    """The relay ceiling with 1 to 4 bridge processes, every socket of user u on node u mod n (a
    balancer that routes by account): each node hears only its own users' events on their
    channels, and its CPU per event heard should stay as one node's."""
    return await _across_nodes(stack, quick, ROUTED_NODE_COUNTS, by_user=True)


async def _across_nodes(
    stack: BenchStack, quick: bool, counts: Sequence[int], *, by_user: bool
) -> list[dict[str, Any]]:
    """The relay ceiling with each number of bridge processes in `counts` (then one again)."""
    rows = []
    try:
        for count in counts:
            nodes = stack.scale_to(count)
            row = await relay_ceiling(
                stack,
                sockets=100 if quick else 1000,
                users=10 if quick else 100,
                seconds=3 if quick else 10,
                nodes=nodes,
                by_user=by_user,
            )
            rows.append(row)
            heard = f"; heard {row['nodes_heard']} of {row['published']}" if by_user else ""
            print(f"{'routed' if by_user else 'scale'} {count}: {_brief(row)}{heard}", flush=True)
    finally:
        stack.scale_to(1)
    return rows


def _mail_users(stack: BenchStack, quick: bool) -> list[User]:
    """The latency and sustained-rate stages' recipients (the bare stage's too: the same number)."""
    return stack.add_users(20 if quick else 100, "lat")


async def run_bare(stack: BenchStack, options: Options) -> dict[str, Any]:
    """The bare stage, on the bare stack."""
    users = _mail_users(stack, options.quick)
    await warm_up(stack, users, index=False)  # nothing to index on a bare server
    return await bare_stage(
        stack,
        users,
        rates=options.latency_rates,
        capacity_rates=(50, 100) if options.quick else CAPACITY_RATES,
        seconds=4 if options.quick else 10,
    )


async def run_bare_part(stack: BenchStack, options: Options, part: str) -> dict[str, Any]:
    """One step at PARTS_RATE on a bare stack that keeps one part of ours (bench.baseline)."""
    users = _mail_users(stack, options.quick)
    await warm_up(stack, users, index=False)
    seconds = 4 if options.quick else 10
    step = await bare_step(stack, users, rate=PARTS_RATE, seconds=seconds, tag=f"bare-{part}")
    print(f"bare with {part} {PARTS_RATE:g}/s: {step}", flush=True)
    return step


async def run(stack: BenchStack, options: Options, bare: dict[str, Any] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    quick, stages = options.quick, options.stages
    results: dict[str, Any] = {
        "machine": machine(),
        "method": METHOD,
        "fixes": FIXES,
        "options": options.as_json(),
        "services": {name: service_group(name) for name in stack.services()},
    }
    if bare is not None:
        results["bare"] = bare
    mail_users: list[User] = []
    if "latency" in stages or "capacity" in stages:
        mail_users = _mail_users(stack, quick)
        await warm_up(stack, mail_users)
    if "latency" in stages:
        results["latency"] = await latency_stage(stack, mail_users, options)
    if "cost" in stages:
        results["cost"], results["memory"] = await cost_stage(stack, quick)
        results["memory"]["framework_floor"] = await socket_floor(200 if quick else 2000)
    if "capacity" in stages:
        results["capacity"] = await sustained_rate(
            stack,
            mail_users,
            rates=(50, 100) if quick else CAPACITY_RATES,
            seconds=4 if quick else 10,
        )
    if "relay" in stages:
        results["relay"] = await relay_ceiling(
            stack,
            sockets=100 if quick else 1000,
            users=10 if quick else 100,
            seconds=3 if quick else 10,
            profile_dir=_profile_dir(stack),
        )
        print(f"relay: {_brief(results['relay'])}", flush=True)
        if "profile" in results["relay"]:
            print(f"profile relay: {headline(results['relay']['profile'])}", flush=True)
    if "scale" in stages:
        results["scale"] = await scale_stage(stack, quick)
    if "routed" in stages:
        results["routed"] = await routed_stage(stack, quick)
    if "resume" in stages:
        results["resume"] = await resume_replay(stack, events=1000)
        print(f"resume: {results['resume']}", flush=True)
    if "web" in stages:
        results["web"] = await web_stage(stack, quick)
    if bare is not None and "latency" in results:
        results["against_bare"] = compare(bare, results["latency"], results.get("capacity", {}))
        print(f"against bare: {results['against_bare']}", flush=True)
    if options.complete:
        results["shortfalls"] = shortfalls(results)
    results["wall_s"] = time.monotonic() - started
    return results


def _stage_list(text: str) -> tuple[str, ...]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(STAGES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage {', '.join(unknown) or '(none)'}; from {','.join(STAGES)}")
    return tuple(name for name in STAGES if name in names)  # always in the usual order


def _positive_list(kind: Callable[[str], _N]) -> Callable[[str], tuple[_N, ...]]:
    def parse(text: str) -> tuple[_N, ...]:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"a comma-separated list of positive numbers, not {text!r}")
        return values

    return parse


def parse_options(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version of every stage")
    parser.add_argument("--state", type=Path, default=STATE, help="the stack's state dir (default: %(default)s)")
    parser.add_argument("--no-report", action="store_true", help="print the results, do not write docs/")
    parser.add_argument(
        "--stages",
        type=_stage_list,
        default=STAGES,
        help=f"comma-separated subset of {','.join(STAGES)} (default: all; a subset writes no report)",
    )
    parser.add_argument(
        "--rates",
        type=_positive_list(float),
        default=(),
        help="the latency stage's mails/s, comma-separated (default: 10,50,100,200; --quick: 10,50)",
    )
    parser.add_argument(
        "--sockets-per-user",
        type=_positive_list(int),
        default=(1, 10),
        help="the latency stage's sockets per user, comma-separated (default: 1,10)",
    )
    args = parser.parse_args(argv)
    options = Options(quick=args.quick, stages=args.stages, rates=args.rates, sockets_per_user=args.sockets_per_user)
    return options, args


def main() -> int:
    options, args = parse_options()
    bare = None
    if "bare" in options.stages:
        with running_stack(args.state.with_name(args.state.name + "-bare"), bare=True) as stack:
            bare = asyncio.run(run_bare(stack, options))
        bare["parts"] = {}
        for part in BARE_PARTS:  # each of our Dovecot-side parts priced alone
            state = args.state.with_name(f"{args.state.name}-bare-{part}")
            with running_stack(state, bare=True, bare_with=(part,)) as stack:
                bare["parts"][part] = asyncio.run(run_bare_part(stack, options, part))
    with running_stack(args.state) as stack:
        results = asyncio.run(run(stack, options, bare))
    if options.stages == ("web",) and not args.no_report:
        web_report.update(report.DOCS / "benchmarks.md", results["web"])
        print("wrote the web section of docs/benchmarks.md", file=sys.stderr)
        return 0
    if args.no_report or not options.complete:
        if not args.no_report:
            print(f"stages {','.join(options.stages)} only: docs/ left as it is", file=sys.stderr)
        print(json.dumps(results, indent=1, default=str))
        return 0
    path = report.write(results)
    print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
