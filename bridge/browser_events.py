"""Browser events: what a Socket.IO client receives for each mail event. Pure, no I/O.

Names and fields follow the web client's contract (README.md, "Socket.IO events"). Every browser
event carries `eventId`, the Redis stream entry it came from, in the order the stream holds them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from bridge.errors import InvalidInput
from bridge.events import Event, MessageAdded, MessageNew


@dataclass(frozen=True, slots=True)
class EmailRef:
    account: str
    mailbox: str
    uidvalidity: int
    uid: int


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


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def display_from(event: MessageAdded) -> str:
    if event.from_name and event.from_address:
        return f"{event.from_name} <{event.from_address}>"
    return event.from_address or event.from_


def new_email(event: MessageAdded, entry_id: str) -> dict[str, Any]:
    return {
        "id": email_id(EmailRef(event.account, event.mailbox, event.uidvalidity, event.uid)),
        "eventId": entry_id,
        "account": event.account,
        "mailbox": event.mailbox,
        "uid": event.uid,
        "from": display_from(event),
        "fromAddress": event.from_address,
        "fromName": event.from_name,
        "to": event.to_address or event.to,
        "subject": event.subject,
        "preview": event.snippet,
        "timestamp": _iso(event.date if event.date is not None else event.ts / 1000),
        "flags": list(event.flags) + list(event.keywords),
        "unread": "\\Seen" not in event.flags,
    }


def to_browser(event: Event, entry_id: str) -> tuple[str, str, dict[str, Any]] | None:
    """(socket event name, account, payload) for events browsers see; None for the others."""
    if isinstance(event, MessageNew):
        return "new_email", event.account, new_email(event, entry_id)
    return None
