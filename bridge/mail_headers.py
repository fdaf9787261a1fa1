"""Bounded parsing of a message's header block for `mta.accepted` events. Pure, no I/O.

Only the header block is read (RFC 5322 2.1: headers end at the first empty line), cut at
MAX_HEADER_BYTES and MAX_HEADER_LINES, so hostile input (megabyte headers, 100k folded lines)
costs bounded time. The body is never parsed here and never copied.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr, parsedate_to_datetime

from bridge.events import Direction

MAX_HEADER_BYTES = 256 << 10
MAX_HEADER_LINES = 4000
MAX_VALUE_CHARS = 2048
# Authentication-Results headers kept, topmost first (RFC 8601 5: each MTA prepends its own, so the
# top ones are from our side). The summary travels in one event that consumers refuse above 1 MiB
# (codec.MAX_EVENT_BYTES), and 8-bit junk triples in size as U+FFFD: 120 headers of 2 KB junk made
# a 740 KB event; real mail carries one to three.
MAX_AUTH_RESULTS = 32
# How far after its arrival a mail's Date may be and still be believed: senders' clocks drift, but a
# Date from the future sorts a mail above every newer one until that time comes (year 10000 for
# "Fri, 31 Dec 9999 23:59:59 -1200"; Dovecot reads that and 1900 as 2106 and 2036).
DATE_SKEW_S = 3600

# Postfix's own Received: line (first one = the smtpd or pickup that queued it), e.g.
#   by mail.example.test (Postfix) with ESMTPSA id 4Xg2Lq0dZ7z9t; ...
#   by mail.example.test (Postfix, from userid 0) id 4Xg2...; ...
_POSTFIX_RECEIVED = re.compile(
    r"\(Postfix(?P<local>, from userid \d+)?\)\s+(?:with\s+(?P<proto>\S+)\s+)?id\s+(?P<id>[0-9A-Za-z]+)"
)
_AUTH_SENDER = re.compile(r"\(Authenticated sender:\s*(?P<user>[^)\s]+)\)")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


# Senders whose mail goes to the "social" tab; anything sent to a list (RFC 2369 List-Unsubscribe,
# Precedence: bulk/list) goes to "promotions"; the rest is "primary".
SOCIAL_DOMAINS = frozenset(
    {
        "facebookmail.com",
        "linkedin.com",
        "twitter.com",
        "x.com",
        "instagram.com",
        "mastodon.social",
        "pinterest.com",
        "reddit.com",
        "redditmail.com",
        "tiktok.com",
        "youtube.com",
        "discord.com",
        "slack.com",
        "meetup.com",
        "quora.com",
        "tumblr.com",
        "snapchat.com",
        "github.com",
    }
)


def categorize(from_address: str, list_unsubscribe: bool, precedence: str) -> str:
    domain = from_address.rsplit("@", 1)[-1].lower() if "@" in from_address else ""
    if any(domain == d or domain.endswith("." + d) for d in SOCIAL_DOMAINS):
        return "social"
    if list_unsubscribe or precedence.strip().lower() in {"bulk", "list", "junk"}:
        return "promotions"
    return "primary"


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    queue_id: str
    direction: Direction
    sasl_user: str
    message_id: str
    subject: str
    from_: str
    date: int | None
    authentication_results: tuple[str, ...]
    truncated: bool
    fingerprint: str  # stable hash of the header block, for keys when no queue id is known
    category: str = "primary"


@dataclass(frozen=True, slots=True)
class ParsedHeaders:
    headers: Message
    body_start: int  # offset of the body in the message (== len(message) when there is none)
    truncated: bool
    fingerprint: str


def parse_headers(message: bytes) -> ParsedHeaders:
    """The header block, parsed within the bounds; the body is not looked at."""
    match = _BLANK_LINE.search(message, 0, MAX_HEADER_BYTES + 4)
    if match is not None:
        block, truncated, body_start = message[: match.start()], False, match.end()
    else:
        block = message[:MAX_HEADER_BYTES]
        truncated = len(message) > MAX_HEADER_BYTES
        body_start = len(message)
    lines = block.split(b"\n", MAX_HEADER_LINES)
    if len(lines) > MAX_HEADER_LINES:
        block, truncated = b"\n".join(lines[:MAX_HEADER_LINES]), True
    headers = BytesHeaderParser(policy=compat32).parsebytes(block + b"\n\n")
    return ParsedHeaders(headers, body_start, truncated, hashlib.sha256(block).hexdigest()[:32])


def decode_text(raw: str | None) -> str:
    """RFC 2047 decoding that never raises; junk comes out as replacement characters."""
    if not raw:
        return ""
    raw = raw[: MAX_VALUE_CHARS * 4]
    try:
        text = str(make_header(decode_header(raw)))
    # MessageError: HeaderParseError, and CharsetError for an 8-bit charset name in an encoded
    # word (RFC 2047 2: a charset is an ASCII token; "=?\xff?Q?x?=" raised it through make_header).
    except (ValueError, LookupError, UnicodeError, AssertionError, MessageError):
        text = raw
    text = " ".join(text.split())
    return text.encode("utf-8", "replace").decode("utf-8")[:MAX_VALUE_CHARS]


def believable_date(date: int | None, arrived: float) -> int | None:
    """A Date header's Unix seconds if a mail that arrived at `arrived` can have been written then:
    not before 1970, not more than DATE_SKEW_S after its arrival. Otherwise None, as for a mail
    without a Date, and whoever shows the mail takes its arrival time instead. Every ingest path
    (the filter's event, Dovecot's events as the bridge reads them, the backfill) applies it, so a
    mail is shown and sorted the same whichever indexed it."""
    if date is None or not 0 <= date <= arrived + DATE_SKEW_S:
        return None
    return date


def _raw(value: object) -> str:
    # compat32 hands back str for decodable headers and Header objects for 8-bit junk.
    text = str(value) if value is not None else ""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def summarize(message: bytes | ParsedHeaders, *, now: float | None = None) -> HeaderSummary:
    """The event's view of the header block; `now` is when the mail arrived (default: the clock),
    the bound of a believable Date."""
    parsed = parse_headers(message) if isinstance(message, bytes) else message
    headers = parsed.headers
    queue_id, direction, sasl_user = "", Direction.INBOUND, ""
    for received in headers.get_all("Received") or []:
        text = _raw(received)
        match = _POSTFIX_RECEIVED.search(text)
        if match is None:
            continue
        queue_id = match.group("id")
        auth = _AUTH_SENDER.search(text)
        if auth is not None:
            direction, sasl_user = Direction.OUTBOUND, auth.group("user")
        elif match.group("local"):
            direction = Direction.LOCAL
        break  # the topmost Postfix line is the one that queued this message
    date: int | None = None
    raw_date = headers.get("Date")
    if raw_date:
        try:
            date = int(parsedate_to_datetime(_raw(raw_date)).timestamp())
        except (ValueError, TypeError, IndexError, OverflowError):
            date = None
    date = believable_date(date, time.time() if now is None else now)
    auth_results = headers.get_all("Authentication-Results") or []
    raw_from = _raw(headers.get("From"))
    name, address = parseaddr(raw_from)
    return HeaderSummary(
        queue_id=queue_id,
        direction=direction,
        sasl_user=sasl_user,
        message_id=_raw(headers.get("Message-ID")).strip()[:998],
        subject=decode_text(_raw(headers.get("Subject"))),
        from_=(f"{decode_text(name)} <{address}>" if name else address or decode_text(raw_from))[:MAX_VALUE_CHARS],
        date=date,
        authentication_results=tuple(
            " ".join(_raw(v).split())[:MAX_VALUE_CHARS] for v in auth_results[:MAX_AUTH_RESULTS]
        ),
        truncated=parsed.truncated or len(auth_results) > MAX_AUTH_RESULTS,
        fingerprint=parsed.fingerprint,
        category=categorize(address, headers.get("List-Unsubscribe") is not None, _raw(headers.get("Precedence"))),
    )
