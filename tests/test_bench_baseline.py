"""bench.baseline: the arithmetic that divides our path's figures by the bare server's."""

from __future__ import annotations

import math

from bench.baseline import compare, cpu_ms_per_mail, report_lines, visible_latencies
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
    }
    other = {**ours, "sockets": 1000}  # ten sockets per user: not the bare step's load
    result = compare(bare, [other, ours], {"best": 50})
    (row,) = result["rows"]
    assert math.isclose(row["ours_ms"]["server"], 32.0) and math.isclose(row["server_ratio"], 4.0)
    assert math.isclose(row["ours_own_ms"], 12.0)
    assert result["sustained"] == {"bare": 200, "ours": 50, "ratio": 0.25}
    text = "\n".join(report_lines(result, bare, {"deliveries_per_s": 13_000}))
    assert "| 50 | 8.0 | 32.0 | 4.00x |" in text
    assert "| whole-server CPU per mail with us ≤ 1.3x the bare server's | 4.00x at 50 mails/s | **not met** |" in text
    assert "highest sustained rate ≥ 80% of the bare server's | 25% | **not met**" in text
