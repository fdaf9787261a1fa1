"""The thin slice: real SMTP in, Postfix filter and Dovecot hook, Redis Streams, Socket.IO out."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from email.message import EmailMessage
from email.utils import make_msgid

import aiohttp
import pytest
import redis.asyncio as aioredis

from bridge import codec
from bridge.browser_events import parse_email_id
from bridge.events import Direction, MtaAccepted
from bridge.stack.launcher import StackInfo
from tests.common import Account, login
from tests.socket_client import RecordingClient

pytestmark = pytest.mark.e2e


def message(sender: str, to: str, subject: str, body: str = "Hello there, this is the body.") -> EmailMessage:
    m = EmailMessage()
    m["From"] = f"Sender Person <{sender}>"
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="outside.test")
    m.set_content(body)
    return m


def send_smtp(stack: StackInfo, m: EmailMessage) -> None:
    with smtplib.SMTP(stack.smtp["host"], stack.smtp["port"], timeout=10) as smtp:
        smtp.send_message(m)


async def connected(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> RecordingClient:
    client = RecordingClient()
    await client.connect(stack.web_url, await login(http, account))
    return client


async def mta_event(redis: aioredis.Redis, message_id: str, timeout: float = 10) -> MtaAccepted:
    async def scan() -> MtaAccepted:
        while True:
            for _entry_id, fields in await redis.xrevrange("mail:postfix", count=500):
                event = codec.decode(fields[b"e"])
                if isinstance(event, MtaAccepted) and event.message_id == message_id:
                    return event
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(scan(), timeout)


async def test_smtp_mail_reaches_the_socket_as_new_email(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, redis_client: aioredis.Redis
) -> None:
    client = await connected(stack, http, account)
    subject = f"Grüße {uuid.uuid4().hex[:8]}"
    m = message("carol@outside.test", account.email, subject)
    await asyncio.to_thread(send_smtp, stack, m)
    event = await client.wait_for("new_email", lambda e: e["subject"] == subject)
    await client.close()

    assert event["from"] == "Sender Person <carol@outside.test>"
    assert event["preview"].startswith("Hello there, this is the body.")
    assert event["account"] == account.email
    assert event["mailbox"] == "INBOX"
    assert event["uid"] >= 1
    assert event["unread"] is True
    assert event["hasAttachments"] is False and event["size"] > 100  # from the filter's summary
    assert event["timestamp"].endswith("Z")
    assert event["eventId"].count("-") == 1
    ref = parse_email_id(event["id"])
    assert (ref.account, ref.mailbox, ref.uid) == (account.email, "INBOX", event["uid"])

    mta = await mta_event(redis_client, m["Message-ID"])
    assert mta.direction is Direction.INBOUND
    assert mta.rcpt_to == (account.email,)
    assert mta.mail_from == "carol@outside.test"
    assert mta.subject == subject
    assert mta.queue_id and mta.key.startswith(f"postfix:{mta.queue_id}:")


async def test_new_email_says_whether_it_has_attachments(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    client = await connected(stack, http, account)
    m = message("carol@outside.test", account.email, "with file")
    m.add_attachment(b"x" * 5000, maintype="application", subtype="octet-stream", filename="f.bin")
    await asyncio.to_thread(send_smtp, stack, m)
    event = await client.wait_for("new_email", lambda e: e["subject"] == "with file")
    assert event["hasAttachments"] is True and event["size"] > 5000
    await client.close()


async def test_events_reach_only_their_account(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    other = other_account
    mine, theirs = await connected(stack, http, account), await connected(stack, http, other)
    subject = f"private {uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(send_smtp, stack, message("carol@outside.test", account.email, subject))
    await mine.wait_for("new_email", lambda e: e["subject"] == subject)
    # The other socket had the same time to receive it; give it a further moment, then check.
    await asyncio.sleep(0.3)
    assert not [e for name, e in theirs.events if name == "new_email"]
    await mine.close()
    await theirs.close()


async def test_submission_with_sasl_is_outbound(
    stack: StackInfo,
    http: aiohttp.ClientSession,
    account: Account,
    redis_client: aioredis.Redis,
    other_account: Account,
) -> None:
    recipient = other_account
    client = await connected(stack, http, recipient)
    subject = f"submitted {uuid.uuid4().hex[:8]}"
    m = message(account.email, recipient.email, subject)

    def submit() -> None:
        with smtplib.SMTP(stack.submission["host"], stack.submission["port"], timeout=10) as smtp:
            smtp.login(account.email, account.password)
            smtp.send_message(m)

    await asyncio.to_thread(submit)
    await client.wait_for("new_email", lambda e: e["subject"] == subject)
    await client.close()
    mta = await mta_event(redis_client, m["Message-ID"])
    assert mta.direction is Direction.OUTBOUND
    assert mta.sasl_user == account.email


def test_submission_refuses_a_forged_sender(stack: StackInfo, account: Account) -> None:
    m = message("alice@example.test", account.email, "forged")
    with smtplib.SMTP(stack.submission["host"], stack.submission["port"], timeout=10) as smtp:
        smtp.login(account.email, account.password)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.send_message(m)


def test_submission_requires_authentication(stack: StackInfo, account: Account) -> None:
    m = message(account.email, account.email, "no auth")
    with (
        smtplib.SMTP(stack.submission["host"], stack.submission["port"], timeout=10) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        smtp.send_message(m)
