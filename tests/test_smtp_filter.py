"""The filter's stamp: only the X-Mail-Bridge-Id the filter writes reaches Dovecot's dedupe script."""

from __future__ import annotations

import uuid
from email import message_from_bytes
from email.message import EmailMessage

import pytest

from bridge.smtp_filter import stamped
from bridge.stack.launcher import StackInfo
from tests.conftest import Account
from tests.mailtools import send_smtp, wait_for_messages

KEY = "postfix:Q1:abc:def"


@pytest.mark.parametrize(
    "forged",
    [
        b"X-Mail-Bridge-Id: postfix:other\r\n",
        b"x-mail-bridge-id:postfix:other\r\n",
        b"X-MAIL-BRIDGE-ID: postfix:\r\n other folded\r\n\tand more\r\n",
    ],
)
def test_a_forged_stamp_is_removed_and_ours_is_the_only_one(forged: bytes) -> None:
    mail = b"From: a@outside.test\r\n" + forged + b"Subject: hi\r\n\r\nX-Mail-Bridge-Id: in the body stays\r\n"
    out = stamped(mail, KEY)
    parsed = message_from_bytes(out)
    assert parsed.get_all("X-Mail-Bridge-Id") == [KEY]
    assert parsed["Subject"] == "hi" and parsed["From"] == "a@outside.test"
    assert out.endswith(b"\r\n\r\nX-Mail-Bridge-Id: in the body stays\r\n")  # the body is untouched


def test_a_mail_without_a_stamp_only_gains_ours() -> None:
    mail = b"Subject: plain\n\nbody\n"
    assert stamped(mail, KEY) == b"X-Mail-Bridge-Id: " + KEY.encode() + b"\n" + mail


def test_headers_only_mail_is_stamped() -> None:
    out = stamped(b"Subject: s\r\nX-Mail-Bridge-Id: forged\r\n", KEY)
    assert out == b"X-Mail-Bridge-Id: " + KEY.encode() + b"\r\nSubject: s\r\n"


@pytest.mark.e2e
def test_mails_sharing_a_forged_stamp_are_all_delivered(stack: StackInfo, account: Account) -> None:
    """Through Postfix, the filter and Dovecot's dedupe script: a sender who writes the same
    X-Mail-Bridge-Id into two mails cannot have the second discarded as a duplicate."""
    tag = uuid.uuid4().hex[:8]
    mails = []
    for n in range(2):
        m = EmailMessage()
        m["From"] = "forger@outside.test"
        m["To"] = account.email
        m["Subject"] = f"forged {tag} {n}"
        m["Message-ID"] = f"<forged.{tag}.{n}@outside.test>"
        m["X-Mail-Bridge-Id"] = f"forged-{tag}"
        m.set_content("two mails, one forged id")
        mails.append(m)
    send_smtp(stack, mails)
    delivered = wait_for_messages(stack, account.email, account.password, 2, timeout=30)
    assert sorted(delivered) == [f"<forged.{tag}.0@outside.test>", f"<forged.{tag}.1@outside.test>"]
