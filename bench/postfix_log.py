"""Where a mail's time goes inside Postfix, from Postfix's own log.

Every delivery line carries `delays=a/b/c/d` (postconf(5), "delay_logging_resolution_limit"):
a = before the queue manager (smtpd, cleanup), b = in the queue manager (waiting for a delivery
slot), c = connection set-up, d = transmission (for the content filter: the filter's whole work,
re-injection included). In the stack, Postfix's `smtp` client only talks to the content filter
(the `mail-bridge` transport) and `lmtp` only to Dovecot, so the two are told apart by program.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LINE = re.compile(
    r"^(?P<when>\w{3} [ \d]\d \d\d:\d\d:\d\d) \S+ postfix/(?P<program>smtp|lmtp)\[\d+\]: \w+: to=<[^>]*>,"
    r".*? delays=(?P<a>[\d.]+)/(?P<b>[\d.]+)/(?P<c>[\d.]+)/(?P<d>[\d.]+),"
)
HOPS = {"smtp": "filter", "lmtp": "lmtp"}
PARTS = ("before_queue", "in_queue", "connect", "transfer")


def _timestamp(text: str, year: int) -> float:
    return dt.datetime.strptime(f"{year} {text}", "%Y %b %d %H:%M:%S").timestamp()


def delays(lines: Iterable[str], start: float, end: float, *, year: int) -> dict[str, dict[str, Any]]:
    """{"filter" | "lmtp": {"n", "<part>_p50", "<part>_p95" (seconds)}} for the deliveries logged
    between `start` and `end` (Unix seconds; the log has whole seconds, so both are widened by 1)."""
    found: dict[str, list[tuple[float, ...]]] = {hop: [] for hop in HOPS.values()}
    for line in lines:
        match = LINE.match(line)
        if match is None:
            continue
        when = _timestamp(match["when"], year)
        if start - 1 <= when <= end + 1:
            found[HOPS[match["program"]]].append(tuple(float(match[p]) for p in "abcd"))
    return {hop: _summary(rows) for hop, rows in found.items() if rows}


def _summary(rows: list[tuple[float, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for index, part in enumerate(PARTS):
        values = sorted(row[index] for row in rows)
        out[f"{part}_p50"] = round(statistics.median(values), 3)
        out[f"{part}_p95"] = round(values[min(len(values) - 1, int(0.95 * len(values)))], 3)
    return out


def step_delays(log: Path, start: float, end: float) -> dict[str, dict[str, Any]]:
    """`delays` of the stack's Postfix log (local time, this year) over one step."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    return delays(text.splitlines(), start, end, year=dt.datetime.fromtimestamp(start).year)
