"""The web client offline and with the bridge down.

Offline, the service worker keeps the shell and recent mail, and the outbox sends later. With the
bridge killed, the client says so, reconnects with backoff, and catches up without a reload.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import signal
import subprocess
import uuid

import pytest
from playwright.async_api import Browser, Page, expect

from bridge.stack.launcher import Stack, StackInfo
from tests.browser import signed_in, wait_live
from tests.common import Account
from tests.mailtools import send_smtp, wait_for_messages
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


async def cached_urls(page: Page) -> list[str]:
    urls: list[str] = await page.evaluate(
        "caches.open('mail-bridge-data').then((c) => c.keys()).then((keys) => keys.map((r) => r.url))"
    )
    return urls


async def test_offline_reload_shows_cached_mail_and_queued_mail_goes_when_back(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    subject = f"Keep me {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, subject, "Readable on the train")]
    )
    context = await browser.new_context()
    page = await signed_in(context, stack, account)
    await page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    await page.get_by_role("button", name=subject).click()
    await expect(page.get_by_test_id("body-text")).to_contain_text("Readable on the train", timeout=15_000)
    # The body has passed through the worker's cache (the list is kept by the page itself).
    for _ in range(100):
        if any("/api/v1/email/" in u and "/inbox" not in u for u in await cached_urls(page)):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the message body was not cached: {await cached_urls(page)}")

    await context.set_offline(True)
    await page.reload()
    await expect(page.get_by_role("status").filter(has_text="Offline")).to_be_visible(timeout=15_000)
    await page.get_by_role("button", name=subject).click()
    await expect(page.get_by_test_id("body-text")).to_contain_text("Readable on the train", timeout=15_000)

    # Written offline: it waits in the outbox, and goes once the connection is back.
    sent_subject = f"From the train {uuid.uuid4().hex[:6]}"
    await page.get_by_role("button", name="Compose").click()
    await page.get_by_label("To", exact=True).fill(other_account.email)
    await page.get_by_label("Subject").fill(sent_subject)
    await page.get_by_role("textbox", name="Message text").fill("sent when back online")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="1 queued")).to_be_visible()
    await context.set_offline(False)
    await wait_live(page)
    await expect(page.get_by_role("status").filter(has_text="Sent from the outbox")).to_be_visible(timeout=15_000)
    ids = await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1)
    assert len(ids) == 1
    await context.close()


def _read_over_imap(stack: StackInfo, account: Account, subject: str) -> None:
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        imap.login(account.email, account.password)
        imap.select("INBOX")
        _status, found = imap.uid("SEARCH", "SUBJECT", f'"{subject}"')
        imap.uid("STORE", found[0].decode(), "+FLAGS", "(\\Seen)")


async def test_bridge_killed_the_client_says_so_then_catches_up_without_reload(
    browser: Browser, stack: StackInfo, stack_launcher: Stack, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    first, second = f"Before {tag}", f"During {tag}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, first)])
    page = await signed_in(browser, stack, account)
    messages = page.get_by_role("list", name="Messages")
    await expect(messages.get_by_role("button", name=first)).to_contain_text("(unread)", timeout=15_000)
    await page.evaluate("() => { window.notReloaded = true; }")

    await asyncio.to_thread(stack_launcher.stop_service, "bridge", signal.SIGKILL)
    try:
        await expect(page.get_by_role("status").filter(has_text="Reconnecting")).to_be_visible(timeout=15_000)
        # While the bridge is down: read on another IMAP client (Dovecot's event waits in Redis), and a
        # new mail (Postfix defers it until the content filter, in the bridge, is back).
        await asyncio.to_thread(_read_over_imap, stack, account, first)
        await asyncio.to_thread(send_smtp, stack, [message("dan@outside.test", account.email, second)])
    finally:
        await asyncio.to_thread(stack_launcher.start_service, "bridge")
    postfix_conf = os.path.join(stack.state_dir, "postfix", "etc")
    await asyncio.to_thread(subprocess.run, ["postqueue", "-c", postfix_conf, "-f"], check=False, timeout=30)

    await wait_live(page)
    await expect(messages.get_by_role("button", name=second)).to_be_visible(timeout=30_000)
    await expect(messages.get_by_role("button", name=first)).not_to_contain_text("(unread)", timeout=15_000)
    assert await page.evaluate("() => window.notReloaded === true")
    await page.close()
