"""Browser events: what a Socket.IO client receives for each mail event. Pure, no I/O.

Names and fields follow the web client's contract (README.md, "Socket.IO events"). The relay adds
`eventId` (the entry id in the account's resume log) to every payload before emitting it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from bridge.errors import InvalidInput
from bridge.events import (
    Direction,
    Event,
    FlagsClear,
    FlagsSet,
    MailboxCreate,
    MailboxDelete,
    MailboxEvent,
    MailboxRename,
    MailboxSubscribe,
    MailboxUnsubscribe,
    MessageAdded,
    MessageAppend,
    MessageEvent,
    MessageExpunge,
    MtaAccepted,
)
from bridge.mail_headers import believable_date

SEEN = "\\Seen"


@dataclass(frozen=True, slots=True)
class EmailRef:
    account: str
    mailbox: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True)
class BrowserEvent:
    name: str
    account: str  # whose room (and resume log) it goes to
    payload: dict[str, Any]


def email_id(ref: EmailRef) -> str:
    """An opaque, URL-safe id naming one message of one account."""
    packed: bytes = msgpack.packb([ref.account, ref.mailbox, ref.uidvalidity, ref.uid])
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode()


def parse_email_id(value: object) -> EmailRef:
    if not isinstance(value, str) or not 4 <= len(value) <= 2048:
        raise InvalidInput("invalid email id")
    try:
        data = msgpack.unpackb(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        account, mailbox, uidvalidity, uid = data
        if not (isinstance(account, str) and isinstance(mailbox, str)):
            raise TypeError
        if not (isinstance(uidvalidity, int) and isinstance(uid, int)):
            raise TypeError
    except (ValueError, TypeError, msgpack.UnpackException):
        raise InvalidInput("invalid email id") from None
    return EmailRef(account, mailbox, uidvalidity, uid)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The seconds a datetime can hold (years 1 to 9999), as integers: a larger int is not a float.
_EARLIEST_S = -62_135_596_800
_LATEST_S = 253_402_300_799


def iso_time(seconds: object, *, milliseconds: bool = True) -> str:
    """Unix seconds as ISO 8601 in UTC ("...Z"). Total: a time beyond years 1 to 9999 is shown as
    the nearest of them, and anything not a finite number as the epoch; one mail's odd date must
    not fail a whole listing or drop its event."""
    value = 0.0
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        value = float(min(max(seconds, _EARLIEST_S), _LATEST_S))  # clamped first: exact for any int
    elif isinstance(seconds, float) and math.isfinite(seconds):
        value = min(max(seconds, _EARLIEST_S), _LATEST_S)
    # Arithmetic, not fromtimestamp: that one depends on the platform's C library for these bounds.
    when = _EPOCH + timedelta(seconds=value)
    return when.isoformat(timespec="milliseconds" if milliseconds else "seconds").replace("+00:00", "Z")


def _seconds(ts_ms: int) -> float:
    # A float where one holds the number; a producer's absurd clock (beyond 2**1000) stays an int.
    return ts_ms / 1000 if abs(ts_ms) < 1 << 1000 else ts_ms // 1000


def _iso(ts_ms: int) -> str:
    return iso_time(_seconds(ts_ms))


def shown_date(event: MessageAdded) -> float:
    """When the mail is shown as dated, in Unix seconds: its Date if believable
    (mail_headers.believable_date), else when the event was observed (its arrival)."""
    date = believable_date(event.date, event.ts // 1000)
    return _seconds(event.ts) if date is None else date


def _ref(event: MessageEvent) -> str:
    return email_id(EmailRef(event.account, event.mailbox, event.uidvalidity, event.uid))


def display_from(event: MessageAdded) -> str:
    if event.from_name and event.from_address:
        return f"{event.from_name} <{event.from_address}>"
    return event.from_address or event.from_


@dataclass(frozen=True, slots=True)
class MtaFacts:
    """What the content filter learnt of a mail that Dovecot's event does not say."""

    has_attachments: bool = False
    size: int = 0
    category: str = "primary"


def new_email(event: MessageAdded, facts: MtaFacts | None = None) -> dict[str, Any]:
    facts = facts or MtaFacts()
    return {
        "id": _ref(event),
        "account": event.account,
        "mailbox": event.mailbox,
        "uid": event.uid,
        "from": display_from(event),
        "fromAddress": event.from_address,
        "fromName": event.from_name,
        "to": event.to_address or event.to,
        "subject": event.subject,
        "preview": event.snippet,
        "messageId": event.message_id,
        "timestamp": iso_time(shown_date(event)),
        "arrived": iso_time(event.ts // 1000, milliseconds=False),  # the listing's order (store_reads.NEWEST)
        "flags": list(event.flags) + list(event.keywords),
        "unread": SEEN not in event.flags,
        "source": "appended" if isinstance(event, MessageAppend) else "delivered",
        "hasAttachments": facts.has_attachments,
        "size": facts.size,
        "category": facts.category,
    }


def _flag_events(event: FlagsSet | FlagsClear) -> list[BrowserEvent]:
    changed = list(event.flags) + list(event.keywords)
    base = {"emailId": _ref(event), "account": event.account, "mailbox": event.mailbox, "uid": event.uid}
    out: list[BrowserEvent] = []
    if isinstance(event, FlagsSet) and SEEN in event.flags:
        # Read receipts across devices ride on \Seen, whoever set it (this bridge, another
        # device, an IMAP client).
        out.append(BrowserEvent("email_read", event.account, {**base, "readAt": _iso(event.ts)}))
    added = changed if isinstance(event, FlagsSet) else []
    removed = changed if isinstance(event, FlagsClear) else []
    payload = {**base, "added": added, "removed": removed}
    if SEEN in removed:
        payload["unread"] = True
    elif SEEN in added:
        payload["unread"] = False
    out.append(BrowserEvent("email_flags", event.account, payload))
    return out


_MAILBOX_ACTIONS: dict[type[MailboxEvent], str] = {
    MailboxCreate: "created",
    MailboxDelete: "deleted",
    MailboxRename: "renamed",
    MailboxSubscribe: "subscribed",
    MailboxUnsubscribe: "unsubscribed",
}


def to_browser(event: Event, facts: MtaFacts | None = None) -> list[BrowserEvent]:
    """The browser events one mail event becomes (often one, sometimes none or two)."""
    if isinstance(event, MessageAdded):
        return [BrowserEvent("new_email", event.account, new_email(event, facts))]
    if isinstance(event, MessageExpunge):
        payload = {"emailId": _ref(event), "account": event.account, "mailbox": event.mailbox, "uid": event.uid}
        return [BrowserEvent("email_deleted", event.account, payload)]
    if isinstance(event, FlagsSet | FlagsClear):
        return _flag_events(event)
    if isinstance(event, MailboxEvent):
        payload = {"account": event.account, "action": _MAILBOX_ACTIONS[type(event)], "mailbox": event.mailbox}
        if isinstance(event, MailboxRename):
            payload["oldMailbox"] = event.old_mailbox
        return [BrowserEvent("mailbox_updated", event.account, payload)]
    if isinstance(event, MtaAccepted) and event.direction is Direction.OUTBOUND and event.sasl_user:
        payload = {
            "account": event.sasl_user,
            "success": True,
            "messageId": event.message_id,
            "subject": event.subject,
            "to": list(event.rcpt_to),
            "timestamp": _iso(event.ts),
        }
        return [BrowserEvent("email_sent", event.sasl_user, payload)]
    return []
