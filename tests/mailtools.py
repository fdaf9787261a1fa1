"""Helpers shared by the end-to-end tests: watching a stream, delivering and counting mail."""

from __future__ import annotations

import imaplib
import smtplib
import time
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import redis

from bridge import codec
from bridge.events import Event, MailboxEvent, MtaAccepted
from bridge.stack.launcher import StackInfo

STREAM = "mail:dovecot"


class StreamWatch:
    """Events of one account (or to one recipient) appended to a stream after a point in time."""

    def __init__(self, client: redis.Redis, account: str, stream: str = STREAM) -> None:
        self.client = client
        self.account = account
        self.stream = stream
        self.last_id = "0-0"
        self.mark()

    def mark(self) -> None:
        entries = self.client.xrevrange(self.stream, count=1)
        self.last_id = entries[0][0].decode() if entries else "0-0"

    def _read(self) -> list[Event]:
        found: list[Event] = []
        for _entry_id, fields in self.client.xrange(self.stream, min=f"({self.last_id}"):
            event = codec.decode(fields[b"e"])
            if (isinstance(event, MailboxEvent) and event.account == self.account) or (
                isinstance(event, MtaAccepted) and self.account in event.rcpt_to
            ):
                found.append(event)
        return found

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Event]:
        """Wait until at least `count` events arrived (without moving the mark)."""
        deadline = time.monotonic() + timeout
        events = self._read()
        while len(events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
            events = self._read()
        return events

    def expect(self, count: int, timeout: float = 10.0) -> list[Event]:
        """Wait for `count` events, then make sure no more arrive; returns them and moves the mark."""
        self.wait_for(count, timeout)
        time.sleep(0.3)  # room for a duplicate or a stray event to show up
        events = self._read()
        assert len(events) == count, [codec.to_wire(e) for e in events]
        self.mark()
        return events


def lmtp_deliver(stack: StackInfo, recipient: str, message: EmailMessage) -> None:
    with smtplib.LMTP(stack.lmtp["host"], stack.lmtp["port"], timeout=10) as lmtp:
        lmtp.send_message(message, to_addrs=[recipient])


def sample_message(
    subject: str = "Grüße aus Köln", date: str | None = "Sun, 29 Nov 2026 07:00:00 +0100"
) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@outside.test>"
    m["To"] = "Alice <alice@example.test>"
    m["Subject"] = subject
    m["Message-ID"] = "<hook-test-1@outside.test>"
    if date:
        m["Date"] = date
    m.set_content("Hello Alice,\n\nthis is   the body text.\n")
    return m


def _fetch_all(stack: StackInfo, email: str, password: str, mailbox: str, item: str) -> list[bytes]:
    """`item` of every message in the mailbox, in UID order (read-only: flags untouched)."""
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        imap.login(email, password)
        status, data = imap.select(mailbox, readonly=True)
        if status != "OK" or data[0] == b"0":
            return []  # no such mailbox yet, or empty
        _status, data = imap.uid("FETCH", "1:*", f"({item})")
        return [entry[1] for entry in data if isinstance(entry, tuple)]


def imap_messages(stack: StackInfo, email: str, password: str, mailbox: str = "INBOX") -> list[EmailMessage]:
    """Every message in the mailbox, whole."""
    out: list[EmailMessage] = []
    for raw in _fetch_all(stack, email, password, mailbox, "BODY.PEEK[]"):
        parsed = message_from_bytes(raw, policy=default)
        assert isinstance(parsed, EmailMessage)
        out.append(parsed)
    return out


def imap_message_ids(stack: StackInfo, email: str, password: str, mailbox: str = "INBOX") -> list[str]:
    """The Message-ID of every message in the mailbox, in UID order."""
    headers = _fetch_all(stack, email, password, mailbox, "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]")
    return [str(message_from_bytes(raw).get("Message-ID", "")).strip() for raw in headers]


def wait_for_messages(stack: StackInfo, email: str, password: str, count: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        ids = imap_message_ids(stack, email, password)
        if len(ids) >= count:
            return ids
        time.sleep(0.2)
    return ids


def short_mail(
    to: str, subject: str, body: str = "a short test mail", sender: str = "tests@outside.test"
) -> EmailMessage:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m.set_content(body)
    return m


def send_smtp(stack: StackInfo, messages: list[EmailMessage]) -> None:
    with smtplib.SMTP(stack.smtp["host"], stack.smtp["port"], timeout=30) as smtp:
        for message in messages:
            smtp.send_message(message)
