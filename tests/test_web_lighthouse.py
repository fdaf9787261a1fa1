"""Lighthouse on the signed-in inbox (issue 20): performance, accessibility and best practices.

Lighthouse is web/package.json's pinned devDependency, 12.2.3: the last line that runs on our Node
20 (13 needs Node 22). It drives Debian's Chromium (CHROME_PATH), headless, with the desktop preset,
the three categories only, on the test stack, loopback only. It audits the inbox signed in: the
page it loads is the client's own `/#token=<jwt>` entry (web/src/session.js), the token taken from
a real login; the fragment never reaches a server.

The floor asserted is accessibility ≥ 90 (axe-core checks the same screens in tests/test_web_a11y.py,
so less would be a regression of ours). Performance and best practices are reported, not asserted:
the machine is shared, so a performance score here says as much about the neighbours as about us.
`pytest --lighthouse-report docs/lighthouse.md` writes the scores and every audit that fell short.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.chromium import CHROMIUM, CHROMIUM_ARGS
from bridge.stack.launcher import StackInfo
from tests.common import REPO, TEST_STATE, Account, login
from tests.mailtools import send_smtp
from tests.test_web_a11y import demo_mail

pytestmark = pytest.mark.e2e

LIGHTHOUSE = REPO / "web" / "node_modules" / ".bin" / "lighthouse"
CATEGORIES = ("performance", "accessibility", "best-practices")
ACCESSIBILITY_FLOOR = 90


async def lighthouse(url: str, out: Path) -> dict[str, Any]:
    """One Lighthouse run on `url`; its JSON report."""
    flags = " ".join(["--headless=new", *CHROMIUM_ARGS])
    process = await asyncio.create_subprocess_exec(
        str(LIGHTHOUSE),
        url,
        "--preset=desktop",
        f"--only-categories={','.join(CATEGORIES)}",
        "--output=json",
        f"--output-path={out}",
        f"--chrome-flags={flags}",
        "--quiet",
        env={**os.environ, "CHROME_PATH": CHROMIUM},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=240)  # a ceiling against hangs
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode(errors="replace")[-4000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _value(audit: dict[str, Any]) -> str:
    """An audit's figure and up to three of the elements it names (their HTML, shortened)."""
    items = (audit.get("details") or {}).get("items") or []
    nodes = [i["node"]["snippet"][:100] for i in items if isinstance(i.get("node"), dict) and "snippet" in i["node"]]
    value = f": {audit['displayValue']}" if audit.get("displayValue") else ""
    return value + ("; " + ", ".join(f"`{n}`" for n in nodes[:3]) if nodes else "")


def shortfalls(report: dict[str, Any], *, weighted: bool = True) -> dict[str, list[str]]:
    """Per category, the audits that did not pass (score under 0.9), the worst first, as "title
    (score): value" lines: those that count towards the score, or (`weighted` false) the diagnostics
    that do not."""
    audits = report["audits"]
    found: dict[str, list[str]] = {}
    for name in CATEGORIES:
        refs = [audits[r["id"]] for r in report["categories"][name]["auditRefs"] if (r["weight"] > 0) == weighted]
        failing = sorted((a for a in refs if a["score"] is not None and a["score"] < 0.9), key=lambda a: a["score"])
        found[name] = [f"{a['title']} ({a['score']:.2f}){_value(a)}" for a in failing]
    return found


def markdown(report: dict[str, Any], scores: dict[str, int]) -> str:
    lines = [
        "# Lighthouse on the inbox",
        "",
        "Written by `pytest tests/test_web_lighthouse.py --lighthouse-report docs/lighthouse.md` "
        f"(Lighthouse {report['lighthouseVersion']}, {report['environment']['hostUserAgent'].split(') ')[-1]}, "
        "headless, desktop preset) on the test stack's signed-in inbox: a few messages, loopback only, "
        "a machine shared with other work (performance moves with it).",
        "",
        "| category | score |",
        "|---|---|",
        *(f"| {report['categories'][name]['title']} | {scores[name]} |" for name in CATEGORIES),
        "",
    ]
    diagnostics = shortfalls(report, weighted=False)
    for name, failing in shortfalls(report).items():
        title = report["categories"][name]["title"]
        lines += [f"## {title}: audits under 0.9", "", *(f"- {line}" for line in failing or ["none"]), ""]
        if diagnostics[name]:
            lines += ["Diagnostics under 0.9 (not counted in the score):", ""]
            lines += [*(f"- {d}" for d in diagnostics[name]), ""]
    metrics = report["audits"]
    lines += [
        "## Timings",
        "",
        *(
            f"- {metrics[key]['title']}: {metrics[key]['displayValue']}"
            for key in ("first-contentful-paint", "largest-contentful-paint", "total-blocking-time", "speed-index")
            if key in metrics and metrics[key].get("displayValue")
        ),
        "",
    ]
    return "\n".join(lines)


async def test_lighthouse_scores_the_signed_in_inbox(
    stack: StackInfo, account: Account, http: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    tag = uuid.uuid4().hex[:4]
    await asyncio.to_thread(send_smtp, stack, demo_mail(account.email, tag))
    token = await login(http, account)
    out = TEST_STATE / f"lighthouse-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = await lighthouse(f"{stack.web_url}/#token={token}", out)
    out.unlink()  # it holds the token

    assert not report.get("runtimeError"), report.get("runtimeError")
    # Lighthouse audited the signed-in inbox, not the sign-in form: only a signed-in client asks for its listing.
    requests = [r["url"] for r in report["audits"]["network-requests"]["details"]["items"]]
    assert any(u.startswith(f"{stack.web_url}/api/v1/email/inbox?account=") for u in requests), requests
    # Loopback only: the page asked no other host for anything (data: and blob: URLs stay in the page).
    local = (stack.web_url, stack.web_url.replace("http", "ws", 1), "data:", "blob:")
    assert all(u.startswith(local) for u in requests), requests
    scores = {name: round(report["categories"][name]["score"] * 100) for name in CATEGORIES}
    path = request.config.getoption("--lighthouse-report")
    if path:
        Path(path).write_text(markdown(report, scores))
    assert scores["accessibility"] >= ACCESSIBILITY_FLOOR, (scores, shortfalls(report)["accessibility"])
    assert all(0 <= s <= 100 for s in scores.values()), scores
