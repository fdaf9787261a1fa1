"""The filter's stamp: only the X-Mail-Bridge-Id the filter writes reaches Dovecot's dedupe script."""

from __future__ import annotations

import uuid
from email import message_from_bytes
from email.message import EmailMessage

import pytest

from bridge.mail_headers import summarize
from bridge.smtp_filter import stamped, without_sasl_login
from bridge.stack.launcher import StackInfo
from tests.common import Account
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


SUBMITTED = (
    b"Received: from [127.0.0.1] (localhost [127.0.0.1])\r\n"
    b"\t(Authenticated sender: alice@example.test)\r\n"
    b"\tby mail.example.test (Postfix) with ESMTPA id 4Xg2Lq0dZ7z9t\r\n"
    b"\tfor <bob@example.test>; Fri,  4 Dec 2026 05:00:00 +0000 (UTC)\r\n"
    b"Received: from elsewhere (Authenticated sender: someone-else)\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"(Authenticated sender: in the body)\r\n"
)


def test_the_sasl_login_is_read_then_taken_out_of_postfixs_received_field() -> None:
    assert summarize(SUBMITTED).sasl_user == "alice@example.test"
    out = without_sasl_login(SUBMITTED)
    assert b"alice@example.test)" not in out
    head, _, body = out.partition(b"\r\n\r\n")
    # The field stays whole (no empty line cut into the header section), the rest untouched.
    assert head.splitlines()[:4] == [
        b"Received: from [127.0.0.1] (localhost [127.0.0.1])",
        b"\tby mail.example.test (Postfix) with ESMTPA id 4Xg2Lq0dZ7z9t",
        b"\tfor <bob@example.test>; Fri,  4 Dec 2026 05:00:00 +0000 (UTC)",
        b"Received: from elsewhere (Authenticated sender: someone-else)",
    ]
    assert body == b"(Authenticated sender: in the body)\r\n"
    assert summarize(out).queue_id == "4Xg2Lq0dZ7z9t"


@pytest.mark.parametrize(
    "mail",
    [
        b"Received: from x by mail.example.test (Postfix) with ESMTP id 4Xg2\nSubject: a\n\nbody\n",
        b"Subject: no received at all\n\n(Authenticated sender: x)\n",
        b"",
    ],
)
def test_mail_without_a_login_passes_unchanged(mail: bytes) -> None:
    assert without_sasl_login(mail) == mail


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
