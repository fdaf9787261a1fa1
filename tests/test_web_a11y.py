"""The web client's main screens: accessibility (axe-core, WCAG 2 A/AA), a phone-sized screen, screenshots.

Screenshots go to $MAIL_BRIDGE_SCREENSHOTS (`make screenshots` points it at docs/screenshots/), else
the suite's state directory, removed after a clean run.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from bridge.stack.launcher import StackInfo
from tests.browser import PHONE, signed_in, wait_live
from tests.common import TEST_STATE, Account
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
# Beside the suite's stack state (removed after a clean run) unless `make screenshots` asks for them.
SHOTS = Path(os.environ.get("MAIL_BRIDGE_SCREENSHOTS") or TEST_STATE / "screenshots")


async def violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's WCAG 2 A/AA violations on the page as it is now (message frames excluded: they are mail)."""
    await page.add_script_tag(path=AXE)
    found: list[dict[str, Any]] = await page.evaluate(
        """async () => {
            const r = await axe.run(document, {
                runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"], iframes: false,
            });
            return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => n.target.join(" ")) }));
        }"""
    )
    return found


def demo_mail(to: str, tag: str) -> list[Any]:
    def named(name: str, address: str, subject: str, body: str) -> Any:
        m = message(address, to, f"{subject} {tag}", body)
        m.replace_header("From", f"{name} <{address}>")
        return m

    newsletter = named("Corner Shop", "news@shop.example", "Autumn sale", "Everything must go, this week only.")
    newsletter["List-Unsubscribe"] = "<mailto:unsubscribe@shop.example>"
    report = named("Dana Lee", "dana@partner.example", "Quarterly figures", "Here are the figures you asked for.")
    report.add_attachment(b"q,revenue\n3,1200\n", maintype="text", subtype="csv", filename="q3.csv")
    return [
        newsletter,
        report,
        named("Erin Moss", "erin@team.example", "Lunch on Friday?", "Shall we try the new place by the river?"),
    ]


async def demo_inbox(stack: StackInfo, stack_secrets: dict[str, Any]) -> tuple[Account, str]:
    """The demo login that `make run` prints (so the screenshots show what a newcomer sees), with
    the demo mail just delivered under a fresh tag; the screenshot folder made."""
    account = Account("alice@example.test", stack_secrets["passwords"]["alice@example.test"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:4]
    await asyncio.to_thread(send_smtp, stack, demo_mail(account.email, tag))
    return account, tag


async def test_main_screens_are_accessible_work_on_a_phone_and_are_captured(
    browser: Browser, stack: StackInfo, stack_secrets: dict[str, Any]
) -> None:
    account, tag = await demo_inbox(stack, stack_secrets)

    # bypass_csp only so the test can add axe's script tag; the client's own CSP is tested elsewhere.
    context = await browser.new_context(viewport={"width": 1280, "height": 760}, bypass_csp=True)
    page = await context.new_page()
    await page.goto(stack.web_url)
    assert await violations(page) == []
    await page.screenshot(path=SHOTS / "sign-in.png")
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill(account.password)
    await page.get_by_role("button", name="Sign in").click()
    await wait_live(page)
    await expect(page.get_by_role("button", name=f"Lunch on Friday? {tag}")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=f"Autumn sale {tag}")).to_be_visible(timeout=15_000)

    await page.get_by_role("button", name=f"Quarterly figures {tag}").click()
    await expect(page.get_by_role("list", name="Attachments")).to_be_visible(timeout=15_000)
    assert await violations(page) == []
    await page.screenshot(path=SHOTS / "inbox.png")

    await page.get_by_role("button", name="Reply", exact=True).click()
    await page.get_by_role("textbox", name="Message text").press("Control+Home")
    await page.get_by_role("textbox", name="Message text").press_sequentially("Thanks, Dana! ")
    await page.get_by_role("button", name="Emoji").click()
    assert await violations(page) == []
    await page.screenshot(path=SHOTS / "compose.png")
    await context.close()

    # A phone: one column; the list, then the message with a way back to the list.
    phone = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = await signed_in(phone, stack, account)
    item = page.get_by_role("list", name="Messages").get_by_role("button", name=f"Lunch on Friday? {tag}")
    await expect(item).to_be_visible(timeout=15_000)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
    await page.screenshot(path=SHOTS / "phone-list.png")
    await item.click()
    body = page.get_by_test_id("body-text")
    await expect(body).to_contain_text("Shall we try the new place by the river?", timeout=15_000)
    await expect(page.get_by_role("list", name="Messages")).to_be_hidden()
    await page.screenshot(path=SHOTS / "phone-message.png")
    await page.get_by_role("button", name="Back to list").click()
    await expect(item).to_be_visible()
    await phone.close()


