"""bench.web_report: the web section says met or not met against each goal, and replaces itself in a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.web_report import STORE_NOTE, TITLE, section, splice, update


def pct(p50: float, p95: float, n: int = 8) -> dict[str, float]:
    return {"n": n, "p50": p50, "p95": p95, "p99": p95, "max": p95}


def results(*, painted: float, search: float, long_frames: int, store: float) -> dict[str, Any]:
    queries = {"no result": "zzqx", "a sender (200)": "from:sender07@outside.test"}
    return {
        "mails": 10_000,
        "chromium": "140.0",
        "fill": {"sessions": 4, "append_s": 30.0, "indexed_s": 0.1},
        "server": {
            "documents": 10_000,
            "http": {name: pct(store + 20, store + 40) for name in ["listing", *queries]},
            "store": {name: pct(store, store + 10) for name in ["listing", *queries]},
        },
        "first_row": {
            "dom_content_loaded": pct(100, 120),
            "listing_sent": pct(150, 170),
            "listing_answered": pct(painted - 50, painted),
            "first_row": pct(painted - 10, painted + 10),
            "painted": pct(painted, painted + 20),
        },
        "search": {
            "total": pct(search, search + 30, 6),
            "request": pct(search - 20, search, 6),
            "by_query": {
                name: {"query": q, "rows": 3, "total": pct(search, search), "request": pct(search - 20, search)}
                for name, q in queries.items()
            },
        },
        "scroll": {
            "total_ms": 12_000.0,
            "rows": 10_000,
            "frames": 700,
            "frame": pct(17, 40, 700),
            "long_frames": long_frames,
            "longtasks": long_frames,
            "longtasks_ms": 60.0 * long_frames,
            "longtask": pct(60, 80, max(long_frames, 1)),
            "page_requests": 99,
            "page_request": pct(90, 120, 99),
        },
    }


def test_the_goals_are_set_against_the_figures() -> None:
    met = "\n".join(section(results(painted=300, search=150, long_frames=0, store=40)))
    assert met.startswith(TITLE)
    assert met.count("| met |") == 3 and "not met" not in met and STORE_NOTE not in met
    assert "| 300 / 320 ms" in met and "`from:sender07@outside.test`" in met

    missed = "\n".join(section(results(painted=1500, search=900, long_frames=4, store=1200)))
    assert missed.count("**not met**") == 3
    assert "First row: of its 1,500 ms at p50, the listing request takes" in missed
    assert STORE_NOTE in missed  # the store alone is most of the request's time
    assert "Scrolling: the 99 pages took" in missed


def test_a_web_only_run_replaces_its_section_and_nothing_else(tmp_path: Path) -> None:
    report = "# Benchmarks\n\nintro\n\n## 6. Resume\n\nfast\n\n## Profiles\n\nstacks\n"
    first = splice(report, [TITLE, "", "old figures"])
    assert first.index("## 6. Resume") < first.index("old figures") < first.index("## Profiles")
    second = splice(first, [TITLE, "", "new figures"])
    assert "old figures" not in second and second.count(TITLE) == 1
    assert second.replace("new figures", "old figures") == first

    docs = tmp_path / "benchmarks.md"
    docs.write_text(report)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.json").write_text(json.dumps({"relay": {"kept": True}}))
    web = results(painted=300, search=150, long_frames=0, store=40)
    update(docs, web)
    assert "## Profiles\n\nstacks\n" in docs.read_text() and TITLE in docs.read_text()
    assert "From a run of this stage alone" in docs.read_text() and "stage alone" not in "\n".join(section(web))
    raw = json.loads((tmp_path / "benchmarks" / "results.json").read_text())
    assert raw["relay"] == {"kept": True} and raw["web"]["mails"] == 10_000
