"""The web client's design (issue 20, "A real design"): icons are SVGs, not emoji; a comfortable and a
compact density that fit more of the list on a laptop and keep 44 px rows on a phone, remembered over
a reload; files dropped on the composer attached and sent; skeletons while the list or a message loads."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from playwright.async_api import Browser, Page, Route, expect

from bridge.stack.launcher import StackInfo
from tests.browser import PHONE, signed_in
from tests.common import Account
from tests.mailtools import send_smtp
from tests.test_e2e_mail import message
from tests.test_web_a11y import violations
from tests.test_web_paging import append_mails, indexed

pytestmark = pytest.mark.e2e

LAPTOP = {"width": 1280, "height": 800}

# Text drawn as an icon: pictographs (emoji) and the glyphs the client used before its icon set.
GLYPHS_IN_BUTTONS = """() => [...document.querySelectorAll("button")]
    .filter((b) => !b.closest(".emoji"))  // the emoji picker's buttons are the emoji to insert
    .map((b) => b.textContent)
    .filter((t) => /[\\p{Extended_Pictographic}★☆✉←\\u00d7•]/u.test(t))"""


async def fully_visible_rows(page: Page) -> int:
    """How many message rows the list shows whole, as it is scrolled now."""
    count: int = await page.get_by_role("list", name="Messages").evaluate(
        """(ul) => {
            const box = ul.getBoundingClientRect();
            return [...ul.querySelectorAll("li.item")].filter((li) => {
                const r = li.getBoundingClientRect();
                return r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5;
            }).length;
        }"""
    )
    return count


async def test_actions_and_states_are_svg_icons_with_their_names_kept(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Icons {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    page = await signed_in(browser, stack, account)
    listing = page.get_by_role("list", name="Messages")
    row = listing.locator("li.item").filter(has_text=subject)
    await expect(row).to_be_visible(timeout=15_000)
    await row.hover()
    for name in ["Star this message", "Archive this message", "Delete this message", "Mark this message read"]:
        button = row.get_by_role("button", name=name)
        await expect(button).to_be_visible()
        await expect(button.locator('svg[aria-hidden="true"]')).to_have_count(1)

    await row.get_by_role("button", name="Star this message").click()
    star = row.locator(".from svg")  # a starred row says so with an icon (and "(starred)" for a screen reader)
    await expect(star).to_have_count(1, timeout=15_000)
    await expect(row.get_by_role("button", name=subject)).to_contain_text("(starred)")

    await row.get_by_role("button", name=subject).click()
    region = page.get_by_role("region", name="Message")
    await expect(region.get_by_role("button", name="Starred", exact=True)).to_be_visible(timeout=15_000)
    for name in ["Reply", "Reply all", "Forward", "Archive", "Delete", "Report spam", "Mark unread"]:
        await expect(region.get_by_role("button", name=name, exact=True).locator("svg")).to_have_count(1)
    for name in ["Compose", "Sound", "Sign out", "Theme: System", "Density: Comfortable"]:
        await expect(page.locator("header").get_by_role("button", name=name).locator("svg")).to_have_count(1)
    nav = page.get_by_role("navigation", name="Mailboxes")
    assert await nav.get_by_role("button").count() == await nav.locator("button svg").count()

    await page.get_by_role("button", name="Compose").click()
    composer = page.get_by_role("form", name="Compose")
    await composer.get_by_role("button", name="Emoji").click()
    await expect(composer.get_by_role("button", name="rocket")).to_be_visible()
    toolbar = composer.get_by_role("toolbar", name="Formatting")
    assert await toolbar.get_by_role("button").count() == await toolbar.locator("button svg").count() == 7
    assert await page.evaluate(GLYPHS_IN_BUTTONS) == []
    await page.close()


async def test_each_density_fits_its_rows_on_a_laptop_is_remembered_and_keeps_44px_rows_on_a_phone(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    tag = uuid.uuid4().hex[:6]
    await asyncio.to_thread(append_mails, stack, account, tag, 30)  # more than a screenful in either density
    await indexed(stack, account, 30)

    # Dark, and axe in both densities (the accessibility test has the light theme at the default);
    # bypass_csp only so the test can add axe's script tag.
    laptop = await browser.new_context(viewport=LAPTOP, color_scheme="dark", bypass_csp=True)
    page = await signed_in(laptop, stack, account)
    await expect(page.get_by_role("button", name=f"Paged 029 {tag}")).to_be_visible(timeout=15_000)
    await expect(page.locator("li.item")).to_have_count(30, timeout=15_000)
    assert await page.evaluate("document.documentElement.dataset.density") == "comfortable"  # the default
    comfortable = await fully_visible_rows(page)
    assert comfortable >= 14, f"{comfortable} rows fit in the comfortable density"

    # The type scale's hierarchy: the open message's subject over the sender, over the subject in
    # the list, over the date; the sender bolder while unread; the snippet a muted colour.
    await page.get_by_role("button", name=f"Paged 028 {tag}").click()
    await expect(page.get_by_role("region", name="Message").get_by_role("heading")).to_have_text(f"Paged 028 {tag}")
    await expect(page.locator("li.item").nth(1)).not_to_have_class(re.compile(r"\bunread\b"), timeout=15_000)
    look = await page.evaluate(
        """() => {
            const css = (selector, n = 0) => getComputedStyle(document.querySelectorAll(selector)[n]);
            const size = (selector, n) => parseFloat(css(selector, n).fontSize);
            return {
                heading: size(".preview h2"), sender: size("li.item .from"), subject: size("li.item .subject"),
                date: size("li.item .when"), unreadWeight: Number(css("li.item .from", 0).fontWeight),
                readWeight: Number(css("li.item .from", 1).fontWeight),
                subjectColour: css("li.item .subject").color, snippetColour: css("li.item .snippet").color,
            };
        }"""
    )
    assert look["heading"] > look["sender"] > look["subject"] > look["date"], look
    assert look["unreadWeight"] > look["readWeight"], look
    assert look["snippetColour"] != look["subjectColour"], look
    assert await violations(page) == []

    await page.get_by_role("button", name="Density: Comfortable").click()
    await expect(page.get_by_role("button", name="Density: Compact")).to_be_visible()
    compact = await fully_visible_rows(page)
    assert compact >= 18, f"{compact} rows fit in the compact density"
    assert compact > comfortable
    assert await violations(page) == []

    await page.reload()  # the choice is this browser's: it outlives a reload
    await expect(page.get_by_role("button", name="Density: Compact")).to_be_visible(timeout=15_000)
    await expect(page.locator("li.item")).to_have_count(30, timeout=15_000)
    assert await page.evaluate("document.documentElement.dataset.density") == "compact"
    assert await fully_visible_rows(page) == compact
    await laptop.close()

    # A phone: every row is still a 44 px target, in either density.
    phone = await browser.new_context(viewport=PHONE, has_touch=True)
    page = await signed_in(phone, stack, account)
    rows = page.get_by_role("list", name="Messages").locator("li.item .open")
    await expect(rows).to_have_count(30, timeout=15_000)
    for density in ["Comfortable", "Compact"]:
        heights = await rows.evaluate_all("(all) => all.map((r) => r.getBoundingClientRect().height)")
        assert min(heights) >= 44, (density, min(heights))
        await page.get_by_role("button", name=f"Density: {density}").click()
    await expect(page.get_by_role("button", name="Density: Comfortable")).to_be_visible()  # round again
    await phone.close()


async def test_a_file_dropped_on_the_composer_is_attached_and_sent(
    browser: Browser, stack: StackInfo, account: Account, other_account: Account
) -> None:
    subject = f"Dropped {uuid.uuid4().hex[:6]}"
    alice = await signed_in(browser, stack, account)
    bob = await signed_in(browser, stack, other_account)
    await alice.get_by_role("button", name="Compose").click()
    composer = alice.get_by_role("form", name="Compose")
    await alice.get_by_label("To", exact=True).fill(other_account.email)
    await alice.get_by_label("Subject").fill(subject)
    await alice.get_by_role("textbox", name="Message text").fill("The notes are attached.")
    # The file input stays for the keyboard: next after the text, its button outlined when focused.
    await alice.keyboard.press("Tab")
    await expect(composer.get_by_label("Attach files")).to_be_focused()
    outline = await composer.locator(".attach").evaluate("(label) => getComputedStyle(label).outlineStyle")
    assert outline == "solid", outline
    # What the desktop hands over when a file is dragged from it: a DataTransfer carrying a File.
    files = await alice.evaluate_handle(
        """() => {
            const dt = new DataTransfer();
            dt.items.add(new File(["first note\\nsecond note\\n"], "notes.txt", { type: "text/plain" }));
            return dt;
        }"""
    )
    hint = alice.get_by_text("Drop files to attach them")
    await expect(hint).to_have_count(0)
    await composer.dispatch_event("dragenter", {"dataTransfer": files})
    await composer.dispatch_event("dragover", {"dataTransfer": files})
    await expect(composer).to_have_class(re.compile(r"\bdropping\b"))  # the drop zone is highlighted
    await expect(hint).to_be_visible()
    await composer.dispatch_event("drop", {"dataTransfer": files})
    await expect(composer).not_to_have_class(re.compile(r"\bdropping\b"))
    await expect(hint).to_have_count(0)
    attached = composer.get_by_role("list", name="Attached files")
    await expect(attached).to_contain_text("notes.txt")
    await expect(attached).to_contain_text("uploaded", timeout=15_000)
    await alice.get_by_role("button", name="Send", exact=True).click()
    await expect(alice.get_by_role("status").filter(has_text="Sent").first).to_be_visible(timeout=15_000)

    await bob.get_by_role("button", name=subject).click()
    attachment = bob.get_by_role("list", name="Attachments").get_by_role("button", name="notes.txt")
    await expect(attachment).to_be_visible(timeout=15_000)
    async with bob.expect_download() as download:
        await attachment.click()
    saved = await (await download.value).path()
    assert saved.read_bytes() == b"first note\nsecond note\n"
    await alice.close()
    await bob.close()


async def test_skeletons_show_while_the_listing_and_a_message_are_pending_and_go_when_they_come(
    browser: Browser, stack: StackInfo, account: Account
) -> None:
    subject = f"Skeleton {uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, subject)])
    # bypass_csp only so the test can add axe's script tag; no service worker, whose own fetches
    # (it keeps copies of message bodies) page.route cannot hold back.
    context = await browser.new_context(viewport=LAPTOP, bypass_csp=True, service_workers="block")
    page = await signed_in(context, stack, account)
    listing = page.get_by_role("list", name="Messages")
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)

    # The next listing is held back until the test lets it go: the Unread view has nothing to show
    # meanwhile (only the default view shows the list last seen).
    release = asyncio.Event()
    held: list[str] = []

    async def hold(route: Route) -> None:
        held.append(route.request.url)
        await release.wait()
        await route.continue_()

    await page.route(re.compile(r"/api/v1/email/inbox\?"), hold)
    await page.get_by_role("button", name="Unread", exact=True).click()
    await expect(listing).to_have_attribute("aria-busy", "true")
    await expect(listing.locator("li.skeleton").first).to_be_visible()
    assert await listing.locator("li.skeleton").count() >= 14  # a screenful of them
    await expect(listing.locator("li.item")).to_have_count(0)
    await expect(listing).to_contain_text("Loading…")  # said to a screen reader; the skeletons are hidden from it
    skeletons = listing.locator("li.skeleton")
    assert await skeletons.count() == await listing.locator("li.skeleton[aria-hidden='true']").count()
    assert held, "the listing was not asked for"
    assert await violations(page) == []

    release.set()
    await expect(listing.get_by_role("button", name=subject)).to_be_visible(timeout=15_000)
    await expect(listing).to_have_attribute("aria-busy", "false")
    await expect(listing.locator("li.skeleton")).to_have_count(0)
    await expect(listing).not_to_contain_text("Loading…")

    # The same for a message on its way: the preview is busy, with the shape of a message.
    opened = asyncio.Event()

    async def hold_message(route: Route) -> None:
        await opened.wait()
        await route.continue_()

    await page.route(re.compile(r"/api/v1/email/[^/?]+$"), hold_message)
    await listing.get_by_role("button", name=subject).click()
    preview = page.get_by_role("region", name="Message")
    await expect(preview).to_have_attribute("aria-busy", "true")
    await expect(preview.locator(".preview-skeleton")).to_be_visible()
    opened.set()
    await expect(preview.get_by_role("heading", name=subject)).to_be_visible(timeout=15_000)
    await expect(preview.locator(".preview-skeleton")).to_have_count(0)
    await expect(preview).not_to_have_attribute("aria-busy", "true")
    await context.close()
