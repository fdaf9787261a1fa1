"""The Inbox's category tabs count unread mail live, and messages move to a folder by drag and drop
(issue 20: "live counts", "move by menu and by drag")."""

from __future__ import annotations

import asyncio
import re
import uuid
from email.message import EmailMessage

import aiohttp
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from bridge.stack.launcher import StackInfo
from tests.browser import signed_in, unread
from tests.common import Account, login
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


def social(to: str, subject: str) -> EmailMessage:
    """A mail the filter files under Social (a social network's notification address)."""
    return message("notifications@linkedin.com", to, subject, "someone viewed your profile")


def tab(page: Page, name: str) -> Locator:
    return page.get_by_role("tablist", name="Categories").get_by_role("tab", name=re.compile(f"^{name}"))


async def test_the_category_tabs_count_unread_mail_live(browser: Browser, stack: StackInfo, account: Account) -> None:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(
        send_smtp,
        stack,
        [
            message("carol@outside.test", account.email, f"Plain one {tag}"),
            message("dan@outside.test", account.email, f"Plain two {tag}"),
            social(account.email, f"Social one {tag}"),
        ],
    )
    page = await signed_in(browser, stack, account)
    listing = page.get_by_role("list", name="Messages")
    await expect(listing.get_by_role("button", name=f"Social one {tag}")).to_be_visible(timeout=15_000)
    await expect(tab(page, "Primary")).to_have_accessible_name(unread("Primary", 2), timeout=15_000)
    await expect(tab(page, "Social")).to_have_accessible_name(unread("Social", 1), timeout=15_000)
    await expect(tab(page, "Promotions")).to_have_accessible_name("Promotions")  # none: no count

    # A new one arrives: its tab counts it without a reload.
    await asyncio.to_thread(send_smtp, stack, [social(account.email, f"Social two {tag}")])
    await expect(tab(page, "Social")).to_have_accessible_name(unread("Social", 2), timeout=15_000)

    # Read on another device: the tab counts one fewer here.
    other = await signed_in(browser, stack, account)
    await other.get_by_role("list", name="Messages").get_by_role("button", name=f"Social one {tag}").click()
    await expect(tab(page, "Social")).to_have_accessible_name(unread("Social", 1), timeout=15_000)
    await expect(tab(page, "Primary")).to_have_accessible_name(unread("Primary", 2))
    await other.close()
    await page.close()


async def test_the_category_counts_api_answers_only_for_ones_own_accounts(
    stack: StackInfo, account: Account, other_account: Account
) -> None:
    stranger = other_account
    async with aiohttp.ClientSession(base_url=stack.web_url) as http:
        headers = {"Authorization": f"Bearer {await login(http, account)}"}
        async with http.get("/api/v1/mailboxes/categories", headers=headers) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert body["account"] == account.email and body["mailbox"] == "INBOX"
        assert set(body["unread"]) == {"primary", "social", "promotions"}
        async with http.get("/api/v1/mailboxes/categories", params={"account": stranger.email}, headers=headers) as r:
            assert r.status == 403, await r.text()
        async with http.get("/api/v1/mailboxes/categories") as r:
            assert r.status == 401


async def test_messages_dragged_onto_a_folder_move_there(browser: Browser, stack: StackInfo, account: Account) -> None:
    tag = uuid.uuid4().hex[:6]
    subjects = [f"Drag {n} {tag}" for n in range(3)]
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, s) for s in subjects])
    page = await signed_in(browser, stack, account)
    nav = page.get_by_role("navigation", name="Mailboxes")
    listing = page.get_by_role("list", name="Messages")
    for subject in subjects:
        await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    # One row onto Archive.
    archive = nav.get_by_role("button", name=re.compile("^Archive"))
    await listing.get_by_role("button", name=subjects[0]).drag_to(archive)
    await expect(page.get_by_role("status").filter(has_text="Moved to Archive")).to_be_visible(timeout=15_000)
    await expect(listing.get_by_role("button", name=subjects[0])).to_have_count(0, timeout=15_000)

    # Two picked rows, dragged by one of them, onto Trash: both go.
    for subject in subjects[1:]:
        await page.get_by_label(f"Select {subject}").check()
    await listing.get_by_role("button", name=subjects[2]).drag_to(nav.get_by_role("button", name=re.compile("^Trash")))
    await expect(page.get_by_role("status").filter(has_text="2 messages moved to Trash")).to_be_visible(timeout=15_000)
    for subject in subjects[1:]:
        await expect(listing.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)

    await nav.get_by_role("button", name=re.compile("^Archive")).click()
    await expect(listing.get_by_role("button", name=subjects[0])).to_be_visible(timeout=15_000)
    await nav.get_by_role("button", name=re.compile("^Trash")).click()
    for subject in subjects[1:]:
        await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await page.close()
