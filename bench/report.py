"""Write docs/benchmarks.md and its plots from one run's results (a plain dict, also kept as JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench import routed_report, web_report
from bench.baseline import report_lines
from bench.cpu import BRIDGE, GROUPS, MACHINE

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLOTS = DOCS / "benchmarks"


def _ms(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _ratio(theirs: float, ours: float) -> str:
    if not ours or math.isnan(ours) or math.isnan(theirs):
        return "-"
    return f"{theirs / ours:.0f}x"


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _save(fig: Any, name: str) -> str:
    """Write a finished figure into the plots folder; its file name, for the report's link."""
    fig.tight_layout()
    fig.savefig(PLOTS / name, dpi=110)
    plt.close(fig)
    return name


def plot_latency(latency: list[dict[str, Any]]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, sockets in zip(axes, sorted({r["sockets"] for r in latency}), strict=False):
        runs = [r for r in latency if r["sockets"] == sockets]
        rates = [r["rate"] for r in runs]
        for key, label, style in (
            ("delivery_to_socket", "Dovecot → socket (ours)", "o-"),
            ("smtp_to_socket", "SMTP → socket (ours)", "s-"),
            ("delivery_to_idle", "Dovecot → IMAP IDLE", "o--"),
            ("smtp_to_idle", "SMTP → IMAP IDLE", "s--"),
        ):
            ax.plot(rates, [r[key]["p50"] for r in runs], style, label=f"{label} p50")
            ax.plot(rates, [r[key]["p99"] for r in runs], style, alpha=0.4, label=f"{label} p99")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("mails/s (open loop)")
        ax.set_title(f"{sockets} sockets")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, "latency.png")


