"""The web client with a long mailbox: one account holding 10,000 mails in INBOX, in headless Chromium.

Issue 20's goals for the client: the first row ≤ 400 ms after navigation, scrolling to the end
without jank, search results ≤ 200 ms at p50 (server and client together). `web_stage` returns a
plain dict (times in milliseconds) that bench.report turns into the "Web client" section:

- **fill**: the mails go in over IMAP APPEND (several connections at once), the path the index
  learns of them by (the Lua hook's MessageAppend events, then the indexer); the stage waits until
  the index counts them all in INBOX.
- **first row**: a fresh browser context per run (cold cache, nothing remembered in sessionStorage),
  signed in by the client's own `/#token=` entry (web/src/session.js), timed from the navigation's
  start (performance.timeOrigin) to the first row in the DOM and to the frame after it (painted).
  Beside it, from Resource Timing: when the first listing request was sent and answered.
- **scroll**: the list's scroll position set to its end once a frame until no older page is left
  (the client's own infinite scroll loads each page after its first 50 by 100); total time, and jank as long tasks
  (PerformanceObserver "longtask", ≥ 50 ms) and frames longer than 50 ms.
- **search**: a query typed in the search box, timed in the page from its Enter keydown to the list
  showing the results (aria-busy back to false); the server's share is the listing request's time
  in Resource Timing, and separately the same query over HTTP from here, without a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiohttp
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from pymongo import MongoClient

from bench.chromium import CHROMIUM, CHROMIUM_ARGS
from bench.latency import percentiles
from bench.stack import BenchStack, User
from bridge.search_query import parse_search
from bridge.store_reads import NEWEST, to_mongo_filter

MAILS = 10_000
CONNECTIONS = 4  # IMAP sessions appending at once
WORDS = ("invoice", "meeting", "travel", "quarterly", "lunch", "release", "budget", "holiday", "review", "contract")
SENDERS = 50
DESKTOP = {"width": 1280, "height": 800}
FIRST_PAGE = 50  # the client's first page of a view (web/src/Mail.jsx); each further one 100


def mail(n: int, to: str) -> bytes:
    """Mail `n` of the fill: subjects from a small vocabulary plus a unique reference, 50 senders."""
    m = EmailMessage()
    sender = n % SENDERS
    m["From"] = f"Sender {sender:02d} <sender{sender:02d}@outside.test>"
    m["To"] = to
    m["Subject"] = f"{WORDS[n % len(WORDS)]} {WORDS[(n // 7) % len(WORDS)]} ref-{n:05d}"
    m["Date"] = format_datetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n))
    m["Message-ID"] = f"<web-bench-{n}@outside.test>"
    m.set_content(f"Message {n} of the web benchmark's mailbox.\n")
    return m.as_bytes()


def _append(host: str, port: int, user: User, numbers: Sequence[int]) -> None:
    imap = imaplib.IMAP4(host, port)
    try:
        imap.login(user.email, user.password)
        for n in numbers:
            imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()), mail(n, user.email))
    finally:
        imap.logout()


async def fill(stack: BenchStack, user: User, count: int) -> dict[str, float]:
    """`count` mails appended over IMAP, then the wait until the index holds them all."""
    host, port = stack.info.imap["host"], int(stack.info.imap["port"])
    started = time.monotonic()
    # The first mail alone: Dovecot 2.3 creates the account's mailbox list index on first use, and
    # sessions that do so at once can panic on its lock (fcntl's EDEADLK, seen in a bench run).
    await asyncio.to_thread(_append, host, port, user, [0])
    shares = [range(c, count, CONNECTIONS)[1 if c == 0 else 0 :] for c in range(CONNECTIONS)]
    await asyncio.gather(*(asyncio.to_thread(_append, host, port, user, share) for share in shares))
    appended = time.monotonic()
    headers = {"Authorization": f"Bearer {stack.token(user.email)}"}
    async with aiohttp.ClientSession(base_url=stack.info.web_url, headers=headers) as http:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            async with http.get("/api/v1/mailboxes", params={"account": user.email}) as r:
                # The bridge may answer 503 while the store is busy with the appends' index writes.
                boxes = (await r.json())["mailboxes"] if r.status == 200 else []
            if any(b["name"] == "INBOX" and b["total"] >= count for b in boxes):
                break
            await asyncio.sleep(1)
        else:
            raise RuntimeError(f"the index never held {count} mails")
    return {"sessions": CONNECTIONS, "append_s": appended - started, "indexed_s": time.monotonic() - appended}


# Installed before the client's own script: records what the measures read back.
INSTRUMENT = """
window.__bench = { longtasks: [], firstRow: null, firstPaint: null };
// How many rows a list holds: a long one draws only those near the screen, each with aria-setsize.
window.__listed = (list) =>
  Number(list.querySelector("li.item")?.getAttribute("aria-setsize")) || list.querySelectorAll("li.item").length;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longtasks.push([e.startTime, e.duration]);
}).observe({ type: "longtask", buffered: true });
new MutationObserver((_, observer) => {
  if (!document.querySelector('ul[aria-label="Messages"] li.item')) return;
  observer.disconnect();
  window.__bench.firstRow = performance.now();
  requestAnimationFrame(() => setTimeout(() => { window.__bench.firstPaint = performance.now(); }, 0));
}).observe(document, { childList: true, subtree: true });
"""

FIRST_ROW = """
async (limitMs) => {
  while (window.__bench.firstPaint === null) {
    if (performance.now() > limitMs) throw new Error("no row within the limit");
    await new Promise((r) => setTimeout(r, 10));
  }
  const listing = performance.getEntriesByType("resource").find((e) => e.name.includes("/api/v1/email/inbox"));
  const nav = performance.getEntriesByType("navigation")[0];
  return {
    first_row_ms: window.__bench.firstRow,
    painted_ms: window.__bench.firstPaint,
    dom_content_loaded_ms: nav ? nav.domContentLoadedEventEnd : null,
    listing_sent_ms: listing ? listing.requestStart : null,
    listing_answered_ms: listing ? listing.responseEnd : null,
    longtasks: window.__bench.longtasks.filter(([s]) => s < window.__bench.firstPaint).length,
  };
}
"""

SCROLL = """
async (limitMs) => {
  const list = document.querySelector('ul[aria-label="Messages"]');
  const t0 = performance.now();
  const frames = [];
  let last = t0;
  for (;;) {
    list.scrollTop = list.scrollHeight;
    await new Promise((r) => requestAnimationFrame(r));
    const now = performance.now();
    frames.push(now - last);
    last = now;
    if (!list.querySelector("li.more") && list.getAttribute("aria-busy") === "false") break;
    if (now - t0 > limitMs) throw new Error("the list kept offering older messages");
  }
  const t1 = performance.now();
  const tasks = window.__bench.longtasks.filter(([s]) => s >= t0 && s <= t1).map(([, d]) => d);
  const pages = performance.getEntriesByType("resource")
    .filter((e) => e.name.includes("/api/v1/email/inbox") && e.name.includes("cursor=") && e.startTime >= t0)
    .map((e) => e.duration);
  return {
    total_ms: t1 - t0,
    rows: window.__listed(list),
    frames,
    longtasks: tasks,
    page_requests_ms: pages,
  };
}
"""

SEARCH_ARM = """
() => {
  const list = document.querySelector('ul[aria-label="Messages"]');
  const input = document.querySelector('input[aria-label="Search mail"]');
  window.__search = new Promise((resolve) => {
    let started = null;
    let busy = false;
    const enter = (e) => { if (e.key === "Enter") started = performance.now(); };
    input.addEventListener("keydown", enter, { capture: true, once: true });
    const observer = new MutationObserver(() => {
      if (started === null) return;
      if (list.getAttribute("aria-busy") === "true") busy = true;
      else if (busy) {
        observer.disconnect();
        const shown = performance.now();
        const request = performance.getEntriesByType("resource")
          .filter((e) => e.name.includes("/api/v1/email/inbox") && e.name.includes("q=") && e.startTime >= started)
          .pop();
        resolve({
          total_ms: shown - started,
          request_ms: request ? request.duration : null,
          rows: window.__listed(list),
        });
      }
    });
    observer.observe(list, { attributes: true, attributeFilter: ["aria-busy"] });
  });
}
"""


def _ms(values: Sequence[float]) -> dict[str, float]:
    """percentiles() of millisecond figures (it takes seconds)."""
    return percentiles([v / 1000 for v in values])


async def _signed_in(browser: Browser, stack: BenchStack, user: User) -> tuple[Page, dict[str, Any]]:
    """A fresh context (cold cache, empty storage), navigated signed in; the first row's timings."""
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.add_init_script(INSTRUMENT)
    await page.goto(f"{stack.info.web_url}/#token={stack.token(user.email)}")
    first: dict[str, Any] = await page.evaluate(FIRST_ROW, 120_000)
    return page, first


