"""The web client's composer in a real browser: completion, rich text, emoji, uploads, drafts, failures."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

import pytest
from playwright.async_api import Browser, expect

from bridge.stack.launcher import StackInfo
from tests.browser import signed_in
from tests.common import Account
from tests.mailtools import imap_message_ids, imap_messages, send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


async def test_rich_mail_with_an_attachment_reaches_the_other_users_browser(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    # bob wrote to alice before: alice's composer completes his address from that.
    await asyncio.to_thread(send_smtp, stack, [message(other_account.email, account.email, f"Hi {tag}")])
    alice = await signed_in(browser, stack, account)
    bob = await signed_in(browser, stack, other_account)
    await expect(alice.get_by_role("button", name=f"Hi {tag}")).to_be_visible(timeout=15_000)

    await alice.get_by_role("button", name="Compose").click()
    to = alice.get_by_label("To", exact=True)
    await to.press_sequentially(other_account.email[:5])
    option = alice.get_by_role("option", name=other_account.email)
    await expect(option).to_be_visible(timeout=10_000)
    await to.press("ArrowDown")
    await to.press("Enter")
    await expect(to).to_have_value(f"Sender Person <{other_account.email}>, ")

    subject = f"Plans {tag}"
    await alice.get_by_label("Subject").fill(subject)
    editor = alice.get_by_role("textbox", name="Message text")
    await editor.click()
    await alice.get_by_role("button", name="Bold").click()
    await editor.press_sequentially("bold words")
    await alice.get_by_role("button", name="Bold").click()
    await editor.press_sequentially(" then plain ")
    await alice.get_by_role("button", name="Emoji").click()
    await alice.get_by_role("button", name="rocket").click()
    await alice.get_by_label("Attach files").set_input_files(
        files=[{"name": "plan.txt", "mimeType": "text/plain", "buffer": b"step 1\nstep 2\n"}]
    )
    attached = alice.get_by_role("list", name="Attached files")
    await expect(attached).to_contain_text("uploaded", timeout=15_000)
    await alice.get_by_role("button", name="Send", exact=True).click()
    await expect(alice.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)

    # bob's browser: the mail appears live, formatted, with its attachment.
    await bob.get_by_role("button", name=subject).click()
    frame = bob.frame_locator('iframe[title="Message body"]')
    await expect(frame.locator("b")).to_have_text("bold words", timeout=15_000)
    await expect(frame.locator("body")).to_contain_text("then plain 🚀")
    await expect(bob.get_by_role("list", name="Attachments").get_by_role("button", name="plan.txt")).to_be_visible()
    await alice.close()
    await bob.close()


async def test_a_draft_is_saved_while_writing_and_replaced_not_duplicated(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    page = await signed_in(browser, stack, account)
    subject = f"Draft {uuid.uuid4().hex[:6]}"
    await page.get_by_role("button", name="Compose").click()
    await page.get_by_label("Subject").fill(subject)
    editor = page.get_by_role("textbox", name="Message text")
    await editor.press_sequentially("first thoughts")
    compose = page.get_by_role("form", name="Compose")
    await expect(compose.get_by_role("status")).to_contain_text("Draft saved", timeout=15_000)
    await editor.press_sequentially(", and second thoughts")
    await page.get_by_role("button", name="Close").click()
    # Close saves what the timer had not yet, then closes (the new draft is appended before the
    # old one is removed, so for a moment there are two: never none).
    await expect(compose).to_have_count(0, timeout=15_000)

    # Exactly one draft, the latest, in Drafts (checked over IMAP, and shown in the client).
    async def drafts() -> list[str]:
        return await asyncio.to_thread(imap_message_ids, stack, account.email, account.password, "Drafts")

    for _ in range(100):
        if len(await drafts()) == 1:
            break
        await asyncio.sleep(0.1)
    assert len(await drafts()) == 1
    await page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name="Drafts").click()
    await page.get_by_role("button", name=subject).click()
    body = page.frame_locator('iframe[title="Message body"]').locator("body")  # written in the rich editor: HTML
    await expect(body).to_contain_text("first thoughts, and second thoughts", timeout=15_000)
    # Reopened and sent: the draft goes away.
    await page.get_by_role("button", name="Edit draft").click()
    await page.get_by_label("To", exact=True).fill(account.email)
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)
    for _ in range(100):
        if not await drafts():
            break
        await asyncio.sleep(0.1)
    assert await drafts() == []
    await page.close()


async def test_a_refused_send_keeps_the_message_and_says_why(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    page = await signed_in(browser, stack, account)
    await page.get_by_role("button", name="Compose").click()
    await page.get_by_label("To", exact=True).fill("not-an-address")
    await page.get_by_label("Subject").fill("Will not go")
    await page.get_by_role("textbox", name="Message text").fill("keep me")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("alert")).to_contain_text("Not sent: to: invalid address")
    await expect(page.get_by_role("textbox", name="Message text")).to_have_text("keep me")
    await expect(page.get_by_label("Subject")).to_have_value("Will not go")
    await page.close()


async def test_the_composer_opens_ready_to_type_sends_with_ctrl_enter_and_closes_with_esc(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    page = await signed_in(browser, stack, account)
    await page.locator("body").press("c")
    to = page.get_by_label("To", exact=True)
    await expect(to).to_be_focused()  # typing starts at once
    await page.keyboard.type(other_account.email)
    await page.get_by_label("Subject").fill(f"Esc {tag}")
    await page.get_by_label("Subject").press("Escape")  # closed, what was written kept in Drafts
    await expect(page.get_by_role("form", name="Compose")).to_have_count(0)
    await expect(page.get_by_role("status").filter(has_text="Saved to Drafts")).to_be_visible(timeout=15_000)
    nav = page.get_by_role("navigation", name="Mailboxes")
    await nav.get_by_role("button", name="Drafts").click()
    draft = page.get_by_role("list", name="Messages").locator("li.item").filter(has_text=f"Esc {tag}")
    await expect(draft.locator(".from")).to_have_text(f"To: {other_account.email}", timeout=15_000)  # as typed
    await nav.get_by_role("button", name="INBOX").click()

    await page.locator("body").press("c")
    await page.keyboard.type(account.email)
    await page.get_by_label("Subject").fill(f"Keys {tag}")
    await page.get_by_role("textbox", name="Message text").fill("sent from the keyboard")
    await page.get_by_role("textbox", name="Message text").press("Control+Enter")
    await expect(page.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("list", name="Messages").get_by_role("button", name=f"Keys {tag}")).to_be_visible(
        timeout=15_000
    )
    await page.close()


async def test_a_half_typed_address_does_not_stop_the_draft_from_being_saved(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    page = await signed_in(browser, stack, account)
    await page.get_by_role("button", name="Compose").click()
    await page.get_by_label("To", exact=True).fill("bo")
    await page.get_by_label("Subject").fill(f"Half {tag}")
    await page.get_by_role("textbox", name="Message text").fill("to finish later")
    await expect(page.get_by_role("status").filter(has_text="Draft saved")).to_be_visible(timeout=15_000)
    await page.get_by_role("button", name="Close").click()
    await page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name="Drafts").click()
    await expect(page.get_by_role("list", name="Messages").get_by_role("button", name=f"Half {tag}")).to_be_visible(
        timeout=15_000
    )
    await page.close()


async def test_forward_sends_the_html_part_and_the_attachments_on(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    original = message("dana@partner.example", account.email, f"Figures {tag}", "plain version")
    original.add_alternative("<p>The <b>quarterly</b> figures.</p>", subtype="html")
    original.add_attachment(b"q,revenue\n3,1200\n", maintype="text", subtype="csv", filename="q3.csv")
    await asyncio.to_thread(send_smtp, stack, [original])
    page = await signed_in(browser, stack, account)
    await page.get_by_role("list", name="Messages").get_by_role("button", name=f"Figures {tag}").click()
    await page.get_by_role("region", name="Message").get_by_role("button", name="Forward").click()
    composer = page.get_by_role("form", name="Compose")
    await expect(composer.get_by_role("list", name="Attached files")).to_contain_text("q3.csv")
    await expect(composer.get_by_role("list", name="Attached files")).to_contain_text("forwarded")
    await expect(composer.get_by_role("textbox", name="Message text").locator("b")).to_have_text("quarterly")
    await composer.get_by_label("To", exact=True).fill(other_account.email)
    await composer.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)

    def forwarded() -> list[EmailMessage]:
        return [
            m
            for m in imap_messages(stack, other_account.email, other_account.password)
            if m["Subject"] == f"Fwd: Figures {tag}"
        ]

    deadline = asyncio.get_running_loop().time() + 30
    while not (found := await asyncio.to_thread(forwarded)):
        assert asyncio.get_running_loop().time() < deadline, "the forwarded mail never arrived"
        await asyncio.sleep(0.3)
    (mail,) = found
    files = [(p.get_filename(), p.get_content()) for p in mail.iter_attachments()]
    assert files == [("q3.csv", "q,revenue\n3,1200\n")]
    html = mail.get_body(("html",))
    assert html is not None and "<b>quarterly</b>" in html.get_content()
    await page.close()


async def test_cc_and_bcc_appear_on_demand(browser: Browser, stack: StackInfo, account: Account) -> None:
    page = await signed_in(browser, stack, account)
    await page.get_by_role("button", name="Compose").click()
    composer = page.get_by_role("form", name="Compose")
    await expect(composer.get_by_label("Cc", exact=True)).to_have_count(0)
    await composer.get_by_role("button", name="Cc / Bcc").click()
    await expect(composer.get_by_label("Cc", exact=True)).to_be_visible()
    await expect(composer.get_by_label("Bcc", exact=True)).to_be_visible()
    await page.close()
