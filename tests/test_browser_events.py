"""bridge.browser_events: what a Socket.IO client is sent for each mail event (pure, no I/O)."""

from __future__ import annotations

import base64
from typing import Any

import msgpack
import pytest

from bridge.browser_events import (
    EmailRef,
    MtaFacts,
    display_from,
    email_id,
    iso_time,
    parse_email_id,
    shown_date,
    to_browser,
)
from bridge.errors import InvalidInput
from bridge.events import (
    Attachment,
    Direction,
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
    MtaAccepted,
)

TS = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
ARRIVED = "2023-11-14T22:13:20.123Z"
SEEN = "\\Seen"


def ref(mailbox: str = "INBOX", uid: int = 7) -> dict[str, Any]:
    """The message fields of alice's message `uid` in `mailbox`."""
    return {"account": "alice@example.test", "mailbox": mailbox, "uidvalidity": 1_234_567, "uid": uid}


@pytest.mark.parametrize(
    "email",
    [
        EmailRef("alice@example.test", "INBOX", 1, 1),
        EmailRef("bob@example.test", "Archive/2024/Größe ✉", 4_294_967_295, 4_294_967_295),
        EmailRef("x@y", "", 0, 0),
    ],
)
def test_an_email_id_names_its_message_and_reads_back(email: EmailRef) -> None:
    value = email_id(email)
    assert parse_email_id(value) == email
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")  # URL-safe, unpadded


def test_email_ids_of_different_messages_differ() -> None:
    ids = {
        email_id(EmailRef(account, mailbox, uidvalidity, uid))
        for account in ("alice@example.test", "bob@example.test")
        for mailbox in ("INBOX", "Sent")
        for uidvalidity in (1, 2)
        for uid in (1, 2)
    }
    assert len(ids) == 16


def test_an_email_id_longer_than_the_bound_is_refused_even_if_well_formed() -> None:
    long = email_id(EmailRef("alice@example.test", "x" * 1600, 1, 1))
    assert len(long) > 2048
    with pytest.raises(InvalidInput, match="invalid email id"):
        parse_email_id(long)


def _packed(value: object) -> str:
    return base64.urlsafe_b64encode(msgpack.packb(value)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        b"AAAA",
        "",
        "abc",  # under four characters
        "A" * 2049,  # over the bound
        "!!!!not base64",
        _packed(["alice@example.test", "INBOX", 1]),  # three items
        _packed(["alice@example.test", "INBOX", 1, 2, 3]),  # five
        _packed([1, "INBOX", 1, 1]),  # account not text
        _packed(["alice@example.test", b"INBOX", 1, 1]),  # mailbox not text
        _packed(["alice@example.test", "INBOX", "1", 1]),  # uidvalidity not a number
        _packed(["alice@example.test", "INBOX", 1, 1.5]),  # uid not an integer
        _packed({"account": "alice@example.test"}),
    ],
)
def test_anything_but_an_email_id_is_invalid_input(value: object) -> None:
    with pytest.raises(InvalidInput, match="invalid email id"):
        parse_email_id(value)


