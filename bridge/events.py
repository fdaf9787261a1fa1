"""Mail events: the typed, immutable, versioned records every producer and consumer shares.

Producers: the Dovecot push_notification Lua hook (hooks/mail-bridge-push.lua) writes the mail-store
kinds; the Postfix content filter (bridge.smtp_filter) writes `mta.accepted`. Both go through the one
codec (bridge.codec), whose wire form is documented in docs/events.md. Stream names and trimming live
here too, so a producer and a consumer cannot disagree about them.

Dovecot's event names come from RFC 5423 (Internet Message Store Events) through Dovecot's
push_notification plugin; see docs/events.md for the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from bridge import redis_keys

# Incremented on any change a v1 consumer could misread (a field removed, renamed or retyped).
# Adding an optional field is not such a change: decoders ignore keys they do not know.
SCHEMA_VERSION = 1


class Kind(StrEnum):
    MESSAGE_NEW = "message.new"  # Dovecot MessageNew: delivered by LMTP/LDA
    MESSAGE_APPEND = "message.append"  # MessageAppend: IMAP APPEND, or the target side of COPY/MOVE
    MESSAGE_EXPUNGE = "message.expunge"  # MessageExpunge: EXPUNGE, or the source side of MOVE
    FLAGS_SET = "flags.set"  # FlagsSet (MessageRead / MessageTrash are folded in)
    FLAGS_CLEAR = "flags.clear"  # FlagsClear
    MAILBOX_CREATE = "mailbox.create"
    MAILBOX_DELETE = "mailbox.delete"
    MAILBOX_RENAME = "mailbox.rename"
    MAILBOX_SUBSCRIBE = "mailbox.subscribe"
    MAILBOX_UNSUBSCRIBE = "mailbox.unsubscribe"
    MTA_ACCEPTED = "mta.accepted"  # Postfix accepted a mail (after-queue content filter)


class Direction(StrEnum):
    INBOUND = "inbound"  # arrived on the public SMTP port for a local recipient
    OUTBOUND = "outbound"  # submitted by an authenticated user (submission port)
    LOCAL = "local"  # submitted on the machine itself (sendmail / pickup)


@dataclass(frozen=True, slots=True)
class StreamNames:
    """Redis stream keys; the prefix is configurable so several deployments can share one Redis."""

    prefix: str = "mail"

    @property
    def dovecot(self) -> str:
        return redis_keys.dovecot_stream(self.prefix)

    @property
    def postfix(self) -> str:
        return redis_keys.postfix_stream(self.prefix)

    def all(self) -> tuple[str, str]:
        return (self.dovecot, self.postfix)


# The single field each stream entry carries: the msgpack-encoded event.
ENTRY_FIELD = b"e"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Fields common to every event.

    `key` identifies one occurrence: a consumer that sees the same key twice is seeing a re-delivery
    (a spool drained after a lost reply, Postfix re-sending after a lost 250) and may drop it.
    `ts` is when the producer observed the event, in milliseconds since the Unix epoch.
    """

    KIND: ClassVar[Kind]
    v: int = SCHEMA_VERSION
    key: str
    ts: int

    @property
    def kind(self) -> Kind:
        return self.KIND


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxEvent(Event):
    account: str  # the Dovecot user name
    mailbox: str  # full mailbox name, hierarchy separator as Dovecot reports it


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent(MailboxEvent):
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageAdded(MessageEvent):
    """Headers Dovecot hands the hook; `snippet` is Dovecot's own body preview (about 200 chars)."""

    from_: str = ""  # raw From header value (may still be RFC 2047 encoded)
    from_address: str = ""
    from_name: str = ""  # decoded display name
    to: str = ""  # raw To header value
    to_address: str = ""
    to_name: str = ""
    subject: str = ""  # decoded
    snippet: str = ""
    message_id: str = ""
    date: int | None = None  # Date header as Unix seconds; None when the header is missing
    tz: int = 0  # Date header's offset from UTC, in minutes
    flags: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageNew(MessageAdded):
    KIND = Kind.MESSAGE_NEW


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageAppend(MessageAdded):
    KIND = Kind.MESSAGE_APPEND


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageExpunge(MessageEvent):
    KIND = Kind.MESSAGE_EXPUNGE


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagsChanged(MessageEvent):
    """System flags (`\\Seen`, `\\Flagged`, ...) and keywords that changed; `\\Recent` never appears."""

    flags: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagsSet(FlagsChanged):
    KIND = Kind.FLAGS_SET


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagsClear(FlagsChanged):
    KIND = Kind.FLAGS_CLEAR


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxCreate(MailboxEvent):
    KIND = Kind.MAILBOX_CREATE


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxDelete(MailboxEvent):
    KIND = Kind.MAILBOX_DELETE


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxRename(MailboxEvent):
    KIND = Kind.MAILBOX_RENAME
    old_mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxSubscribe(MailboxEvent):
    KIND = Kind.MAILBOX_SUBSCRIBE


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxUnsubscribe(MailboxEvent):
    KIND = Kind.MAILBOX_UNSUBSCRIBE


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    filename: str
    content_type: str
    size: int  # encoded size in bytes, as it travels in the message


@dataclass(frozen=True, slots=True, kw_only=True)
class MtaAccepted(Event):
    """Postfix accepted a mail and handed it to the content filter."""

    KIND = Kind.MTA_ACCEPTED
    queue_id: str  # Postfix queue id of the message as first queued ("" if it could not be read)
    direction: Direction
    mail_from: str  # envelope sender ("" for the null sender, RFC 5321 4.5.5)
    rcpt_to: tuple[str, ...]
    size: int
    message_id: str = ""
    subject: str = ""
    from_: str = ""
    date: int | None = None
    sasl_user: str = ""  # the authenticated submitter, for outbound mail
    attachments: tuple[Attachment, ...] = ()
    authentication_results: tuple[str, ...] = ()  # RFC 8601 headers, verbatim
    truncated: bool = False  # headers were cut at the parser's bounds
    category: str = "primary"  # primary, social or promotions, from the headers (web client's tabs)


EVENT_TYPES: dict[Kind, type[Event]] = {
    cls.KIND: cls
    for cls in (
        MessageNew,
        MessageAppend,
        MessageExpunge,
        FlagsSet,
        FlagsClear,
        MailboxCreate,
        MailboxDelete,
        MailboxRename,
        MailboxSubscribe,
        MailboxUnsubscribe,
        MtaAccepted,
    )
}
