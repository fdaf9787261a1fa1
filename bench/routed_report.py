"""The routed-delivery section of docs/benchmarks.md (bench/__main__.py's routed stage): each node's
share of the events published, and its CPU per event heard. Apart from bench/report.py so that it
needs no plotting library (its test runs with the rest in `make test`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def section(rows: Sequence[Mapping[str, Any]], cpus: int) -> list[str]:
    """Section 5b: routed delivery, each node hearing only its own accounts' events."""
    lines = [
        "## 5b. Routed delivery: each node hears only its own accounts",
        "",
        f"The relay ceiling of section 4 with 1 to {len(rows)} `mail-bridge serve` processes and every "
        "socket of user u on node u mod n, as a balancer that routes by account places them. A node "
        "subscribes to the channels of the accounts it has sockets of (bridge/fanout.py), so it hears "
        "(`mailbridge_fanout_messages_total`) only their events. Per node: the share of the events "
        "published that it heard, and its CPU per event heard; the goals are at most 30% heard each "
        "with 4 nodes, and a CPU per event heard within 20% of one node's. The "
        f"{cpus} cores are shared by every process here, Redis, the store and the load.",
        "",
        "| nodes | events/s | published | heard per node (share) | CPU ms per event heard, per node | kept up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        published = int(r.get("published", 0))
        heard = [int(h) for h in r.get("nodes_heard", [])]
        cpu = [float(c) for c in r.get("nodes_cpu_s", [])]
        shares = ", ".join(f"{h:,} ({h / max(1, published):.0%})" for h in heard)
        per_event = ", ".join(f"{1000 * c / h:.3f}" if h else "-" for c, h in zip(cpu, heard, strict=False))
        lines.append(
            f"| {r['nodes']} | {r['events_per_s']:.0f} | {published:,} | {shares} | {per_event} | "
            f"{'yes' if r['kept_up'] else 'no'} |"
        )
    return [*lines, ""]