@pytest.mark.parametrize(
    ("seconds", "milliseconds", "expected"),
    [
        (0, True, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000, False, "2023-11-14T22:13:20Z"),
        (1_700_000_000.5, True, "2023-11-14T22:13:20.500Z"),
        (-1, True, "1969-12-31T23:59:59.000Z"),
        (10**30, False, "9999-12-31T23:59:59Z"),  # beyond year 9999: the last second it can show
        (-(10**30), False, "0001-01-01T00:00:00Z"),
        (1e30, False, "9999-12-31T23:59:59Z"),
        (-1e30, False, "0001-01-01T00:00:00Z"),
        (float("inf"), True, "1970-01-01T00:00:00.000Z"),  # not a finite number: the epoch
        (float("nan"), True, "1970-01-01T00:00:00.000Z"),
        (True, True, "1970-01-01T00:00:00.000Z"),  # a bool is not a time
        ("1700000000", True, "1970-01-01T00:00:00.000Z"),
        (None, True, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_iso_time_is_utc_and_total(seconds: object, milliseconds: bool, expected: str) -> None:
    assert iso_time(seconds, milliseconds=milliseconds) == expected


def test_the_sender_is_shown_by_name_and_address_or_what_there_is() -> None:
    both = MessageNew(key="k", ts=TS, **ref(), from_="raw", from_address="a@x.test", from_name="Ann")
    address = MessageNew(key="k", ts=TS, **ref(), from_="raw", from_address="a@x.test")
    raw = MessageNew(key="k", ts=TS, **ref(), from_="=?utf-8?q?raw?=")
    assert [display_from(both), display_from(address), display_from(raw)] == [
        "Ann <a@x.test>",
        "a@x.test",
        "=?utf-8?q?raw?=",
    ]


def test_a_mail_is_dated_by_its_date_header_only_when_believable() -> None:
    arrival = TS / 1000
    believable = MessageNew(key="k", ts=TS, **ref(), date=1_600_000_000)
    future = MessageNew(key="k", ts=TS, **ref(), date=int(arrival) + 2 * 3600)
    missing = MessageNew(key="k", ts=TS, **ref())
    assert shown_date(believable) == 1_600_000_000
    assert shown_date(future) == arrival
    assert shown_date(missing) == arrival


def test_a_delivered_mail_becomes_one_new_email_for_its_account() -> None:
    event = MessageNew(
        key="k",
        ts=TS,
        **ref(),
        from_="Ann <ann@outside.test>",
        from_address="ann@outside.test",
        from_name="Ann",
        to="alice@example.test",
        to_address="alice@example.test",
        subject="Hello",
        snippet="Hi Alice",
        message_id="<m1@outside.test>",
        date=1_699_999_000,
        flags=("\\Flagged",),
        keywords=("$label1",),
    )
    facts = MtaFacts(has_attachments=True, size=2048, category="social")
    (out,) = to_browser(event, facts)
    assert (out.name, out.account) == ("new_email", "alice@example.test")
    payload = out.payload
    assert parse_email_id(payload["id"]) == EmailRef("alice@example.test", "INBOX", 1_234_567, 7)
    assert payload["from"] == "Ann <ann@outside.test>"
    assert (payload["fromAddress"], payload["fromName"]) == ("ann@outside.test", "Ann")
    assert (payload["to"], payload["subject"], payload["preview"]) == ("alice@example.test", "Hello", "Hi Alice")
    assert payload["messageId"] == "<m1@outside.test>"
    assert payload["timestamp"] == iso_time(1_699_999_000)
    assert payload["flags"] == ["\\Flagged", "$label1"]
    assert payload["unread"] is True
    assert payload["source"] == "delivered"
    assert (payload["hasAttachments"], payload["size"], payload["category"]) == (True, 2048, "social")


def test_an_appended_read_mail_without_facts_says_so() -> None:
    event = MessageAppend(key="k", ts=TS, **ref("Sent"), to="bob@example.test", flags=(SEEN,))
    (out,) = to_browser(event)
    assert out.payload["source"] == "appended"
    assert out.payload["unread"] is False
    assert out.payload["to"] == "bob@example.test"  # the raw To when no address was parsed
    assert out.payload["timestamp"] == ARRIVED  # no Date: the arrival
    assert (out.payload["hasAttachments"], out.payload["size"], out.payload["category"]) == (False, 0, "primary")


def test_seen_set_is_a_read_receipt_and_a_flag_change() -> None:
    event = FlagsSet(key="k", ts=TS, **ref(), flags=(SEEN, "\\Flagged"), keywords=("$work",))
    read, flags = to_browser(event)
    expected_id = email_id(EmailRef("alice@example.test", "INBOX", 1_234_567, 7))
    assert (read.name, read.account) == ("email_read", "alice@example.test")
    assert read.payload == {
        "emailId": expected_id,
        "account": "alice@example.test",
        "mailbox": "INBOX",
        "uid": 7,
        "readAt": ARRIVED,
    }
    assert flags.name == "email_flags"
    assert flags.payload["added"] == [SEEN, "\\Flagged", "$work"]
    assert flags.payload["removed"] == []
    assert flags.payload["unread"] is False


def test_seen_cleared_marks_the_mail_unread_without_a_receipt() -> None:
    event = FlagsClear(key="k", ts=TS, **ref(), flags=(SEEN,))
    (out,) = to_browser(event)
    assert out.name == "email_flags"
    assert (out.payload["added"], out.payload["removed"], out.payload["unread"]) == ([], [SEEN], True)


def test_a_change_that_leaves_seen_alone_says_nothing_of_unread() -> None:
    for event in (
        FlagsSet(key="k", ts=TS, **ref(), keywords=("$label2",)),
        FlagsClear(key="k", ts=TS, **ref(), flags=("\\Flagged",)),
    ):
        (out,) = to_browser(event)
        assert out.name == "email_flags"
        assert "unread" not in out.payload


def test_an_expunge_is_email_deleted() -> None:
    (out,) = to_browser(MessageExpunge(key="k", ts=TS, **ref("Trash", 9)))
    assert (out.name, out.account) == ("email_deleted", "alice@example.test")
    assert out.payload == {
        "emailId": email_id(EmailRef("alice@example.test", "Trash", 1_234_567, 9)),
        "account": "alice@example.test",
        "mailbox": "Trash",
        "uid": 9,
    }


@pytest.mark.parametrize(
    ("cls", "action"),
    [
        (MailboxCreate, "created"),
        (MailboxDelete, "deleted"),
        (MailboxSubscribe, "subscribed"),
        (MailboxUnsubscribe, "unsubscribed"),
    ],
)
def test_mailbox_changes_are_mailbox_updated(cls: type[MailboxCreate], action: str) -> None:
    (out,) = to_browser(cls(key="k", ts=TS, account="alice@example.test", mailbox="Projects"))
    assert (out.name, out.account) == ("mailbox_updated", "alice@example.test")
    assert out.payload == {"account": "alice@example.test", "action": action, "mailbox": "Projects"}


def test_a_rename_names_the_old_mailbox_too() -> None:
    event = MailboxRename(key="k", ts=TS, account="alice@example.test", mailbox="New", old_mailbox="Old")
    (out,) = to_browser(event)
    assert out.payload == {"account": "alice@example.test", "action": "renamed", "mailbox": "New", "oldMailbox": "Old"}


def _accepted(direction: Direction, sasl_user: str) -> MtaAccepted:
    return MtaAccepted(
        key="k",
        ts=TS,
        queue_id="Q1",
        direction=direction,
        mail_from="alice@example.test",
        rcpt_to=("bob@example.test", "carol@outside.test"),
        size=100,
        message_id="<m2@example.test>",
        subject="Report",
        sasl_user=sasl_user,
        attachments=(Attachment(filename="a.pdf", content_type="application/pdf", size=10),),
    )


def test_a_submitted_mail_is_email_sent_to_its_submitter() -> None:
    (out,) = to_browser(_accepted(Direction.OUTBOUND, "alice@example.test"))
    assert (out.name, out.account) == ("email_sent", "alice@example.test")
    assert out.payload == {
        "account": "alice@example.test",
        "success": True,
        "messageId": "<m2@example.test>",
        "subject": "Report",
        "to": ["bob@example.test", "carol@outside.test"],
        "timestamp": ARRIVED,
    }


@pytest.mark.parametrize(
    ("direction", "sasl_user"),
    [
        (Direction.INBOUND, ""),
        (Direction.INBOUND, "alice@example.test"),
        (Direction.OUTBOUND, ""),
        (Direction.LOCAL, ""),
    ],
)
def test_other_accepted_mail_is_no_browser_event(direction: Direction, sasl_user: str) -> None:
    assert to_browser(_accepted(direction, sasl_user)) == []
