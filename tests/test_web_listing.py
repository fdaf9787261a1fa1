"""How the web client's listings meet the live events. It lists a view once at a time: the first
load, the socket's connect and the service worker's take-over all ask for the Inbox at once, and
with a store that reads the whole mailbox for each (FerretDB: bench/web.py), listings side by side
made the first rows wait for all of them. And a listing taken before a live change does not undo it."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from playwright.async_api import Browser, Route, expect

from bridge.stack.launcher import StackInfo
from tests.browser import signed_in
from tests.common import Account
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


def first_page_of_inbox(url: str) -> bool:
    return "/api/v1/email/inbox?" in url and "mailbox=INBOX" in url and "cursor=" not in url and "q=" not in url


async def test_the_inbox_is_listed_once_at_a_time(browser: Browser, stack: StackInfo, account: Account) -> None:
    subject = f"Listed once {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    asked, in_flight, most = 0, 0, 0

    async def slow_store(route: Route) -> None:
        # Each answer held for a second, as a slow store's would be: overlapping asks overlap here.
        nonlocal asked, in_flight, most
        asked, in_flight = asked + 1, in_flight + 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(1)
            await route.fulfill(response=await route.fetch())
        finally:
            in_flight -= 1

    context = await browser.new_context()
    await context.route(first_page_of_inbox, slow_store)
    page = await signed_in(context, stack, account)
    await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await page.wait_for_timeout(2500)  # any listing asked meanwhile has been answered
    assert asked >= 1 and most == 1, (asked, most)
    await context.unroute_all(behavior="ignoreErrors")
    await context.close()


async def test_flags_changed_while_the_first_listing_is_on_its_way_are_not_undone_by_it(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    """A mail read elsewhere while this device's first listing is in flight: the listing was taken
    before the read and lands after it, when no row was on screen for the live change to update."""
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, f"In flight {n} {tag}") for n in range(3)]
    )
    laptop = await signed_in(browser, stack, account)
    await expect(laptop.locator("li.item.unread")).to_have_count(3, timeout=15_000)

    release, taken = asyncio.Event(), asyncio.Event()

    async def taken_now_answered_later(route: Route) -> None:
        response = await route.fetch()  # the index as it is now: three unread
        taken.set()
        await release.wait()
        await route.fulfill(response=response)

    # No service worker: its own fetches would pass page routes by.
    context = await browser.new_context(service_workers="block")
    await context.route(first_page_of_inbox, taken_now_answered_later)
    phone = await signed_in(context, stack, account)
    await asyncio.wait_for(taken.wait(), 15)
    # Connected (the folders, and their counts, wait for the listing: nothing else shows it).
    await expect(phone.get_by_role("status").filter(has_text="Live")).to_be_visible(timeout=15_000)
    await laptop.get_by_role("button", name="Mark all read").click()
    inbox = laptop.get_by_role("navigation", name="Mailboxes").get_by_role("button", name=re.compile("^INBOX"))
    await expect(inbox).to_have_text("INBOX", timeout=15_000)
    await phone.wait_for_timeout(1500)  # the three email_flags reached the phone's socket too
    release.set()
    rows = phone.get_by_role("list", name="Messages").locator("li.item")
    await expect(rows).to_have_count(3, timeout=15_000)
    await expect(phone.get_by_role("list", name="Messages").locator("li.item.unread")).to_have_count(0)
    await laptop.close()
    # A later listing (the socket's connect asks again) may still be in the route: let it go.
    await context.unroute_all(behavior="ignoreErrors")
    await context.close()
