"""bench.routed_report: each node's share of the events published, and its CPU per event heard,
from the routed stage's rows."""

from __future__ import annotations

from bench.routed_report import section as routed_section


def test_each_nodes_share_and_cpu_per_event_heard_are_shown() -> None:
    rows = [
        {"nodes": 1, "events_per_s": 1500.0, "published": 10_000, "nodes_heard": [10_000], "nodes_cpu_s": [7.5],
         "kept_up": True},
        {"nodes": 2, "events_per_s": 1400.0, "published": 8_000, "nodes_heard": [4_100, 3_900],
         "nodes_cpu_s": [3.1, 2.9], "kept_up": False},
    ]  # fmt: skip
    text = "\n".join(routed_section(rows, cpus=2))
    assert "| 1 | 1500 | 10,000 | 10,000 (100%) | 0.750 | yes |" in text
    assert "| 2 | 1400 | 8,000 | 4,100 (51%), 3,900 (49%) | 0.756, 0.744 | no |" in text


def test_a_node_that_heard_nothing_shows_no_cost_per_event() -> None:
    rows = [{"nodes": 2, "events_per_s": 10.0, "published": 0, "nodes_heard": [0, 5], "nodes_cpu_s": [0.1, 0.2],
             "kept_up": True}]  # fmt: skip
    assert "| 2 | 10 | 0 | 0 (0%), 5 (500%) | -, 40.000 | yes |" in "\n".join(routed_section(rows, cpus=2))
