"""The folder list a mail client shows: the special-use folders always there and in one order
(Inbox, Drafts, Sent, Archive, Junk, Trash), then the user's own, by name. Pure.

A fresh account has only INBOX until something is first saved, sent, archived or deleted (Dovecot
creates a folder on first use unless its config says `auto = create`); a client that lists only what
exists shows Drafts, Trash and the rest appearing one by one, Junk never. So a special-use folder
that does not exist yet is listed anyway (`exists: false`, no counts): listing it finds nothing, and
the bridge creates it on the first move into it (archive, delete, report spam). One that exists
under another name (RFC 6154 special use, e.g. "Sent Messages" marked \\Sent) takes its place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bridge.errors import InvalidInput

# (name the bridge creates, RFC 6154 special use), in the order shown.
STANDARD: tuple[tuple[str, str], ...] = (
    ("INBOX", ""),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Archive", "\\Archive"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
)

STANDARD_NAMES = frozenset(name for name, _use in STANDARD)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f*%]")


def mailbox_name(value: object) -> str:
    """The name of a mailbox that may exist (a move's target, a folder to mark read): any the server
    may have, up to 1024 characters, on one line."""
    if not isinstance(value, str) or not value or len(value) > 1024 or "\r" in value or "\n" in value:
        raise InvalidInput("mailbox must be a mailbox name")
    return value


def folder_name(value: object, what: str = "name") -> str:
    """A folder name a user may give: 1 to 200 characters, no control characters, no IMAP LIST
    wildcard (* %, RFC 3501 6.3.8), not starting or ending with the hierarchy delimiter "/"."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200 or _BAD_NAME.search(value):
        raise InvalidInput(f"{what} must be a folder name of 1 to 200 characters, without control characters, * or %")
    name = value.strip()
    if name.startswith("/") or name.endswith("/"):
        raise InvalidInput(f"{what} must not start or end with /")
    return name


def own_folder(value: object) -> str:
    """A folder of the user's own, which may be renamed or deleted: not one of the standard ones."""
    name = folder_name(value)
    if name.upper() == "INBOX" or name in STANDARD_NAMES:
        raise InvalidInput(f"{name} is a standard folder: it stays (Inbox, Drafts, Sent, Archive, Junk, Trash)")
    return name


def _standard_place(box: dict[str, Any]) -> int | None:
    for place, (name, use) in enumerate(STANDARD):
        if box["name"] == name or (use and box.get("specialUse") == use):
            return place
    return None


def ordered_mailboxes(listed: Sequence[dict[str, Any]], delimiter: str = "/") -> list[dict[str, Any]]:
    """`listed` (the bridge's mailbox entries, each with name and specialUse), each marked as
    existing, the missing standard folders added, in the order a client shows them."""
    standard: dict[int, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for box in listed:
        place = _standard_place(box)
        if place is not None and place not in standard:
            standard[place] = {**box, "exists": True}
        else:
            others.append({**box, "exists": True})
    for place, (name, use) in enumerate(STANDARD):
        if place not in standard:
            standard[place] = {
                "name": name,
                "delimiter": delimiter,
                "specialUse": use,
                "selectable": True,
                "unread": 0,
                "total": 0,
                "countsVersion": 0,
                "exists": False,
            }
    others.sort(key=lambda b: (b["name"].casefold(), b["name"]))
    return [standard[place] for place in range(len(STANDARD))] + others
