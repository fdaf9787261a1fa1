"""IMAP's wire syntax, pure (no I/O): mailbox names in modified UTF-7 (RFC 3501 5.1.3), and the
untagged FETCH and LIST responses the gateway (bridge.imap) reads."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime


def quoted(value: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_mailbox(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 5.1.3), quoted for a command."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return quoted("".join(out))


@dataclass(frozen=True, slots=True)
class FetchedHeaders:
    uid: int
    flags: tuple[str, ...]
    size: int
    header: bytes
    arrived: int | None = None  # INTERNALDATE (RFC 3501 2.3.3) as Unix seconds; None if unreadable


def internal_date(text: bytes) -> int | None:
    """Unix seconds of an INTERNALDATE date-time (RFC 3501 9: "17-Jul-1996 02:44:25 -0700", the day
    maybe space-padded); None for anything else."""
    try:
        when = datetime.strptime(text.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except (UnicodeDecodeError, ValueError):
        return None
    return int(when.timestamp())


# "* 3 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 512 BODY[HEADER.FIELDS (...)] {123}" in any item order.
FETCH_ITEM = re.compile(
    rb"FETCH \((?=.*\bUID (?P<uid>\d+))(?=.*\bFLAGS \((?P<flags>[^)]*)\))(?=(?:.*\bRFC822\.SIZE (?P<size>\d+))?)"
    rb'(?=(?:.*\bINTERNALDATE "(?P<arrived>[^"]*)")?)'
)


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    name: str
    delimiter: str
    special_use: str  # "\\Sent", "\\Trash", ... or ""
    selectable: bool


_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?P<delim>(?:\\.|[^"])*)"|NIL) (?P<name>.+)$')
_SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


def parse_list_line(line: bytes) -> MailboxInfo | None:
    """One untagged LIST response (RFC 3501 7.2.2), without the leading '* LIST '."""
    line = line.strip()
    if line.startswith(b"LIST "):
        line = line[5:]
    match = _LIST_LINE.match(line)
    if match is None:
        return None
    flags = match.group("flags").decode("ascii", "replace").split()
    name = match.group("name").decode("utf-8", "replace")
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    special = next((f for f in flags if f in _SPECIAL_USE), "")
    return MailboxInfo(
        name=decode_mailbox(name),
        delimiter=(match.group("delim") or b"").decode(),
        special_use=special,
        selectable="\\Noselect" not in flags and "\\NonExistent" not in flags,
    )


def decode_mailbox(name: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3) to text; a malformed name is returned as it is."""
    out: list[str] = []
    i = 0
    while i < len(name):
        if name[i] != "&":
            out.append(name[i])
            i += 1
            continue
        end = name.find("-", i)
        if end == -1:
            return name
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            try:
                raw = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4))
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                return name
        i = end + 1
    return "".join(out)