def plot_cost(cost: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    idle = cost["idle"]
    ns = [row["n"] for row in idle]
    ax.plot(ns, [row["rss_bytes"] / 2**20 for row in idle], "o--", label="IMAP IDLE: Dovecot imap processes")
    ours = cost["ours"]
    ax.plot([row["n"] for row in ours], [row["rss_delta_bytes"] / 2**20 for row in ours], "o-", label="ours: bridge")
    ax.set_xscale("log")
    ax.set_xlabel("watched users")
    ax.set_ylabel("memory held (MiB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, "cost.png")


def plot_capacity(capacity: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = capacity["steps"]
    ax.plot([s["rate"] for s in steps], [s["latency"]["p50"] for s in steps], "o-", label="p50")
    ax.plot([s["rate"] for s in steps], [s["latency"]["p99"] for s in steps], "s-", label="p99")
    for s in steps:
        if not s["passed"]:
            ax.annotate("loss or backlog", (s["rate"], s["latency"]["p99"]), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("mails/s (open loop, 10 s each)")
    ax.set_ylabel("SMTP → socket (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, "capacity.png")


def write(results: dict[str, Any]) -> Path:
    PLOTS.mkdir(parents=True, exist_ok=True)
    (PLOTS / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    m = results["machine"]
    out: list[str] = [
        "# Benchmarks",
        "",
        "Written by `make bench` from one run; every figure below comes from that run "
        f"(raw numbers: [results.json](benchmarks/results.json)). Run on {m['cpus']} cores, "
        f"{m['memory_gib']:.0f} GiB, {m['os']}; every service on the same machine, loopback only. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}. Commit `{m['commit']}`, "
        f"{m['date']}. Whole run: {results['wall_s'] / 60:.1f} min.",
        "",
        "Absolute times on shared machines drift; the ratios against IMAP IDLE, measured for the same "
        "mails in the same run, are the figures to compare.",
        "",
    ]
    if "against_bare" in results:
        out += report_lines(results)
    out += _goals(results)
    out += _latency_section(results["latency"])
    out += _cost_section(results["cost"])
    out += _capacity_section(results["capacity"])
    out += _relay_section(results["relay"], results["memory"])
    out += _scale_section(results["scale"], int(m["cpus"] or 1))
    out += routed_report.section(results["routed"], int(m["cpus"] or 1))
    out += _resume_section(results["resume"])
    out += web_report.section(results["web"])
    out += _profiles_section(results)
    out += ["## How it is measured", "", results["method"], ""]
    path = DOCS / "benchmarks.md"
    path.write_text("\n".join(out))
    return path


def _at(latency: list[dict[str, Any]], rate: float, sockets: int) -> dict[str, Any] | None:
    return next((r for r in latency if r["rate"] == rate and r["sockets"] == sockets), None)


def _goals(results: dict[str, Any]) -> list[str]:
    lat = results["latency"]
    biggest = max(r["sockets"] for r in lat)
    at100 = _at(lat, 100, biggest) or lat[-1]
    worst_delivery_p99 = max(r["delivery_to_socket"]["p99"] for r in lat)
    speedups = [r["smtp_to_idle"]["p50"] / r["smtp_to_socket"]["p50"] for r in lat if r["smtp_to_socket"]["p50"]]
    memory = results["memory"]
    tenk: dict[str, Any] | None = next((row for row in memory["rows"] if row["n"] >= 10_000), None)
    rows = [
        (
            "Dovecot delivery → browser p99 ≤ 20 ms",
            f"worst run: {_ms(worst_delivery_p99)} ms",
            worst_delivery_p99 <= 20,
        ),
        (
            f"SMTP → browser p50 ≤ 60 ms, p99 ≤ 200 ms at {at100['rate']:.0f} mails/s, {at100['sockets']} sockets",
            f"p50 {_ms(at100['smtp_to_socket']['p50'])} ms, p99 {_ms(at100['smtp_to_socket']['p99'])} ms",
            at100["smtp_to_socket"]["p50"] <= 60 and at100["smtp_to_socket"]["p99"] <= 200,
        ),
        (
            "≥ 8x faster than IDLE at p50 (same mails)",
            f"{min(speedups):.0f}x to {max(speedups):.0f}x",
            min(speedups) >= 8,
        ),
        (
            "zero IMAP connections per watched user",
            f"{results['cost']['ours_imap_connections']} IMAP connections for {results['cost']['ours'][-1]['n']} users",
            results["cost"]["ours_imap_connections"] == 0,
        ),
        (
            "≥ 300 mails/s sustained, zero loss",
            f"{results['capacity']['best']} mails/s",
            results["capacity"]["best"] >= 300,
        ),
        (
            "≥ 20,000 events/s out of one bridge process",
            f"{results['relay']['deliveries_per_s']:.0f} socket deliveries/s "
            f"({results['relay']['events_per_s']:.0f} events/s x fan-out {results['relay']['fanout']})",
            results["relay"]["deliveries_per_s"] >= 20_000,
        ),
        (
            "10,000 sockets in under 1 GiB",
            f"{tenk['rss_bytes'] / 2**20:.0f} MiB" if tenk else "not measured",
            tenk is not None and tenk["rss_bytes"] < 2**30,
        ),
        (
            "1,000 missed events replayed in under 250 ms",
            f"median {results['resume']['median_ms']:.0f} ms",
            results["resume"]["median_ms"] < 250,
        ),
    ]
    lines = ["## Goals", "", "| Goal | Measured | |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {_goal(ok)} |" for goal, measured, ok in rows]
    notes = results.get("shortfalls", [])
    if notes:
        lines += ["", "Where a goal is not met, what the profile says and what would fix it:", ""]
        lines += [f"- {note}" for note in notes]
    if results.get("fixes"):
        lines += ["", results["fixes"]]
    return [*lines, ""]


def _latency_section(latency: list[dict[str, Any]]) -> list[str]:
    plot = plot_latency(latency)
    lines = [
        "## 1. End-to-end latency, ours and IMAP IDLE, same mails",
        "",
        f"![latency]({PLOTS.name}/{plot})",
        "",
        "Open-loop SMTP sender; one IMAP IDLE connection per watched mailbox held at the same time as "
        "the sockets. Milliseconds, p50 / p95 / p99 / max.",
        "",
        "| mails/s | sockets | mails | SMTP → socket | Dovecot → socket | SMTP → IDLE | Dovecot → IDLE | "
        "IDLE / ours (p50) | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in latency:

        def cell(key: str, r: dict[str, Any] = r) -> str:
            p = r[key]
            return f"{_ms(p['p50'])} / {_ms(p['p95'])} / {_ms(p['p99'])} / {_ms(p['max'])}"

        lost = (r["mails"] - r["delivered"]) + (r["socket_deliveries_expected"] - r["socket_deliveries"])
        lines.append(
            f"| {r['rate']:.0f} | {r['sockets']} | {r['mails']} | {cell('smtp_to_socket')} | "
            f"{cell('delivery_to_socket')} | {cell('smtp_to_idle')} | {cell('delivery_to_idle')} | "
            f"{_ratio(r['smtp_to_idle']['p50'], r['smtp_to_socket']['p50'])} | {lost} |"
        )
    lines += [
        "",
        "Cores used during each step (from the first mail sent to the last delivery seen, at the sockets "
        "and at IDLE), by process group; `rest` is the machine's busy CPUs no group accounts for.",
        "",
    ]
    lines += _cpu_table(latency, ("mails/s", "sockets"), lambda r: (f"{r['rate']:.0f}", str(r["sockets"])))
    lines += _postfix_table(latency)
    return [*lines, ""]


def _postfix_table(latency: list[dict[str, Any]]) -> list[str]:
    """Postfix's own account of each step's deliveries (bench/postfix_log.py), seconds p50 / p95."""
    rows = [r for r in latency if r.get("postfix_delays")]
    if not rows:
        return []
    lines = [
        "",
        "Inside Postfix, from its log's `delays=` (seconds, p50 / p95): *waiting* is time in the queue "
        "manager for a delivery slot, *work* the delivery itself (to the content filter: its whole "
        "transaction, re-injection included; to Dovecot: the LMTP delivery with our hook).",
        "",
        "| mails/s | sockets | to the filter: waiting | to the filter: work | to Dovecot: waiting | to Dovecot: work |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["postfix_delays"]

        def cell(hop: str, part: str, d: dict[str, Any] = d) -> str:
            h = d.get(hop)
            return f"{h[part + '_p50']:.2f} / {h[part + '_p95']:.2f}" if h else "-"

        lines.append(
            f"| {r['rate']:.0f} | {r['sockets']} | {cell('filter', 'in_queue')} | {cell('filter', 'transfer')} | "
            f"{cell('lmtp', 'in_queue')} | {cell('lmtp', 'transfer')} |"
        )
    return lines


def _cpu_groups(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The groups any row measured: the usual ones in their order, then any other."""
    seen = {name for r in rows for name in r.get("cpu_cores", {})} - {MACHINE}
    return [g for g in GROUPS if g in seen] + sorted(seen - set(GROUPS))


def _cpu_cells(cpu: Mapping[str, float], groups: Sequence[str]) -> list[str]:
    cells = [f"{cpu[g]:.2f}" if g in cpu else "-" for g in groups]
    if MACHINE not in cpu:
        return [*cells, "-", "-"]
    rest = cpu[MACHINE] - sum(cpu.get(g, 0.0) for g in groups)
    return [*cells, f"{rest:.2f}", f"{cpu[MACHINE]:.2f}"]


def _cpu_table(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], key_cells: Callable[[Mapping[str, Any]], Sequence[str]]
) -> list[str]:
    """One row per step: its key cells, the window's length, then cores by group, rest and machine."""
    measured = [r for r in rows if r.get("cpu_cores")]
    if not measured:
        return ["(CPU by process group not measured in this run)"]
    groups = _cpu_groups(measured)
    header = [*keys, "window s", *groups, "rest", MACHINE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in measured:
        window = f"{r['cpu_window_s']:.1f}" if "cpu_window_s" in r else "-"
        cells = [*key_cells(r), window, *_cpu_cells(r["cpu_cores"], groups)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_section(cost: dict[str, Any]) -> list[str]:
    plot = plot_cost(cost)
    lines = [
        "## 2. Cost as watched users grow",
        "",
        f"![cost]({PLOTS.name}/{plot})",
        "",
        "| watched users | IDLE: IMAP connections | IDLE: Dovecot imap processes | IDLE: their memory (PSS) | "
        "IDLE: on the 30 s poll | ours: IMAP connections | ours: bridge memory added |",
        "|---|---|---|---|---|---|---|",
    ]
    ours = {row["n"]: row for row in cost["ours"]}
    for row in cost["idle"]:
        mine = ours.get(row["n"])
        added = f"{mine['rss_delta_bytes'] / 2**20:.1f} MiB" if mine else "-"
        lines.append(
            f"| {row['n']} | {row['connections']} | {row['imap_processes']} | {row['rss_bytes'] / 2**20:.0f} MiB | "
            f"{row['without_inotify']} | {cost['ours_imap_connections']} | "
            f"{added} |"
        )
    lines += [
        "",
        "IDLE keeps one Dovecot `imap` process per watched mailbox (Debian's default `client_limit = 1`), "
        "each with its own inotify instance. The kernel's default `fs.inotify.max_user_instances` "
        f"({cost['idle'][-1]['inotify_limit']}) is shared by every process of the mail user: beyond it, "
        "Dovecot falls back to polling every `mailbox_idle_check_interval` (30 s) for those connections "
        '("on the 30 s poll" above). Our path holds no IMAP connection per user at all.',
    ]
    return [*lines, ""]


def _capacity_section(capacity: dict[str, Any]) -> list[str]:
    plot = plot_capacity(capacity)
    lines = [
        "## 3. Highest sustained rate with nothing lost",
        "",
        f"![capacity]({PLOTS.name}/{plot})",
        "",
        f"Open-loop runs of {capacity['seconds']:.0f} s over {capacity['users']} recipients, stepping up "
        f"until a run loses anything or falls behind. Highest passing: **{capacity['best']} mails/s**.",
        "",
        "| mails/s | mails | SMTP errors | delivered | events at sockets | p50 / p99 ms | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in capacity["steps"]:
        lines.append(
            f"| {s['rate']} | {s['mails']} | {s['smtp_errors']} | {s['delivered']} | {s['events_received']} | "
            f"{_ms(s['latency']['p50'])} / {_ms(s['latency']['p99'])} | {'pass' if s['passed'] else 'fail'} |"
        )
    lines += ["", "Cores used during each step (its send and drain), by process group:", ""]
    lines += _cpu_table(capacity["steps"], ("mails/s",), lambda s: (str(s["rate"]),))
    return [*lines, ""]


def _relay_section(relay: dict[str, Any], memory: dict[str, Any]) -> list[str]:
    lines = ["## 4. Relay ceiling of one bridge process, and memory per socket", ""]
    lines += [f"- {key}: {value}" for key, value in relay.items() if not isinstance(value, (list, dict))]
    lines += ["", "Cores used in the steady-state window, by process group:", ""]
    lines += _cpu_table([relay], ("sockets",), lambda r: (str(r["sockets"]),))
    lines += ["", "| sockets | bridge RSS | per socket | connect time |", "|---|---|---|---|"]
    for row in memory["rows"]:
        lines.append(
            f"| {row['n']} | {row['rss_bytes'] / 2**20:.0f} MiB | {row['per_socket_bytes'] / 1024:.1f} KiB | "
            f"{row.get('connect_s', float('nan')):.1f} s |"
        )
    return [*lines, ""]


def _scale_section(rows: Sequence[Mapping[str, Any]], cpus: int) -> list[str]:
    one = rows[0]["deliveries_per_s"] or 1.0
    lines = [
        "## 5. Relay across several bridge processes",
        "",
        f"The relay ceiling of section 4 (same sockets, users and kind of event, unprofiled) with the "
        f"sockets spread over 1 to {len(rows)} `mail-bridge serve` processes, socket i on node i mod n, as a "
        "round-robin balancer places them: one user's sockets sit on different nodes, so every event reaches "
        "each node over its user's channel and each emits to its own sockets. Every process shares the same "
        f"{cpus} cores with Redis, the store and the load, so the growth here is bounded by the machine, not "
        "by the design; the bridge's cores and its CPU per event show where the time goes.",
        "",
        "| nodes | socket deliveries/s | events/s | vs 1 node | bridge cores | machine cores | bridge CPU ms/event "
        "| kept up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = r.get("cpu_cores", {})
        per_event = r.get("bridge_cpu_ms_per_event")
        lines.append(
            f"| {r['nodes']} | {r['deliveries_per_s']:.0f} | {r['events_per_s']:.0f} | "
            f"{r['deliveries_per_s'] / one:.2f}x | {cpu.get(BRIDGE, float('nan')):.2f} | "
            f"{cpu.get(MACHINE, float('nan')):.2f} of {cpus} | "
            f"{'-' if per_event is None else f'{per_event:.2f}'} | {'yes' if r['kept_up'] else 'no'} |"
        )
    lines += ["", "Cores used in each steady-state window, by process group:", ""]
    lines += _cpu_table(rows, ("nodes",), lambda r: (str(r["nodes"]),))
    return [*lines, ""]


def _resume_section(resume: dict[str, Any]) -> list[str]:
    return [
        "## 6. Resume: replaying missed events on reconnect",
        "",
        f"{resume['events']} events missed while disconnected, replayed on reconnect with `lastEventId`: "
        f"connect to last event median **{resume['median_ms']:.0f} ms** (min {resume['min_ms']:.0f}, "
        f"max {resume['max_ms']:.0f}; {len(resume.get('runs', []))} runs).",
        "",
    ]


def _profiled(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(what was measured, profile) for every window that was profiled."""
    found: list[tuple[str, Mapping[str, Any]]] = [
        (f"latency step, {r['rate']:.0f} mails/s, {r['sockets']} sockets", r["profile"])
        for r in results.get("latency", [])
        if "profile" in r
    ]
    relay = results.get("relay", {})
    if "profile" in relay:
        found.append((f"relay ceiling, {relay['sockets']} sockets", relay["profile"]))
    return found


def _function_table(title: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [f"| {title} | file | share | samples |", "|---|---|---|---|"]
    for row in rows:
        name = str(row["function"]).replace("|", "\\|")
        lines.append(f"| `{name}` | {row['file']} | {row['share']:.1%} | {row['samples']} |")
    return lines


def _repo_path(path: str) -> str:
    """A path inside the repository relative to it (the state dir is not in docs/, nor in git)."""
    try:
        return str(Path(path).relative_to(DOCS.parent))
    except ValueError:
        return path


def _profile_lines(where: str, service: str, result: Mapping[str, Any]) -> list[str]:
    if "error" in result:
        return [f"### {where}: {service}", "", f"Not profiled: {result['error']}", ""]
    lines = [
        f"### {where}: {service} (pid {result['pid']})",
        "",
        f"{result['samples']} samples in {result['seconds']:.1f} s: on average {result['busy']:.2f} threads not "
        f"idle (running, or runnable and waiting for a CPU), against {result['cpu_cores']:.2f} cores of CPU used "
        f"over the same window; raw stacks: `{_repo_path(result['raw'])}`.",
        "",
        "| leaf frame in | share | samples |",
        "|---|---|---|",
    ]
    lines += [f"| {a['area']} | {a['share']:.1%} | {a['samples']} |" for a in result["areas"]]
    lines += ["", *_function_table("bridge function (inclusive)", result["bridge_inclusive"]), ""]
    lines += [*_function_table("leaf function", result["leaves"]), ""]
    return lines


def _profiles_section(results: Mapping[str, Any]) -> list[str]:
    profiled = _profiled(results)
    if not profiled:
        return []
    lines = [
        "## Profiles",
        "",
        "py-spy on each bridge process over a step's window (see How it is measured). Shares are of all "
        "samples: by where the leaf (innermost) frame's code lives; the bridge's own functions counted "
        "inclusively (a sample counts for every bridge function on its stack, the start-up chain that "
        "leads to the event loop left out); the leaf functions overall. py-spy leaves idle threads out "
        "but not runnable ones: when a process's threads are not idle for more of the window than it "
        "has CPU, the difference is time spent waiting for a CPU (on a saturated machine, typically "
        "right after a loopback socket write woke the reader), and it lands on the frames where it waited.",
        "",
    ]
    for where, profile in profiled:
        for service, result in profile.get("services", {}).items():
            lines += _profile_lines(where, service, result)
    return lines
