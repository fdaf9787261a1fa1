"""Postfix's delays= in its log, summarised per hop for a step's window (bench/postfix_log.py)."""
# ruff: noqa: E501 - log lines are as long as Postfix writes them

from __future__ import annotations

import datetime as dt

from bench.postfix_log import delays

# Lines as Postfix 3.7 writes them (long: a log line is one line).
LOG = """\
Nov 29 12:18:41 mail postfix/smtpd[11755]: connect from localhost[127.0.0.1]
Nov 29 12:18:42 mail postfix/smtp[11757]: 3E7EC56E20D: to=<lat00000@example.test>, relay=127.0.0.1[127.0.0.1]:41233, delay=0.04, delays=0.01/0.01/0/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: filtered and re-injected)
Nov 29 12:18:42 mail postfix/lmtp[11760]: 442DB56E210: to=<lat00000@example.test>, relay=127.0.0.1[127.0.0.1]:50291, delay=0.04, delays=0/0.02/0/0.01, dsn=2.0.0, status=sent (250 2.0.0 <lat00000@example.test> oPTWESIYDGuoLQAAg+zDdQ Saved)
Nov 29 12:18:43 mail postfix/smtp[11759]: 41E2556E20F: to=<lat00001@example.test>, relay=127.0.0.1[127.0.0.1]:41233, delay=7.2, delays=0/7.1/0.01/0.09, dsn=2.0.0, status=sent (250 2.0.0 Ok: filtered and re-injected)
Nov 29 12:19:50 mail postfix/smtp[11759]: 51E2556E20F: to=<lat00002@example.test>, relay=127.0.0.1[127.0.0.1]:41233, delay=1, delays=0/1/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)
"""


def at(text: str) -> float:
    return dt.datetime.strptime(f"2026 {text}", "%Y %b %d %H:%M:%S").timestamp()


def test_delays_per_hop_within_the_window() -> None:
    found = delays(LOG.splitlines(), at("Nov 29 12:18:42"), at("Nov 29 12:18:43"), year=2026)
    assert found["filter"]["n"] == 2  # the 12:19:50 line is outside the window
    assert found["filter"]["in_queue_p50"] == 3.555  # median of 0.01 and 7.1
    assert found["filter"]["in_queue_p95"] == 7.1
    assert found["lmtp"] == {
        "n": 1,
        "before_queue_p50": 0.0,
        "before_queue_p95": 0.0,
        "in_queue_p50": 0.02,
        "in_queue_p95": 0.02,
        "connect_p50": 0.0,
        "connect_p95": 0.0,
        "transfer_p50": 0.01,
        "transfer_p95": 0.01,
    }


def test_no_deliveries_in_the_window_is_empty() -> None:
    assert delays(LOG.splitlines(), at("Nov 29 13:00:00"), at("Nov 29 13:00:10"), year=2026) == {}