async def settled(page: Page) -> None:
    """Until the page has asked nothing for half a second: what it asked after its first rows (the
    listing again once the socket is live, the category counts) is answered before the next
    navigation, which would otherwise share the store with it."""
    with contextlib.suppress(PlaywrightTimeoutError):  # measured all the same, the store then shared
        await page.wait_for_load_state("networkidle", timeout=60_000)


async def first_rows(browser: Browser, stack: BenchStack, user: User, runs: int) -> dict[str, Any]:
    samples = []
    for _ in range(runs):
        page, first = await _signed_in(browser, stack, user)
        samples.append(first)
        await settled(page)
        await page.context.close()

    def column(key: str) -> list[float]:
        return [float(s[key]) for s in samples if s[key] is not None]

    return {
        "runs": samples,
        "first_row": _ms(column("first_row_ms")),
        "painted": _ms(column("painted_ms")),
        "listing_sent": _ms(column("listing_sent_ms")),
        "listing_answered": _ms(column("listing_answered_ms")),
        "dom_content_loaded": _ms(column("dom_content_loaded_ms")),
    }


async def scroll_to_end(browser: Browser, stack: BenchStack, user: User) -> dict[str, Any]:
    page, _first = await _signed_in(browser, stack, user)
    try:
        await page.wait_for_selector('ul[aria-label="Messages"][aria-busy="false"] li.more', timeout=30_000)
        await settled(page)
        result: dict[str, Any] = await page.evaluate(SCROLL, 600_000)
    finally:
        await page.context.close()
    frames: list[float] = result.pop("frames")
    tasks: list[float] = result.pop("longtasks")
    pages: list[float] = result.pop("page_requests_ms")
    return {
        **result,
        "frames": len(frames),
        "frame": _ms(frames),
        "long_frames": sum(1 for f in frames if f > 50),
        "long_frames_ms": sum(f for f in frames if f > 50),
        "longtasks": len(tasks),
        "longtask": _ms(tasks),
        "longtasks_ms": sum(tasks),
        "page_request": _ms(pages),
        "page_requests": len(pages),
    }


