"""bench.baseline: the arithmetic that divides our path's figures by the bare server's."""

from __future__ import annotations

import math
from typing import Any

from bench.baseline import (
    compare,
    cpu_ms_per_mail,
    goal_rows,
    parts_lines,
    redis_per_mail,
    report_lines,
    visible_latencies,
)
from bench.latency import percentiles
from bench.smtp_load import Sent


def sent(index: int, recipient: str, due: float) -> Sent:
    return Sent(index=index, subject=f"s {index}", recipient=recipient, message_id=f"<{index}@x>", due=due)


def test_each_mail_is_visible_at_the_first_exists_that_counts_it() -> None:
    mails = [sent(0, "a", 10.0), sent(1, "b", 10.5), sent(2, "a", 11.0), sent(3, "a", 12.0)]
    initial = {"a": 4, "b": 0}
    # a: one EXISTS covers its first two mails (IDLE coalesces), the third never shows; b: seen.
    arrivals = [("a", 11.3, 6), ("b", 10.6, 1), ("a", 10.2, 4)]
    latencies, missing = visible_latencies(mails, initial, arrivals)
    assert sorted(round(x, 3) for x in latencies) == [0.1, 0.3, 1.3]
    assert missing == 1


def test_cpu_per_mail_counts_the_server_not_the_load() -> None:
    step = {"cpu_window_s": 10.0, "cpu_cores": {"postfix": 0.2, "dovecot": 0.3, "load": 0.5, "machine": 1.0}}
    ms = cpu_ms_per_mail(step, 500)
    assert ms["postfix"] == 4.0 and ms["dovecot"] == 6.0 and ms["server"] == 10.0 and "load" not in ms
    assert cpu_ms_per_mail({"cpu_window_s": 0}, 500) == {} and cpu_ms_per_mail(step, 0) == {}


def test_our_path_is_divided_by_the_bare_servers_at_the_same_rate() -> None:
    latency = percentiles([0.01, 0.02])
    bare_step = {
        "rate": 50,
        "cpu_ms_per_mail": {"postfix": 4.0, "dovecot": 4.0, "server": 8.0},
        "smtp_to_visible": latency,
    }
    bare = {"users": 100, "steps": [bare_step], "capacity": {"best": 200}}
    ours = {
        "rate": 50,
        "sockets": 100,
        "mails": 500,
        "cpu_window_s": 10.0,
        "cpu_cores": {"postfix": 0.3, "dovecot": 0.5, "redis": 0.1, "ferretdb": 0.1, "bridge": 0.6},
        "smtp_to_socket": latency,
        "smtp_to_idle": latency,
        "delivery_to_socket": latency,
    }
    other = {**ours, "sockets": 1000}  # ten sockets per user: not the bare step's load
    result = compare(bare, [other, ours], {"best": 50})
    (row,) = result["rows"]
    assert math.isclose(row["ours_ms"]["server"], 32.0) and math.isclose(row["server_ratio"], 4.0)
    assert math.isclose(row["ours_own_ms"], 12.0)
    assert result["sustained"] == {"bare": 200, "ours": 50, "ratio": 0.25}
    results = {"against_bare": result, "bare": bare, "latency": [other, ours], "relay": {"deliveries_per_s": 13_000}}
    text = "\n".join(report_lines(results))
    assert "| 50 | 8.0 | 32.0 | 4.00x |" in text
    assert "| whole-server CPU per mail with us ≤ 1.3x the bare server's | 4.00x at 50 mails/s | **not met** |" in text
    assert "highest sustained rate ≥ 80% of the bare server's | 25% | **not met**" in text


def lat_row(rate: float, sockets: int, smtp_p99: float, delivery_p99: float) -> dict[str, Any]:
    return {
        "rate": rate,
        "sockets": sockets,
        "smtp_to_socket": {"p50": 1.0, "p99": smtp_p99},
        "delivery_to_socket": {"p50": 1.0, "p99": delivery_p99},
    }


def test_every_goal_is_judged_from_the_runs_figures() -> None:
    visible = {"p50": 500.0, "p99": 520.0}
    bare = {"users": 100, "steps": [{"rate": r, "smtp_to_visible": visible} for r in (10, 50, 100)]}
    results = {
        "bare": bare,
        "against_bare": {"rows": [], "sustained": {"bare": 150, "ours": 100, "ratio": 100 / 150}},
        # 80% of 150 is 120: the 100 mails/s step with the most sockets is the one judged; half is 60.
        "latency": [
            lat_row(100, 1000, 560.0, 9.0),
            lat_row(50, 1000, 30.0, 25.0),
            lat_row(10, 1000, 20.0, 5.0),
            lat_row(100, 100, 9999.0, 9999.0),
        ],
        "relay": {"deliveries_per_s": 21_000},
        "scale": [{"nodes": n, "bridge_cpu_ms_per_event": ms} for n, ms in ((1, 0.70), (2, 0.75), (3, 0.84))],
        "memory": {"rows": [{"n": 1000, "rss_bytes": 2**20}, {"n": 10_000, "rss_bytes": 290 * 2**20}]},
        "resume": {"median_ms": 51.0},
    }
    goals = {goal.split(" (")[0].split(",")[0]: (measured, ok) for goal, measured, ok in goal_rows(results)}
    assert goals["highest sustained rate ≥ 80% of the bare server's"] == ("67%", False)
    assert goals["at 80% of the bare rate"] == ("560 ms against 570 ms", True)
    assert goals["Dovecot → socket p99 ≤ 20 ms up to half that rate"] == (
        "worst 25 ms (steps at 50, 10 mails/s)",
        False,
    )
    assert goals["one bridge process ≥ 20"] == ("21,000", True)
    assert goals["bridge CPU per delivered event flat"] == ("0.70 → 0.75 → 0.84 ms (+20% at most)", False)
    assert goals["10"] == ("290 MiB", True)
    assert goals["1"] == ("median 51 ms", False)


def test_redis_commands_are_counted_per_mail() -> None:
    step = {"redis_calls": {"xadd": 100, "evalsha": 50, "hello": 25, "(connections)": 25}}
    total, connections, by_command = redis_per_mail(step, 50)
    assert (total, connections) == (3.5, 0.5)
    assert by_command == [("xadd", 2.0), ("evalsha", 1.0), ("hello", 0.5)]
    assert redis_per_mail({}, 50) == (0.0, 0.0, [])


def test_each_part_is_priced_against_the_bare_server_and_our_whole_path() -> None:
    def step(postfix: float, dovecot: float, **more: float) -> dict[str, Any]:
        return {
            "rate": 50.0,
            "mails": 500,
            "cpu_window_s": 10.0,
            "cpu_cores": {"postfix": postfix, "dovecot": dovecot, **more},
        }

    bare = {"steps": [step(0.15, 0.10)], "parts": {"hook": step(0.15, 0.25, redis=0.01), "dedupe": step(0.15, 0.12)}}
    text = "\n".join(parts_lines(bare, step(0.3, 0.4, redis=0.05, bridge=0.5)))
    assert "| bare | 3.0 | 2.0 | - | - | 5.0 |" in text
    assert "| + push hook (and Redis) | 3.0 | 5.0 | 0.2 | - | 8.2 |" in text
    assert "| with us (everything) | 6.0 | 8.0 | 1.0 | 10.0 | 25.0 |" in text
    assert (
        "Dovecot spends 6.0 ms more per mail than bare; priced alone, the hook 3.0 ms, the dedupe 0.4 ms; 2.6 ms"
        in text
    )
    assert "Postfix spends 3.0 ms more" in text
    assert parts_lines({"steps": [step(0.1, 0.1)]}, None) == []
