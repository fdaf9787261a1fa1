"""The Dovecot Lua hook, driven by real LMTP deliveries and real IMAP commands.

Each operation must produce exactly the events listed, once each, with the right fields.
"""

from __future__ import annotations

import imaplib
import smtplib
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import redis

from bridge import codec
from bridge.events import (
    Event,
    FlagsClear,
    FlagsSet,
    MailboxCreate,
    MailboxDelete,
    MailboxEvent,
    MailboxRename,
    MailboxSubscribe,
    MailboxUnsubscribe,
    MessageAppend,
    MessageExpunge,
    MessageNew,
)
from bridge.stack.launcher import StackInfo
from tests.conftest import Account

pytestmark = pytest.mark.e2e

STREAM = "mail:dovecot"


class StreamWatch:
    """Events of one account appended to the Dovecot stream after a point in time."""

    def __init__(self, client: redis.Redis, account: str) -> None:
        self.client = client
        self.account = account
        self.last_id = "$"
        self.mark()

    def mark(self) -> None:
        entries = self.client.xrevrange(STREAM, count=1)
        self.last_id = entries[0][0].decode() if entries else "0-0"

    def _read(self) -> list[Event]:
        found: list[Event] = []
        for _entry_id, fields in self.client.xrange(STREAM, min=f"({self.last_id}"):
            event = codec.decode(fields[b"e"])
            if isinstance(event, MailboxEvent) and event.account == self.account:
                found.append(event)
        return found

    def expect(self, count: int, timeout: float = 10.0) -> list[Event]:
        """Wait for `count` events, then make sure no more arrive; returns them and moves the mark."""
        deadline = time.monotonic() + timeout
        events = self._read()
        while len(events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
            events = self._read()
        time.sleep(0.3)  # room for a duplicate or a stray event to show up
        events = self._read()
        assert len(events) == count, [codec.to_wire(e) for e in events]
        self.mark()
        return events


@pytest.fixture
def sync_redis(stack: StackInfo) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


@pytest.fixture
def imap(stack: StackInfo, account: Account) -> Iterator[imaplib.IMAP4]:
    connection = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
    yield connection
    try:
        connection.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


def lmtp_deliver(stack: StackInfo, recipient: str, message: EmailMessage) -> None:
    with smtplib.LMTP(stack.lmtp["host"], stack.lmtp["port"], timeout=10) as lmtp:
        lmtp.send_message(message, to_addrs=[recipient])


def sample_message(subject: str = "Grüße aus Köln", date: str | None = "Sun, 29 Nov 2026 07:00:00 +0100") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@outside.test>"
    m["To"] = "Alice <alice@example.test>"
    m["Subject"] = subject
    m["Message-ID"] = "<hook-test-1@outside.test>"
    if date:
        m["Date"] = date
    m.set_content("Hello Alice,\n\nthis is   the body text.\n")
    return m


def ok(result: tuple[str, Any]) -> Any:
    status, data = result
    assert status == "OK", data
    return data


def test_lmtp_delivery_is_message_new_with_every_field(
    stack: StackInfo, account: Account, sync_redis: redis.Redis
) -> None:
    watch = StreamWatch(sync_redis, account.email)
    lmtp_deliver(stack, account.email, sample_message())
    create, new = watch.expect(2)
    assert isinstance(create, MailboxCreate) and create.mailbox == "INBOX"  # INBOX auto-created
    assert isinstance(new, MessageNew)
    assert new.account == account.email
    assert new.mailbox == "INBOX"
    assert new.uid == 1 and new.uidvalidity > 0
    assert new.from_address == "juergen@outside.test"
    assert new.from_name == "Jürgen Müller"
    assert new.from_.startswith("=?utf-8?q?J=C3=BCrgen")  # the raw header, as Dovecot gives it
    assert new.to_address == "alice@example.test"
    assert new.to_name == "Alice"
    assert new.subject == "Grüße aus Köln"
    assert new.snippet == "Hello Alice, this is the body text."
    assert new.message_id == "<hook-test-1@outside.test>"
    assert new.date == 1795932000
    assert new.tz == 60
    assert new.flags == () and new.keywords == ()
    assert new.key == f"dovecot:message.new:{account.email}:INBOX:{new.uidvalidity}:1"
    assert abs(new.ts / 1000 - time.time()) < 60


def test_missing_date_header_gives_no_date(stack: StackInfo, account: Account, sync_redis: redis.Redis) -> None:
    watch = StreamWatch(sync_redis, account.email)
    lmtp_deliver(stack, account.email, sample_message(date=None))
    _create, new = watch.expect(2)
    assert isinstance(new, MessageNew) and new.date is None


def test_imap_operations_produce_exactly_their_events(
    stack: StackInfo, account: Account, sync_redis: redis.Redis, imap: imaplib.IMAP4
) -> None:
    watch = StreamWatch(sync_redis, account.email)
    lmtp_deliver(stack, account.email, sample_message("first"))
    _create, first = watch.expect(2)
    assert isinstance(first, MessageNew)
    validity = first.uidvalidity

    ok(imap.login(account.email, account.password))
    ok(imap.select("INBOX"))

    def one(kind: type[Event], check: Callable[[Any], bool]) -> Any:
        (event,) = watch.expect(1)
        assert isinstance(event, kind), codec.to_wire(event)
        assert check(event), codec.to_wire(event)
        return event

    ok(imap.append("INBOX", "(\\Flagged)", None, sample_message("appended").as_bytes()))
    one(MessageAppend, lambda e: (e.uid, e.flags, e.subject, e.mailbox) == (2, ("\\Flagged",), "appended", "INBOX"))

    # +\Seen: one flags.set (MessageRead folded in, the empty FlagsClear and \Recent dropped).
    ok(imap.uid("STORE", "1", "+FLAGS", "(\\Seen)"))
    one(FlagsSet, lambda e: (e.uid, e.flags, e.keywords, e.uidvalidity) == (1, ("\\Seen",), (), validity))
    ok(imap.uid("STORE", "1", "-FLAGS", "(\\Seen)"))
    one(FlagsClear, lambda e: (e.uid, e.flags, e.keywords) == (1, ("\\Seen",), ()))
    ok(imap.uid("STORE", "1", "+FLAGS", "($Important)"))
    one(FlagsSet, lambda e: (e.uid, e.flags, e.keywords) == (1, (), ("$Important",)))

    ok(imap.create("Work"))
    one(MailboxCreate, lambda e: e.mailbox == "Work")
    ok(imap.subscribe("Work"))
    one(MailboxSubscribe, lambda e: e.mailbox == "Work")

    ok(imap.uid("COPY", "2", "Work"))
    copied = one(MessageAppend, lambda e: (e.mailbox, e.uid, e.subject) == ("Work", 1, "appended"))
    assert copied.uidvalidity != validity or copied.mailbox != "INBOX"

    ok(imap.uid("MOVE", "1", "Work"))
    moved_in, moved_out = watch.expect(2)
    assert isinstance(moved_in, MessageAppend) and (moved_in.mailbox, moved_in.uid) == ("Work", 2)
    assert isinstance(moved_out, MessageExpunge) and (moved_out.mailbox, moved_out.uid) == ("INBOX", 1)

    ok(imap.uid("STORE", "2", "+FLAGS", "(\\Deleted)"))
    one(FlagsSet, lambda e: (e.uid, e.flags) == (2, ("\\Deleted",)))  # MessageTrash folded in
    ok(imap.expunge())
    one(MessageExpunge, lambda e: (e.mailbox, e.uid, e.uidvalidity) == ("INBOX", 2, validity))

    ok(imap.rename("Work", "Archive"))
    one(MailboxRename, lambda e: (e.mailbox, e.old_mailbox) == ("Archive", "Work"))
    ok(imap.subscribe("Archive"))
    one(MailboxSubscribe, lambda e: e.mailbox == "Archive")
    ok(imap.unsubscribe("Archive"))
    one(MailboxUnsubscribe, lambda e: e.mailbox == "Archive")
    # Deleting a mailbox expunges its two messages first: consumers learn each one is gone.
    ok(imap.delete("Archive"))
    *expunged, deleted = watch.expect(3)
    assert [(type(e), e.uid) for e in expunged] == [(MessageExpunge, 1), (MessageExpunge, 2)]  # type: ignore[attr-defined]
    assert isinstance(deleted, MailboxDelete) and deleted.mailbox == "Archive"


def test_read_only_commands_publish_nothing(
    stack: StackInfo, account: Account, sync_redis: redis.Redis, imap: imaplib.IMAP4
) -> None:
    watch = StreamWatch(sync_redis, account.email)
    lmtp_deliver(stack, account.email, sample_message())
    watch.expect(2)
    ok(imap.login(account.email, account.password))
    ok(imap.select("INBOX", readonly=True))
    ok(imap.uid("FETCH", "1", "(FLAGS BODY.PEEK[])"))
    ok(imap.list())
    watch.expect(0)


def test_event_keys_are_unique_per_occurrence(
    stack: StackInfo, account: Account, sync_redis: redis.Redis, imap: imaplib.IMAP4
) -> None:
    """Setting and clearing the same flag twice is four occurrences with four keys."""
    watch = StreamWatch(sync_redis, account.email)
    lmtp_deliver(stack, account.email, sample_message())
    watch.expect(2)
    ok(imap.login(account.email, account.password))
    ok(imap.select("INBOX"))
    for _ in range(2):
        ok(imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)"))
        ok(imap.uid("STORE", "1", "-FLAGS", "(\\Flagged)"))
    events = watch.expect(4)
    assert len({e.key for e in events}) == 4