def queries() -> dict[str, str]:
    """The searches, by what they select (the fill's 10,000 mails)."""
    return {
        "subject word (1,000)": "invoice",
        "two subject words": "subject:quarterly subject:budget",
        "a sender (200)": "from:sender07@outside.test",
        "one reference (1)": "ref-04242",
        "no result": "zzqx",
    }


async def searches(browser: Browser, stack: BenchStack, user: User, rounds: int) -> dict[str, Any]:
    page, _first = await _signed_in(browser, stack, user)
    box = page.get_by_label("Search mail")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in queries()}
    try:
        await page.wait_for_selector('ul[aria-label="Messages"][aria-busy="false"] li.item', timeout=30_000)
        await settled(page)
        for _ in range(rounds):
            for name, text in queries().items():
                await box.fill(text)
                await page.evaluate(SEARCH_ARM)
                await box.press("Enter")
                results[name].append(await asyncio.wait_for(page.evaluate("window.__search"), 120))
    finally:
        await page.context.close()
    every = [r for rs in results.values() for r in rs]
    return {
        "total": _ms([r["total_ms"] for r in every]),
        "request": _ms([r["request_ms"] for r in every if r["request_ms"] is not None]),
        "by_query": {
            name: {
                "query": queries()[name],
                "rows": rs[-1]["rows"],
                "total": _ms([r["total_ms"] for r in rs]),
                "request": _ms([r["request_ms"] for r in rs if r["request_ms"] is not None]),
            }
            for name, rs in results.items()
        },
    }


