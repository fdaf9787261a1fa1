"""The web client in a real browser (Debian's Chromium, headless, driven by Playwright)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bridge.stack.launcher import StackInfo
from tests.conftest import Account
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container-like machine
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # This machine reaches no outside host: keep Chromium from trying.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


async def signed_in(browser: Browser, stack: StackInfo, account: Account) -> Page:
    page = await browser.new_page()
    await page.goto(stack.web_url)
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill(account.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible(timeout=15_000)
    return page


async def test_login_is_refused_with_a_clear_message(browser: Browser, stack: StackInfo, account: Account) -> None:
    page = await browser.new_page()
    await page.goto(stack.web_url)
    await page.get_by_label("Email").fill(account.email)
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("invalid email or password")


async def test_new_mail_appears_without_reload_and_reads_across_devices(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    phone, laptop = await signed_in(browser, stack, account), await signed_in(browser, stack, account)
    await expect(phone.get_by_text("No messages")).to_be_visible()
    subject = f"Live {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, subject, "Hello from the browser test")]
    )
    for page in (phone, laptop):
        await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
        await expect(page).to_have_title("(1) INBOX — mail-bridge")
    await phone.get_by_role("button", name=subject).click()
    await expect(phone.get_by_test_id("body-text")).to_contain_text("Hello from the browser test")
    # Read on the phone: the laptop's count drops too, pushed by Dovecot's event.
    await expect(laptop).to_have_title("INBOX — mail-bridge", timeout=15_000)
    await phone.close()
    await laptop.close()


async def test_compose_sends_and_the_sent_mail_arrives(browser: Browser, stack: StackInfo, account: Account) -> None:
    page = await signed_in(browser, stack, account)
    subject = f"Note to self {uuid.uuid4().hex[:6]}"
    await page.get_by_role("button", name="Compose").click()
    await page.get_by_label("To").fill(account.email)
    await page.get_by_label("Subject").fill(subject)
    await page.get_by_label("Message text").fill("remember the milk")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Sent")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await page.close()


async def test_search_tabs_keyboard_and_delete(browser: Browser, stack: StackInfo, account: Account) -> None:
    tag = uuid.uuid4().hex[:6]
    social = message("notifications@linkedin.com", account.email, f"Social {tag}", "someone viewed your profile")
    await asyncio.to_thread(
        send_smtp,
        stack,
        [
            message("carol@outside.test", account.email, f"Alpha {tag}"),
            message("dan@outside.test", account.email, f"Beta {tag}"),
            social,
        ],
    )
    page = await signed_in(browser, stack, account)
    for subject in (f"Alpha {tag}", f"Beta {tag}", f"Social {tag}"):
        await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    await page.get_by_role("tab", name="Social").click()
    await expect(page.get_by_role("button", name=f"Social {tag}")).to_be_visible()
    await expect(page.get_by_role("button", name=f"Alpha {tag}")).to_have_count(0)
    await page.get_by_role("tab", name="All").click()

    await page.get_by_label("Search mail").fill("subject:alpha")
    await page.get_by_label("Search mail").press("Enter")
    await expect(page.get_by_role("button", name=f"Alpha {tag}")).to_be_visible()
    await expect(page.get_by_role("button", name=f"Beta {tag}")).to_have_count(0)
    await page.get_by_label("Search mail").fill("")
    await page.get_by_label("Search mail").press("Enter")
    await expect(page.get_by_role("button", name=f"Beta {tag}")).to_be_visible()

    await page.locator("body").click()
    await page.keyboard.press("j")  # opens the newest message
    await expect(page.get_by_role("region", name="Message")).to_be_visible()
    subject = await page.get_by_role("region", name="Message").get_by_role("heading").inner_text()
    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)
    await page.close()


async def test_reply_and_attachment_download(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    from tests.mailtools import wait_for_messages  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    original = message(other_account.email, account.email, f"Question {tag}", "Can you send the numbers?")
    original.add_attachment(b"1,2,3\n", maintype="text", subtype="csv", filename="numbers.csv")
    await asyncio.to_thread(send_smtp, stack, [original])
    page = await signed_in(browser, stack, account)
    await page.get_by_role("button", name=f"Question {tag}").click()

    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="numbers.csv").click()
    download = await download_info.value
    assert download.suggested_filename == "numbers.csv"
    assert Path(await download.path()).read_bytes() == b"1,2,3\n"

    await page.get_by_role("button", name="Reply", exact=True).click()
    await expect(page.get_by_label("To", exact=True)).to_have_value(f"Sender Person <{other_account.email}>")
    await expect(page.get_by_label("Subject")).to_have_value(f"Re: Question {tag}")
    await expect(page.get_by_label("Message text")).to_contain_text("> Can you send the numbers?")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Sent")).to_be_visible(timeout=15_000)
    ids = await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1)
    assert len(ids) == 1
    await page.close()


async def test_replying_shows_on_the_users_other_device(browser: Browser, stack: StackInfo, account: Account) -> None:
    subject = f"Thread {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    laptop, phone = await signed_in(browser, stack, account), await signed_in(browser, stack, account)
    for page in (laptop, phone):
        await page.get_by_role("button", name=subject).click()
    await laptop.get_by_role("button", name="Reply", exact=True).click()
    await laptop.get_by_label("Message text").press_sequentially("Sure, ")
    await expect(phone.get_by_role("status").filter(has_text="is replying")).to_have_text(
        f"{account.email} is replying…", timeout=10_000
    )
    await laptop.close()
    await phone.close()


async def test_a_label_added_on_one_device_shows_on_the_other(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Label me {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    laptop, phone = await signed_in(browser, stack, account), await signed_in(browser, stack, account)
    await expect(phone.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await laptop.get_by_role("button", name=subject).click()
    await laptop.get_by_label("Add label").fill("work")
    await laptop.get_by_label("Add label").press("Enter")
    # An IMAP keyword set through the bridge: Dovecot's event brings it to every session.
    await expect(phone.get_by_role("button", name=subject).get_by_label("Labels")).to_have_text("work", timeout=15_000)
    await laptop.close()
    await phone.close()
