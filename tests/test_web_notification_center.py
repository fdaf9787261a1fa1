"""The web client's notification center (issue 20): the new mail this browser was told of, each
notice read exactly when its mail is (on any device), opening the mail from it, kept over a reload
and forgotten at sign-out."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from playwright.async_api import Browser, Page, expect

from bridge.stack.launcher import StackInfo
from tests.browser import signed_in, unread
from tests.common import Account
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


async def open_center(page: Page) -> None:
    await page.get_by_role("button", name=re.compile("^Notifications")).click()
    await expect(page.get_by_role("dialog", name="Notifications")).to_be_visible()


async def test_notices_follow_their_mail_and_open_it(browser: Browser, stack: StackInfo, account: Account) -> None:
    tag = uuid.uuid4().hex[:6]
    page = await signed_in(browser, stack, account)
    bell = page.get_by_role("button", name=re.compile("^Notifications"))
    await expect(bell).to_have_accessible_name("Notifications")
    await asyncio.to_thread(
        send_smtp,
        stack,
        [
            message("carol@outside.test", account.email, f"First {tag}"),
            message("dan@outside.test", account.email, f"Second {tag}"),
        ],
    )
    await expect(bell).to_have_accessible_name(unread("Notifications", 2), timeout=15_000)

    await open_center(page)
    center = page.get_by_role("dialog", name="Notifications")
    notices = center.get_by_role("list", name="Recent notifications")
    first = notices.get_by_role("button", name=re.compile(f"First {tag}"))
    second = notices.get_by_role("button", name=re.compile(f"Second {tag}"))
    await expect(first).to_contain_text("(unread)")
    # Focus moved into the center, on its newest notice (the two may be delivered in either order).
    await expect(notices.get_by_role("button").first).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(center).to_have_count(0)
    await expect(bell).to_be_focused()  # and back where it was

    # Read on another device: its notice is read here too.
    other = await signed_in(browser, stack, account)
    await other.get_by_role("list", name="Messages").get_by_role("button", name=f"First {tag}").click()
    await expect(bell).to_have_accessible_name(unread("Notifications", 1), timeout=15_000)
    await open_center(page)
    await expect(first).not_to_contain_text("(unread)")
    await expect(second).to_contain_text("(unread)")

    # Opening a notice opens its mail, which reads it (on every device).
    await second.click()
    await expect(page.get_by_role("heading", name=f"Second {tag}")).to_be_visible(timeout=15_000)
    await expect(bell).to_have_accessible_name("Notifications", timeout=15_000)
    await expect(
        other.get_by_role("list", name="Messages").get_by_role("button", name=f"Second {tag}")
    ).not_to_contain_text("(unread)", timeout=15_000)

    # Kept over a reload; forgotten at sign-out.
    await page.reload()
    await open_center(page)
    await expect(notices.get_by_role("button")).to_have_count(2)
    await page.keyboard.press("Escape")
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill(account.password)
    await page.get_by_role("button", name="Sign in").click()
    await open_center(page)
    await expect(center).to_contain_text("No notifications yet")
    await other.close()
    await page.close()


async def test_mark_all_read_reads_the_mails_themselves(browser: Browser, stack: StackInfo, account: Account) -> None:
    tag = uuid.uuid4().hex[:6]
    page = await signed_in(browser, stack, account)
    subjects = [f"Bulk notice {n} {tag}" for n in range(3)]
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, s) for s in subjects])
    bell = page.get_by_role("button", name=re.compile("^Notifications"))
    await expect(bell).to_have_accessible_name(unread("Notifications", 3), timeout=15_000)
    await open_center(page)
    await page.get_by_role("dialog", name="Notifications").get_by_role("button", name="Mark all read").click()
    await expect(bell).to_have_accessible_name("Notifications", timeout=15_000)
    listing = page.get_by_role("list", name="Messages")
    for subject in subjects:
        await expect(listing.get_by_role("button", name=subject)).not_to_contain_text("(unread)", timeout=15_000)
    await page.close()
