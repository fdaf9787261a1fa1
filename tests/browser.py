"""Helpers for the web client's tests: Debian's Chromium, headless, driven by Playwright."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from bench.chromium import CHROMIUM, CHROMIUM_ARGS
from bridge.stack.launcher import StackInfo
from tests.common import Account

PHONE = {"width": 390, "height": 844}


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def wait_live(page: Page) -> None:
    await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible(timeout=15_000)


async def signed_in(browser: Browser | BrowserContext, stack: StackInfo, account: Account) -> Page:
    """A signed-in client: each call on a Browser is a new context, like a separate device."""
    page = await browser.new_page()
    await page.goto(stack.web_url)
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill(account.password)
    await page.get_by_role("button", name="Sign in").click()
    await wait_live(page)
    return page


def unread(label: str, count: int) -> re.Pattern[str]:
    """The accessible name of a control that shows an unread count after its label ("Social 3 unread")."""
    return re.compile(rf"^{re.escape(label)}\s+{count} unread$")
