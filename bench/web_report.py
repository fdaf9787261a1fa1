"""The "Web client" section of docs/benchmarks.md, from bench.web's results (times in milliseconds).

`section(web)` is the section's lines, which bench.report puts in the whole report. `update(path, web)`
puts it into an existing report in place of the one there (or before the profiles), for a run of the
web stage alone (`python -m bench --stages web`), and its figures into the results.json beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.web import FIRST_PAGE

TITLE = "## 7. Web client with a long mailbox"
FIRST_ROW_GOAL_MS = 400
SEARCH_GOAL_MS = 200
LONG_FRAME_MS = 50
FIRST_ROW_MARKS = ("dom_content_loaded", "listing_sent", "listing_answered", "first_row", "painted")

# What the store does with these queries (read from FerretDB 1.24's SQLite backend, and shown by the
# store-alone column): it pushes only an `_id` equality down to SQLite, so any other filter or sort
# reads and decodes every document of the collection and sorts in Go; the limit ends the scan only
# when there is no sort.
STORE_NOTE = (
    "Searches with no word in them (and the quick filters) go to the store, and the embedded one "
    "(FerretDB 1.24 on SQLite) answers them by reading and decoding every document of the messages "
    "collection: its SQLite backend pushes only an `_id` equality down to SQLite, so the indexes the "
    "bridge creates are not used, and the newest-first sort is done in FerretDB after the whole scan."
)
# How the HTTP column is answered, whatever the goals: beside it, the store alone shows what the same
# query costs the store (and what every listing and search cost before bridge/listing_order.py).
ORDER_NOTE = (
    "The first page and every search above are answered from the mailbox's order in Redis "
    "(bridge/listing_order.py): the listing pages it, a search walks it testing its words on each "
    "message's searched text kept beside it, and the documents found are read by `_id` (and a search's "
    "whole query tested on them: bridge/search_match.py). The store-alone column is the same filter "
    "and order asked of the store, which FerretDB answers by a scan of every message stored; the first "
    "listing of a mailbox fills its order with one such scan (the HTTP column's p95)."
)


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}"


def _pair(p: Mapping[str, Any]) -> str:
    return f"{_ms(p['p50'])} / {_ms(p['p95'])}"


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _alone(web: Mapping[str, Any]) -> str:
    when = f", {web['date']}" if "date" in web else ""
    return f" From a run of this stage alone (`python -m bench --stages web`{when}), not the rest of the report's run."


def section(web: Mapping[str, Any], *, alone: bool = False) -> list[str]:
    """The section's lines; `alone`: from a run of this stage alone, not the run the report is of."""
    first, search, scroll, server = web["first_row"], web["search"], web["scroll"], web["server"]
    fill = web["fill"]
    lines = [
        TITLE,
        "",
        f"One account with {web['mails']:,} mails in INBOX, appended over IMAP ({fill['append_s']:.0f} s, "
        f"{fill['sessions']} sessions at once; all in the index {fill['indexed_s']:.1f} s after the last "
        f"append), the store's messages collection holding {server['documents']:,} documents. Headless Chromium "
        f"{web['chromium']} at 1280x800 (bench/web.py): each navigation in a fresh browser context (cold "
        "cache, nothing remembered), signed in by the client's own `/#token=` entry. Times in ms, p50 / p95."
        + (_alone(web) if alone else ""),
        "",
        "| Goal | Measured | |",
        "|---|---|---|",
        f"| First row ≤ {FIRST_ROW_GOAL_MS} ms after navigation | {_pair(first['painted'])} ms "
        f"(to the frame after the first row; {first['painted']['n']} navigations) | "
        f"{_goal(first['painted']['p50'] <= FIRST_ROW_GOAL_MS)} |",
        f"| Scrolling to the end without jank | {scroll['long_frames']} frames over {LONG_FRAME_MS} ms "
        f"(longest {_ms(scroll['frame']['max'])} ms) and {scroll['longtasks']} long tasks "
        f"({_ms(scroll['longtasks_ms'])} ms in all) while {scroll['rows']:,} rows loaded in "
        f"{scroll['total_ms'] / 1000:.1f} s | {_goal(scroll['long_frames'] == 0)} |",
        f"| Search results ≤ {SEARCH_GOAL_MS} ms p50, server and client | {_pair(search['total'])} ms from "
        f"Enter to the results shown ({search['total']['n']} searches) | "
        f"{_goal(search['total']['p50'] <= SEARCH_GOAL_MS)} |",
        "",
        "From the navigation's start: the page's DOMContentLoaded, the first listing request sent and "
        "answered (Resource Timing), the first row in the DOM, the frame after it.",
        "",
        "| DOMContentLoaded | listing sent | listing answered | first row | painted |",
        "|---|---|---|---|---|",
        "| " + " | ".join(_pair(first[key]) for key in FIRST_ROW_MARKS) + " |",
        "",
        "Each query: typed in the search box, from its Enter to the list showing the results; the search "
        "request's time in the browser; the same request over HTTP without a browser; the same filter "
        "and order straight to the store.",
        "",
        "| query | rows shown | Enter → shown | request (browser) | HTTP | store alone |",
        "|---|---|---|---|---|---|",
        f"| first page of INBOX | {FIRST_PAGE} | - | - | {_pair(server['http']['listing'])} | "
        f"{_pair(server['store']['listing'])} |",
    ]
    for name, q in search["by_query"].items():
        lines.append(
            f"| {name}: `{q['query']}` | {q['rows']} | {_pair(q['total'])} | {_pair(q['request'])} | "
            f"{_pair(server['http'][name])} | {_pair(server['store'][name])} |"
        )
    lines += [
        "",
        f"Scrolling: the list's end brought into view once a frame until nothing older was left; "
        f"{scroll['page_requests']} page requests of 100 (each {_pair(scroll['page_request'])} ms), "
        f"{scroll['frames']:,} frames ({_pair(scroll['frame'])} ms).",
        "",
    ]
    return lines + _where(web)


