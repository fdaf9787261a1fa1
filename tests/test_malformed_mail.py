"""Hostile and broken mail through the real Postfix, filter and Dovecot: always delivered, always an event."""

from __future__ import annotations

import base64
import os
import smtplib
import subprocess
import uuid

import pytest
import redis

from bridge.events import MessageNew, MtaAccepted
from bridge.stack.launcher import StackInfo
from tests.common import Account
from tests.mailtools import StreamWatch, wait_for_messages

pytestmark = pytest.mark.e2e


def raw_cases(to: str) -> dict[str, bytes]:
    crlf = b"\r\n"
    head = b"To: " + to.encode() + crlf
    big = base64.encodebytes(os.urandom(15 * 1024 * 1024))  # about 20 MB once encoded
    parts = b"".join(
        b"--P\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=p%d.txt\r\n\r\nx\r\n" % i
        for i in range(10_000)
    )
    return {
        "broken-mime": head
        + b'Subject: broken mime\r\nContent-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
        + b"--never-closed\r\nContent-Type: text/plain\r\n\r\nhalf a part\r\n--never-cl",
        "8bit-junk": head
        + b"Subject: caf\xe9 \xff\xfe junk\r\nFrom: \xc3\x28 <junk@outside.test>\r\n\r\n\xff\xfe body\r\n",
        "rfc2047-garbage": head
        + b"Subject: =?utf-8?q?=FF=FE=?= =?bogus-charset?B?////?= =?utf-8?B?not base64!?=\r\n"
        + b"From: =?utf-8?q?=E2=82?= <garbage@outside.test>\r\n\r\nbody\r\n",
        "no-date-from-msgid": head + b"Subject: bare\r\n\r\nno Date, From or Message-ID\r\n",
        "huge-attachment": head
        + b'Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        + b"--B\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        + b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        + b"Content-Disposition: attachment; filename=big.bin\r\n\r\n"
        + big
        + b"--B--\r\n",
        "ten-thousand-parts": head
        + b'Subject: many parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="P"\r\n\r\n'
        + parts
        + b"--P--\r\n",
        "long-header-lines": head
        + b"Subject: "
        + b"long " * 20_000
        + crlf
        + b"X-Folded: "
        + b"a\r\n b" * 5_000
        + crlf
        + crlf
        + b"body\r\n",
    }


@pytest.fixture
def sync_redis(stack: StackInfo) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, socket_timeout=10)


def test_malformed_mail_is_delivered_with_an_event(stack: StackInfo, account: Account, sync_redis: redis.Redis) -> None:
    cases = raw_cases(account.email)
    mta = StreamWatch(sync_redis, account.email, stream="mail:postfix")
    dovecot = StreamWatch(sync_redis, account.email)
    with smtplib.SMTP(stack.smtp["host"], stack.smtp["port"], timeout=120) as smtp:
        for name, raw in cases.items():
            smtp.sendmail(f"{name}@outside.test", [account.email], raw)
    delivered = wait_for_messages(stack, account.email, account.password, len(cases), timeout=120)
    assert len(delivered) == len(cases)

    accepted = [e for e in mta.wait_for(len(cases), timeout=60) if isinstance(e, MtaAccepted)]
    by_sender = {e.mail_from.split("@")[0]: e for e in accepted}
    assert set(by_sender) == set(cases)
    big = by_sender["huge-attachment"]
    assert big.size > 20_000_000
    assert [(a.filename, a.content_type) for a in big.attachments] == [("big.bin", "application/octet-stream")]
    many = by_sender["ten-thousand-parts"]
    assert many.truncated and len(many.attachments) > 100
    assert by_sender["8bit-junk"].subject.startswith("caf")
    assert by_sender["no-date-from-msgid"].subject == "bare"
    new = [e for e in dovecot.wait_for(len(cases) + 1, timeout=60) if isinstance(e, MessageNew)]
    assert len(new) == len(cases)

    # The filter is still up and well: an ordinary mail goes through right after.
    with smtplib.SMTP(stack.smtp["host"], stack.smtp["port"], timeout=30) as smtp:
        smtp.sendmail("after@outside.test", [account.email], b"Subject: after\r\n\r\nfine\r\n")
    assert len(wait_for_messages(stack, account.email, account.password, len(cases) + 1)) == len(cases) + 1


def test_local_submission_is_a_local_event(stack: StackInfo, account: Account, sync_redis: redis.Redis) -> None:
    """sendmail(1) on the machine itself goes through pickup: direction "local"."""
    mta = StreamWatch(sync_redis, account.email, stream="mail:postfix")
    subject = f"local {uuid.uuid4().hex[:8]}"
    message = f"To: {account.email}\nSubject: {subject}\n\nfrom cron, say\n".encode()
    subprocess.run(
        ["sendmail", "-C", os.path.join(stack.state_dir, "postfix", "etc"), "-f", "root@example.test", account.email],
        input=message,
        check=True,
        timeout=30,
    )
    (event,) = [e for e in mta.wait_for(1, timeout=60) if isinstance(e, MtaAccepted)]
    assert event.direction == "local"
    assert event.subject == subject
