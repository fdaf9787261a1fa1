"""bridge.mailbox_order: the special-use folders always listed, first and in one order."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import InvalidInput
from bridge.mailbox_order import folder_name, ordered_mailboxes, own_folder


def box(name: str, use: str = "", unread: int = 0) -> dict[str, Any]:
    return {"name": name, "delimiter": "/", "specialUse": use, "selectable": True, "unread": unread, "total": unread}


def test_a_fresh_account_shows_every_standard_folder_in_order() -> None:
    listed = ordered_mailboxes([box("INBOX", unread=2)])
    assert [(b["name"], b["exists"]) for b in listed] == [
        ("INBOX", True),
        ("Drafts", False),
        ("Sent", False),
        ("Archive", False),
        ("Junk", False),
        ("Trash", False),
    ]
    assert listed[0]["unread"] == 2 and listed[4] == {
        "name": "Junk",
        "delimiter": "/",
        "specialUse": "\\Junk",
        "selectable": True,
        "unread": 0,
        "total": 0,
        "countsVersion": 0,
        "exists": False,
    }


def test_the_users_folders_follow_by_name_and_a_special_use_under_another_name_takes_its_place() -> None:
    listed = ordered_mailboxes(
        [
            box("Trash", "\\Trash"),
            box("work"),
            box("INBOX"),
            box("Sent Messages", "\\Sent"),
            box("Archive"),
            box("Bills"),
        ]
    )
    assert [b["name"] for b in listed] == [
        "INBOX",
        "Drafts",
        "Sent Messages",
        "Archive",
        "Junk",
        "Trash",
        "Bills",
        "work",
    ]
    assert [b["exists"] for b in listed] == [True, False, True, True, False, True, True, True]


def test_a_folder_name_is_checked_and_the_standard_folders_are_not_ones_own() -> None:
    assert folder_name("  Clients/2026 ") == "Clients/2026"
    for bad in ("", "   ", "a*b", "50%", "tab\there", "x" * 201, None, 7):
        with pytest.raises(InvalidInput, match="folder name"):
            folder_name(bad)
    with pytest.raises(InvalidInput, match="must not start or end with /"):
        folder_name("/top")
    assert own_folder("Clients") == "Clients"
    for standard in ("INBOX", "inbox", "Trash", "Junk"):
        with pytest.raises(InvalidInput, match="is a standard folder"):
            own_folder(standard)