def _where(web: Mapping[str, Any]) -> list[str]:
    """Where the time of a missed goal goes, from the figures above."""
    first, server = web["first_row"], web["server"]
    listing_ms = first["listing_answered"]["p50"] - first["listing_sent"]["p50"]
    notes = []
    if first["painted"]["p50"] > FIRST_ROW_GOAL_MS:
        notes.append(
            f"First row: of its {_ms(first['painted']['p50'])} ms at p50, the listing request takes "
            f"{_ms(listing_ms)} ms (sent at {_ms(first['listing_sent']['p50'])} ms, once the page and its "
            f"script ran); the same request alone takes {_ms(server['http']['listing']['p50'])} ms over HTTP: "
            "on a first load it shares the bridge with the page's other requests (the folders and their "
            "counts over IMAP, the socket's connect), and the rows then take "
            f"{_ms(first['first_row']['p50'] - first['listing_answered']['p50'])} ms to render."
        )
    if web["search"]["total"]["p50"] > SEARCH_GOAL_MS:
        notes.append(
            f"Search: the request is {_ms(web['search']['request']['p50'])} ms of the "
            f"{_ms(web['search']['total']['p50'])} ms at p50; the store alone "
            f"{_ms(min(v['p50'] for k, v in server['store'].items() if k != 'listing'))} to "
            f"{_ms(max(v['p50'] for k, v in server['store'].items() if k != 'listing'))} ms a query."
        )
    scroll = web["scroll"]
    if scroll["long_frames"]:
        notes.append(
            f"Scrolling: the {scroll['page_requests']} pages took {_ms(scroll['page_request']['p50'])} ms each "
            f"at p50; the long tasks ({_ms(scroll['longtask']['p50'])} ms at p50, "
            f"{_ms(scroll['longtask']['max'])} at most) are the page's own work as pages come in: each is "
            "merged and sorted into the list of every row loaded, and the rows near the screen drawn again "
            "(a list over 200 rows draws only those: web/src/MessageList.jsx)."
        )
    searched = [v["p50"] for k, v in server["store"].items() if k != "listing"]
    missed = web["search"]["total"]["p50"] > SEARCH_GOAL_MS
    if missed and searched and min(searched) > 0.5 * web["search"]["request"]["p50"]:
        notes.append(STORE_NOTE)  # the store alone is most of each search's time
    return [*(f"- {n}" for n in [*notes, ORDER_NOTE]), ""]


def splice(report: str, lines: list[str]) -> str:
    """`report` with its web section replaced by `lines` (or, without one, put before the profiles)."""
    text = "\n".join(lines).rstrip("\n") + "\n\n"
    start = report.find(TITLE)
    if start < 0:
        start = next((report.find(h) for h in ("\n## Profiles", "\n## How it is measured") if h in report), -1)
        if start < 0:
            return report.rstrip("\n") + "\n\n" + text
        start += 1
        return report[:start] + text + report[start:]
    end = report.find("\n## ", start + len(TITLE))
    return report[:start] + text + (report[end + 1 :] if end >= 0 else "")


def update(path: Path, web: dict[str, Any]) -> None:
    """The web section of the report at `path` (and the web figures of the results.json beside it)
    from this run; the rest of the report is left as its own run wrote it."""
    path.write_text(splice(path.read_text() if path.exists() else "# Benchmarks\n", section(web, alone=True)))
    raw = path.parent / "benchmarks" / "results.json"
    if raw.exists():
        results = json.loads(raw.read_text())
        results["web"] = web
        raw.write_text(json.dumps(results, indent=1, default=str) + "\n")
