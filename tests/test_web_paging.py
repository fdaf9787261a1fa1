"""The web client reaches every message of a mailbox, not only the first page: the list loads older
pages as it is scrolled (or its "Load older messages" button is pressed), in the listing, the quick
filters and search alike (issue 20, "Every message reachable")."""

from __future__ import annotations

import asyncio
import imaplib
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect
from playwright.async_api import Error as PlaywrightError

from bridge.stack.launcher import StackInfo
from tests.browser import signed_in
from tests.common import Account, login
from tests.test_web_a11y import violations

pytestmark = pytest.mark.e2e

MAILS = 250  # the client's first page of 50, then two of 100 and the rest


def append_mails(stack: StackInfo, account: Account, tag: str, count: int = MAILS) -> None:
    """`count` messages straight into the account's INBOX over IMAP, one minute apart, oldest first."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    imap = imaplib.IMAP4(stack.imap["host"], stack.imap["port"])
    try:
        imap.login(account.email, account.password)
        for n in range(count):
            m = EmailMessage()
            m["From"], m["To"] = "carol@outside.test", account.email
            m["Subject"] = f"Paged {n:03d} {tag}"
            m["Date"] = format_datetime(start + timedelta(minutes=n))
            m["Message-ID"] = f"<paged-{n}-{tag}@outside.test>"
            m.set_content(f"message {n} of the paging test\n")
            imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()), m.as_bytes())
    finally:
        imap.logout()


async def indexed(stack: StackInfo, account: Account, count: int = MAILS) -> None:
    """Until the index holds every appended message (the client lists from it)."""
    async with aiohttp.ClientSession(base_url=stack.web_url) as http:
        headers = {"Authorization": f"Bearer {await login(http, account)}"}
        deadline = time.monotonic() + 90  # a ceiling against hangs, not a speed check
        while time.monotonic() < deadline:
            async with http.get("/api/v1/mailboxes", params={"account": account.email}, headers=headers) as r:
                boxes = (await r.json())["mailboxes"]
            if any(b["name"] == "INBOX" and b["total"] >= count for b in boxes):
                return
            await asyncio.sleep(0.3)
    raise AssertionError("the index never held every appended message")


async def scroll_to_the_end(page: Page) -> None:
    """Scroll down to the end of the list until it has no older page left to load: the list loads
    a page when its end comes into view (nothing here presses its button)."""
    more = page.get_by_role("button", name="Load older messages")
    listing = page.get_by_role("list", name="Messages")
    for _ in range(20):
        # Only a listed view can say it has nothing older (before its first answer it has no button).
        await expect(listing).to_have_attribute("aria-busy", "false", timeout=15_000)
        if await more.count() == 0:
            # At the very end (a long list draws only the rows near the screen).
            await listing.evaluate("(list) => { list.scrollTop = list.scrollHeight; }")
            return
        try:
            await more.scroll_into_view_if_needed(timeout=5_000)
        except PlaywrightError:
            # A page came in meanwhile: the last one took the button away (a timeout), or the list
            # drew it anew and the one found is no longer in the page ("not attached").
            continue
        await page.wait_for_timeout(300)
    raise AssertionError("the list kept offering older messages")


# Read in the page: every row of the list, drawn or not, as (position, subject). A list longer than
# the client's WINDOW_FROM draws only the rows near the screen, each with its aria-posinset of
# aria-setsize: scrolled through a screen at a time, every position must come up, once.
EVERY_ROW = """async () => {
  const list = document.querySelector('ul[aria-label="Messages"]');
  const seen = new Map();
  const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  for (let top = 0; ; top += list.clientHeight / 2) {
    list.scrollTop = top;
    list.dispatchEvent(new Event("scroll"));
    await frame();
    list.querySelectorAll(":scope > li.item").forEach((li, i) => {
      const at = Number(li.getAttribute("aria-posinset") || i + 1);
      seen.set(at, li.querySelector(".subject").textContent);
    });
    if (top >= list.scrollHeight) break;
  }
  return [...seen.entries()].sort((a, b) => a[0] - b[0]).map(([, subject]) => subject);
}"""


async def every_row(page: Page) -> list[str]:
    subjects: list[str] = await page.evaluate(EVERY_ROW)
    return subjects


async def listed_count(page: Page) -> int:
    """How many rows the list holds, drawn or not."""
    rows = page.get_by_role("list", name="Messages").locator("li.item")
    size = await rows.first.get_attribute("aria-setsize")
    return int(size) if size else await rows.count()


@pytest.fixture
async def paged(stack: StackInfo, account: Account) -> str:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(append_mails, stack, account, tag)
    await indexed(stack, account)
    return tag


async def test_scrolling_reaches_the_oldest_message_of_a_long_mailbox(
    browser: Browser, stack: StackInfo, account: Account, paged: str
) -> None:
    page = await signed_in(browser, stack, account)
    rows = page.get_by_role("list", name="Messages").locator("li.item")
    await expect(page.get_by_role("button", name=f"Paged {MAILS - 1:03d} {paged}")).to_be_visible(timeout=15_000)
    await expect(rows).to_have_count(50)  # the first page first
    await expect(page.get_by_role("button", name="Load older messages")).to_be_visible()
    await scroll_to_the_end(page)
    await expect(page.get_by_role("button", name=f"Paged 000 {paged}")).to_be_attached()
    assert await listed_count(page) == MAILS
    # Longer than WINDOW_FROM (200): only the rows near the screen are drawn, and each says where it is.
    assert await rows.count() < 100
    newest_first = [f"Paged {n:03d} {paged}" for n in reversed(range(MAILS))]
    assert await every_row(page) == newest_first  # and none twice
    await page.close()


async def test_the_keyboard_walks_a_long_list_of_which_only_the_screen_is_drawn(
    browser: Browser, stack: StackInfo, account: Account, paged: str
) -> None:
    context = await browser.new_context(bypass_csp=True)  # bypass_csp only so the test can add axe's script tag
    page = await signed_in(context, stack, account)
    listing = page.get_by_role("list", name="Messages")
    await expect(page.get_by_role("button", name=f"Paged {MAILS - 1:03d} {paged}")).to_be_visible(timeout=15_000)
    await scroll_to_the_end(page)
    assert await listed_count(page) == MAILS
    assert await violations(page) == []  # the spacers and the rows' positions as well
    await listing.evaluate("(list) => { list.scrollTop = 0; }")
    newest = page.get_by_role("button", name=f"Paged {MAILS - 1:03d} {paged}")
    await newest.focus()
    # End goes to the oldest row, far outside what is drawn: drawn then, and focused.
    await page.keyboard.press("End")
    await expect(page.get_by_role("button", name=f"Paged 000 {paged}")).to_be_focused()
    await page.keyboard.press("ArrowUp")
    await expect(page.get_by_role("button", name=f"Paged 001 {paged}")).to_be_focused()
    await expect(newest).to_have_count(0)  # scrolled far away: not drawn
    # Still one tab stop in the list, wherever it is scrolled.
    assert await listing.locator("li.item .open[tabindex='0']").count() == 1
    await page.keyboard.press("Home")
    await expect(newest).to_be_focused()
    for _ in range(29):  # step by step down past the first screen: every row is there to land on
        await page.keyboard.press("ArrowDown")
    await expect(page.get_by_role("button", name=f"Paged {MAILS - 30:03d} {paged}")).to_be_focused()
    await context.close()


async def test_the_keyboard_loads_older_pages_and_filters_and_search_page_too(
    browser: Browser, stack: StackInfo, account: Account, paged: str
) -> None:
    page = await signed_in(browser, stack, account)
    rows = page.get_by_role("list", name="Messages").locator("li.item")
    await expect(rows).to_have_count(50, timeout=15_000)
    more = page.get_by_role("button", name="Load older messages")
    await more.focus()
    await page.keyboard.press("Enter")
    await expect(rows).to_have_count(150)

    # Every appended message is unread: the Unread filter pages over all of them as well.
    await page.get_by_role("button", name="Unread", exact=True).click()
    await expect(rows).to_have_count(50, timeout=15_000)
    await scroll_to_the_end(page)
    assert await listed_count(page) == MAILS

    await page.get_by_role("button", name="Unread", exact=True).click()
    await page.get_by_label("Search mail").fill(f"subject:{paged}")
    await page.get_by_label("Search mail").press("Enter")
    await expect(rows).to_have_count(50, timeout=15_000)
    await scroll_to_the_end(page)
    await expect(page.get_by_role("button", name=f"Paged 000 {paged}")).to_be_attached()
    assert await listed_count(page) == MAILS
    await page.close()
