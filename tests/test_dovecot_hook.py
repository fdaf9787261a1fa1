"""The Dovecot Lua hook, driven by real LMTP deliveries and real IMAP commands.

Each operation must produce exactly the events listed, once each, with the right fields.
"""

from __future__ import annotations

import contextlib
import imaplib
import secrets
import shutil
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
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
    MailboxRename,
    MailboxSubscribe,
    MailboxUnsubscribe,
    MessageAppend,
    MessageExpunge,
    MessageNew,
)
from bridge.stack.launcher import Stack, StackInfo
from tests.common import Account
from tests.mailtools import StreamWatch, lmtp_deliver, sample_message

pytestmark = pytest.mark.e2e


@pytest.fixture
def sync_redis(stack: StackInfo) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


@pytest.fixture
def imap(stack: StackInfo, account: Account) -> Iterator[imaplib.IMAP4]:
    connection = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
    yield connection
    with contextlib.suppress(imaplib.IMAP4.error, OSError):
        connection.logout()


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


def test_folded_header_values_arrive_unfolded(stack: StackInfo, account: Account, sync_redis: redis.Redis) -> None:
    """A Message-ID too long for one line is folded onto the next (RFC 5322 2.2.3), as Python's
    email package does: the event carries it unfolded, as the content filter reports it."""
    watch = StreamWatch(sync_redis, account.email)
    long_id = f"<{'x' * 70}.folded@outside.test>"
    raw = sample_message().as_bytes()
    raw = raw.replace(b"Message-ID: <hook-test-1@outside.test>", f"Message-ID:\n {long_id}".encode())
    raw = raw.replace(b"To: ", b"To:\n\t", 1)
    assert f"Message-ID:\n {long_id}".encode() in raw and b"To:\n\tAlice" in raw
    with smtplib.LMTP(stack.lmtp["host"], stack.lmtp["port"], timeout=10) as lmtp:
        lmtp.sendmail("juergen@outside.test", [account.email], raw)  # smtplib sends CRLF line ends
    _create, new = watch.expect(2)
    assert isinstance(new, MessageNew)
    assert new.message_id == long_id
    assert new.to == "Alice <alice@example.test>"


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


def test_dedupe_script_drops_a_second_copy_of_one_reinjection(
    stack: StackInfo, account: Account, sync_redis: redis.Redis
) -> None:
    """What Postfix re-sends after a lost filter reply carries the same X-Mail-Bridge-Id: kept once."""
    watch = StreamWatch(sync_redis, account.email)
    stamped = sample_message("stamped")
    stamped["X-Mail-Bridge-Id"] = "postfix:TESTQUEUEID:abcdef123456"
    lmtp_deliver(stack, account.email, stamped)
    lmtp_deliver(stack, account.email, stamped)
    # The same Message-ID without the stamp is a different delivery (say, a resend): both kept.
    plain = sample_message("plain")
    lmtp_deliver(stack, account.email, plain)
    lmtp_deliver(stack, account.email, plain)
    events = watch.expect(4)  # mailbox.create + three message.new
    assert [e.subject for e in events if isinstance(e, MessageNew)] == ["stamped", "plain", "plain"]


def test_raw_header_values_become_utf8_as_python_decodes_them(
    stack: StackInfo, account: Account, sync_redis: redis.Redis
) -> None:
    """From, To and Message-ID reach the hook as raw bytes. What is not UTF-8 in them (encoded
    surrogates U+D800 and U+DFFF, a code point past U+10FFFF, overlong forms, a sequence cut short,
    stray bytes) becomes U+FFFD, one per maximal ill-formed subpart, exactly as Python's
    decode(errors="replace") does in the filter and the bridge; valid characters stay. The hook
    checks the bytes itself: Lua 5.3's utf8.len takes encoded surrogates for characters."""
    watch = StreamWatch(sync_redis, account.email)
    bad = (
        b"a\xed\xa0\x80b\xed\xbf\xbfc\xf4\x90\x80\x80d\xc0\xafe\xe0\x80\xaff\xe2\x82g\x80h\xff"
        b"i\xf0\x9f\x98\x80j\xe2\x82\xack\xed\x9f\xbfl\xf4\x8f\xbf\xbf"
    )
    values = {"From": bad + b" <x@outside.test>", "To": bad + b" <y@example.test>", "Message-ID": b"<" + bad + b"@x>"}
    raw = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in values.items())
    raw += b"Subject: raw\r\n\r\nbody\r\n"
    with smtplib.LMTP(stack.lmtp["host"], stack.lmtp["port"], timeout=10) as lmtp:
        lmtp.sendmail("x@outside.test", [account.email], raw)
    _create, new = watch.expect(2)
    assert isinstance(new, MessageNew)
    expected = {name: value.decode("utf-8", "replace") for name, value in values.items()}
    assert (new.from_, new.to, new.message_id) == (expected["From"], expected["To"], expected["Message-ID"])
    assert "\U0001f600" in new.from_ and "\u20ac" in new.from_ and "\ud7ff" in new.from_ and "\U0010ffff" in new.from_
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in new.from_ + new.to + new.message_id)


def test_events_go_to_redis_when_the_spool_is_pending_but_cannot_be_written(
    stack: StackInfo, stack_launcher: Stack, sync_redis: redis.Redis
) -> None:
    """Events wait in the spool (PENDING), but the mail user can no longer write there (a wrong
    owner, a full disk): the next events go to Redis, ahead of the waiting ones, rather than being
    lost while Redis answers."""
    spool = Path(stack.state_dir) / f"readonly-spool-{uuid.uuid4().hex[:8]}"
    spool.mkdir(mode=0o755)  # root's: the mail user reads PENDING, and can create nothing
    (spool / "PENDING").touch()
    email, password = f"ro-{uuid.uuid4().hex[:10]}@example.test", secrets.token_urlsafe(12)
    stack_launcher.add_users({email: password}, userdb_fields={"mail_bridge_spool_dir": str(spool)})
    lost_before = (Path(stack.log_dir) / "dovecot.log").read_text().count("mail-bridge: LOST")
    try:
        watch = StreamWatch(sync_redis, email)
        lmtp_deliver(stack, email, sample_message("spool unwritable"))
        _create, new = watch.expect(2)
        assert isinstance(new, MessageNew) and new.subject == "spool unwritable"
        assert (Path(stack.log_dir) / "dovecot.log").read_text().count("mail-bridge: LOST") == lost_before
    finally:
        shutil.rmtree(spool, ignore_errors=True)