async def test_every_control_is_reachable_by_keyboard(browser: Browser, stack: StackInfo, account: Account) -> None:
    subject = f"Keyboard {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    page = await signed_in(browser, stack, account)
    await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    # Tab through the page: the message row and its quick actions are reached without a mouse.
    reached: set[str] = set()
    for _ in range(60):
        await page.keyboard.press("Tab")
        focused = "document.activeElement.getAttribute('aria-label') || document.activeElement.textContent"
        reached.add(await page.evaluate(focused))
    assert any(subject in r for r in reached if r)
    assert any("Archive this message" in r for r in reached if r)
    assert "Search mail" in reached
    await page.close()


async def test_the_dark_theme_follows_the_system_keeps_aa_contrast_and_can_be_chosen(
    browser: Browser, stack: StackInfo, stack_secrets: dict[str, Any]
) -> None:
    account, tag = await demo_inbox(stack, stack_secrets)
    dark = await browser.new_context(viewport={"width": 1280, "height": 760}, bypass_csp=True, color_scheme="dark")
    page = await signed_in(dark, stack, account)
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"  # as the system is
    await page.get_by_role("button", name=f"Quarterly figures {tag}").click()
    await expect(page.get_by_role("list", name="Attachments")).to_be_visible(timeout=15_000)
    assert await violations(page) == []
    await page.screenshot(path=SHOTS / "inbox-dark.png")
    await page.get_by_role("button", name="Compose").click()
    await page.keyboard.press("Escape")  # closed again: nothing written, nothing saved
    await page.get_by_role("button", name="Compose").click()
    assert await violations(page) == []
    await dark.close()

    # On a light system, the button chooses dark, and the choice outlives a reload.
    light = await browser.new_context(color_scheme="light")
    page = await signed_in(light, stack, account)
    theme = page.get_by_role("button", name="Theme: System")
    assert await page.evaluate("document.documentElement.dataset.theme") == "light"
    await theme.click()  # System → Light
    await page.get_by_role("button", name="Theme: Light").click()  # Light → Dark
    await expect(page.get_by_role("button", name="Theme: Dark")).to_be_visible()
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
    await page.reload()
    await expect(page.get_by_role("button", name="Theme: Dark")).to_be_visible(timeout=15_000)
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
    await light.close()


async def test_the_list_is_one_tab_stop_and_the_arrows_move_within_it(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, f"Row {n} {tag}") for n in range(5)]
    )
    page = await signed_in(browser, stack, account)
    listing = page.get_by_role("list", name="Messages")
    await expect(listing.locator("li.item")).to_have_count(5, timeout=15_000)
    tabbable = (
        "(ul) => [...ul.querySelectorAll('button, input, select, a[href]')].filter((e) => e.tabIndex >= 0).length"
    )
    # One row's controls (its checkbox, the row, its four quick actions), however long the list.
    assert await listing.evaluate(tabbable) == 6
    await page.get_by_label("Search mail").focus()
    for _ in range(12):  # Tab walks from the search box into the list, through the filters
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.classList.contains('open')"):
            break
    newest = listing.locator("li.item .open").nth(0)
    await expect(newest).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(listing.locator("li.item .open").nth(1)).to_be_focused()
    assert await listing.evaluate(tabbable) == 6  # the tab stop moved with the focus
    await page.keyboard.press("End")
    await expect(listing.locator("li.item .open").nth(4)).to_be_focused()
    await page.keyboard.press("Home")
    await expect(newest).to_be_focused()
    await page.close()