async def server_times(stack: BenchStack, user: User, rounds: int) -> dict[str, Any]:
    """The listing's first page and each search over HTTP from here (the bridge's time without a
    browser), and the same query straight to the store (the filter and order the bridge builds)."""
    headers = {"Authorization": f"Bearer {stack.token(user.email)}"}
    asked = {"listing": "", **queries()}
    http_ms: dict[str, list[float]] = {name: [] for name in asked}
    store_ms: dict[str, list[float]] = {name: [] for name in asked}
    client: MongoClient[dict[str, Any]] = MongoClient(stack.info.mongodb_url)
    messages = client["mailbridge"]["messages"]

    def store_query(text: str) -> None:
        match: dict[str, Any] = {"account": user.email, "mailbox": "INBOX"}
        if text:
            match = {"$and": [{"account": user.email}, to_mongo_filter(parse_search(text), user.email, "INBOX")]}
        list(messages.find(match).sort(NEWEST).limit(FIRST_PAGE + 1))

    try:
        async with aiohttp.ClientSession(base_url=stack.info.web_url, headers=headers) as http:
            for _ in range(rounds):
                for name, text in asked.items():
                    params = {"account": user.email, "mailbox": "INBOX", "limit": str(FIRST_PAGE)}
                    if text:
                        params["q"] = text
                    started = time.perf_counter()
                    async with http.get("/api/v1/email/inbox", params=params) as r:
                        r.raise_for_status()
                        await r.read()
                    http_ms[name].append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await asyncio.to_thread(store_query, text)
                    store_ms[name].append((time.perf_counter() - started) * 1000)
        documents = await asyncio.to_thread(messages.estimated_document_count)
    finally:
        client.close()
    return {
        "documents": documents,
        "http": {name: _ms(values) for name, values in http_ms.items()},
        "store": {name: _ms(values) for name, values in store_ms.items()},
    }


async def web_stage(stack: BenchStack, quick: bool) -> dict[str, Any]:
    count = 1_000 if quick else MAILS
    (user,) = stack.add_users(1, "web")
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result: dict[str, Any] = {"date": date, "mails": count, "fill": await fill(stack, user, count)}
    print(f"web: {count} mails in INBOX: {result['fill']}", flush=True)
    result["server"] = await server_times(stack, user, 3 if quick else 5)
    print(f"web: server: {result['server']}", flush=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            result["chromium"] = browser.version
            result["first_row"] = await first_rows(browser, stack, user, 3 if quick else 8)
            print(f"web: first row: { {k: v for k, v in result['first_row'].items() if k != 'runs'} }", flush=True)
            result["search"] = await searches(browser, stack, user, 2 if quick else 3)
            print(f"web: search: {result['search']}", flush=True)
            result["scroll"] = await scroll_to_end(browser, stack, user)
            print(f"web: scroll: {result['scroll']}", flush=True)
        finally:
            await browser.close()
    return result
