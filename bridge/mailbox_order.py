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

from collections.abc import Sequence
from typing import Any

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
