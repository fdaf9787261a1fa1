"""The web client lists a view once at a time: the first load, the socket's connect and the service
worker's take-over all ask for the Inbox at once, and with a store that reads the whole mailbox for
each (FerretDB: bench/web.py), listings side by side made the first rows wait for all of them."""

from __future__ import annotations

import asyncio
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
    await context.close()
