"""Header decoding for reading a message: the text a webmail shows of each header. Pure, no I/O.

Subjects and names with RFC 2047 encoded words, address lists (groups flattened, each mailbox one
string), the Date as ISO 8601 UTC, message ids; raw 8-bit bytes read as UTF-8 (RFC 6532), the rest
as U+FFFD, control characters removed. No function here raises on malformed input: the email
package's failures turn into "" / () / None, and `guard` does the same for any other call into it.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Callable
from datetime import UTC
from email.headerregistry import AddressHeader
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, TypeVar

_T = TypeVar("_T")
_D = TypeVar("_D")

# A header value longer than this is cut before it is parsed: the structured-header parser is slow
# on long hostile input, and no real header needs more.
MAX_HEADER_CHARS = 16 * 1024
MAX_ADDRESSES = 1000

POLICY = email.policy.default

_MSG_ID = re.compile(r"<[^<>\s]{1,998}>")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def raw_header(message: Message, name: str) -> str | None:
    """The first `name` header as it came, unparsed (8-bit bytes as surrogate escapes)."""
    wanted = name.lower()
    try:
        for key, value in message.raw_items():
            if key.lower() == wanted:
                return str(value)[:MAX_HEADER_CHARS]
    except Exception:
        return None
    return None


def parsed_header(name: str, raw: str) -> Any:
    """The policy's structured header object for `raw`, or None when parsing it fails."""
    try:
        return POLICY.header_fetch_parse(name, raw)
    except Exception:
        return None


def header_text(message: Message, name: str) -> str:
    """The value of header `name` with RFC 2047 encoded words decoded, "" if absent."""
    raw = raw_header(message, name)
    if raw is None:
        return ""
    header = parsed_header(name, raw)
    try:
        value = str(header) if header is not None else raw
    except Exception:
        value = raw
    return clean_header(value)


def addresses(message: Message, name: str) -> tuple[str, ...]:
    """The mailboxes of an address header (groups flattened), each as `Name <addr>` or `addr`."""
    raw = raw_header(message, name)
    if raw is None:
        return ()
    header = parsed_header(name, raw)
    pairs: list[tuple[str, str]] = []
    try:
        if isinstance(header, AddressHeader):
            pairs = [(address.display_name, address.addr_spec) for address in header.addresses]
        else:
            raise ValueError(name)
    except Exception:
        # The RFC 5322 parser gave up; the lenient legacy splitter still finds most addresses.
        try:
            pairs = getaddresses([clean_header(raw)])
        except Exception:
            pairs = []
    formatted = (_format_address(display, addr) for display, addr in pairs[:MAX_ADDRESSES])
    return tuple(item for item in formatted if item)


def _format_address(display_name: str, addr_spec: str) -> str:
    name = clean_header(display_name or "")
    addr = clean_header(addr_spec or "")
    if not name:
        return addr
    if not addr:
        return name
    if re.search(r'[()<>\[\]:;@\\,."]', name):
        # Quote as RFC 5322 3.2.4 does, so the string still reads back as one mailbox.
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def header_date(message: Message) -> str | None:
    raw = raw_header(message, "Date")
    if raw is None:
        return None
    try:
        when = parsedate_to_datetime(clean_header(raw))
        if when.tzinfo is None:
            # "-0000" (RFC 5322 3.3): the time is UTC, the sender's zone unknown.
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    except Exception:
        return None


def message_ids(value: str) -> tuple[str, ...]:
    return tuple(_MSG_ID.findall(value))


def first_message_id(value: str) -> str:
    """The first <msg-id> (RFC 5322 3.6.4); a bare id without brackets is kept as written."""
    found = _MSG_ID.search(value)
    if found is not None:
        return found.group(0)
    words = value.split()
    return words[0] if words else ""


def clean_header(value: str) -> str:
    """Readable text: raw 8-bit bytes read as UTF-8 (RFC 6532), junk as U+FFFD, no control chars."""
    if _SURROGATES.search(value) is not None:
        try:
            # The parser keeps undecoded bytes as surrogate escapes; undo that and decode as UTF-8.
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeError:
            value = _SURROGATES.sub("\ufffd", value)
    return _CONTROLS.sub(" ", value).strip()


def guard(call: Callable[[], _T], default: _D) -> _T | _D:
    """`call()`, or `default` if the email package raised on a malformed header."""
    try:
        return call()
    except Exception:
        return default
