"""The index's facts of a mail (attachments, size, category: the content filter's summary) are met
with its delivery by Message-ID, which any sender can copy. Another user's mail that reuses a
Message-ID must not change the facts of a mail already delivered, nor those the index gives a copy
of it made later (a move), whoever that mail is sent to."""

from __future__ import annotations

import asyncio
import smtplib
import time
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiohttp
import pytest

from bridge.stack.launcher import StackInfo
from tests.common import Account, AccountPool
from tests.mailtools import send_smtp
from tests.test_http_mail import authed, get_json

pytestmark = pytest.mark.e2e


def plain(sender: str, to: str, subject: str, message_id: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = sender, to, subject, message_id
    m.set_content("no attachment here\n")
    return m


def with_attachment(sender: str, to: list[str], subject: str, message_id: str) -> EmailMessage:
    m = plain(sender, ", ".join(to), subject, message_id)
    m.add_attachment(b"%PDF-1.4 forged", maintype="application", subtype="pdf", filename="forged.pdf")
    return m


def submit(stack: StackInfo, account: Account, m: EmailMessage) -> None:
    with smtplib.SMTP(stack.submission["host"], stack.submission["port"], timeout=10) as smtp:
        smtp.login(account.email, account.password)
        smtp.send_message(m)


async def listed(
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    mailbox: str,
    subject: str,
    ready: Any = lambda e: True,
) -> dict[str, Any]:
    """The listing item of `subject` in `mailbox`, once `ready(item)` holds."""
    # A ceiling against hangs, not a speed check: a mail crosses Postfix, the filter and Dovecot
    # first, which on a loaded 2-core machine has taken over 15 s.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = await get_json(http, "/api/v1/email/inbox", headers, mailbox=mailbox, limit="200")
        found: list[dict[str, Any]] = [e for e in listing["emails"] if e["subject"] == subject and ready(e)]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{subject!r} not listed in {mailbox} as expected")


async def a_plain_mail(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> tuple[str, dict[str, Any]]:
    """A mail without attachments in the account's inbox, listed with the filter's facts."""
    message_id = make_msgid(domain="outside.test")
    m = plain("Carol <carol@outside.test>", account.email, "the original", message_id)
    await asyncio.to_thread(send_smtp, stack, [m])
    item = await listed(http, await authed(http, account), "INBOX", "the original", lambda e: e["size"] > 0)
    assert item["hasAttachments"] is False
    return message_id, item


async def test_another_users_mail_with_the_same_message_id_changes_nothing_of_the_original(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account, account_pool: AccountPool
) -> None:
    """B sends C a mail with an attachment under A's mail's Message-ID: A's mail keeps its facts,
    in A's inbox and when A moves it (its copy is indexed from the facts met by Message-ID)."""
    a, b, c = account, other_account, account_pool.take()
    message_id, original = await a_plain_mail(stack, http, a)

    forged = with_attachment(b.email, [c.email], "the copycat", message_id)
    await asyncio.to_thread(submit, stack, b, forged)
    # Indexed for C with its own summary: B's facts have been met by then.
    await listed(http, await authed(http, c), "INBOX", "the copycat", lambda e: e["hasAttachments"])

    a_headers = await authed(http, a)
    again = await listed(http, a_headers, "INBOX", "the original")
    assert (again["hasAttachments"], again["size"]) == (False, original["size"])

    async with http.post(f"/api/v1/email/{original['id']}/archive", headers=a_headers) as r:
        assert r.status == 200, await r.text()
    archived = await listed(http, a_headers, "Archive", "the original")
    assert (archived["hasAttachments"], archived["size"]) == (False, original["size"])


async def test_a_later_mail_to_the_same_user_with_the_same_message_id_has_its_own_facts(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    """B sends the copycat to A: A then holds two mails with one Message-ID, each with its own
    facts; the first, delivered and met with its summary before, is not changed by the second's."""
    a, b = account, other_account
    message_id, original = await a_plain_mail(stack, http, a)

    await asyncio.to_thread(submit, stack, b, with_attachment(b.email, [a.email], "the copycat", message_id))
    a_headers = await authed(http, a)
    copycat = await listed(http, a_headers, "INBOX", "the copycat", lambda e: e["hasAttachments"])
    assert copycat["size"] > original["size"]
    again = await listed(http, a_headers, "INBOX", "the original")
    assert (again["hasAttachments"], again["size"]) == (False, original["size"])
