"""bridge.search_match: a search's meaning in Python, and what the listing order's scan is given.
(Its agreement with the store's own filter is tested against the real store in test_listing_order.)"""

from __future__ import annotations

from typing import Any

import msgpack

from bridge.search_match import SEARCHED, digest, scan_terms, scope, selects
from bridge.search_query import parse_search

DOC: dict[str, Any] = {
    "mailbox": "INBOX",
    "subject": "Quarterly Budget",
    "snippet": "numbers attached",
    "from": "=?utf-8?q?Zo=C3=AB?= <zoe@outside.test>",
    "fromName": "Zoë Ünal",
    "fromAddress": "zoe@outside.test",
    "to": "Team <team@example.test>",
    "toAddress": "team@example.test",
    "flags": ["\\Seen"],
    "keywords": ["Work"],
    "hasAttachments": True,
    "date": 1_700_000_000,  # 2023-11-14 22:13 UTC
}


def test_the_digest_is_each_searched_field_lowercased_in_order() -> None:
    text = msgpack.unpackb(digest({**DOC, "snippet": None}))
    assert len(text) == len(SEARCHED) == 7
    assert text[SEARCHED.index("subject")] == "quarterly budget"
    assert text[SEARCHED.index("fromName")] == "zoë ünal"
    assert text[SEARCHED.index("snippet")] == ""  # not text: nothing to find


def test_scan_terms_give_each_text_terms_fields_as_positions() -> None:
    assert scan_terms(parse_search("BUDGET")) == [(False, "1234567", "budget")]
    assert scan_terms(parse_search("from:Zoë -to:team is:unread")) == [(False, "345", "zoë"), (True, "67", "team")]
    assert scan_terms(parse_search("-budget")) == [(True, "1234567", "budget")]  # text alone: exact


def test_queries_without_a_narrowing_text_term_have_no_scan_terms() -> None:
    for text in ["is:unread", "label:work has:attachment", "-budget is:unread", "after:2024-01-01", ""]:
        assert scan_terms(parse_search(text)) is None, text


def test_the_scope_is_the_one_mailbox_in_names() -> None:
    assert scope(parse_search("budget"), "INBOX") == "INBOX"
    assert scope(parse_search("in:Sent budget -in:Trash"), "INBOX") == "Sent"
    assert scope(parse_search("in:Sent in:sent budget"), "INBOX") is None
    assert scope(parse_search("in:inbox in:INBOX x"), "Sent") == "INBOX"  # in:inbox is INBOX, as in IMAP


def test_selects_follows_each_terms_meaning() -> None:
    selected = {
        "budget": True, "QUARTERLY": True, "-budget": False, "subject:numbers": False, "numbers": True,
        "from:zoë": True, "from:ÜNAL": True, "from:team": False, "to:team": True, "to:zoe": False,
        "is:read": True, "is:unread": False, "-is:unread": True, "is:starred": False, "-is:starred": True,
        "label:work": True, "label:wor": False, "-label:home": True, "has:attachment": True,
        "in:INBOX": True, "in:Sent": False, "-in:Sent": True, "after:2023-11-14": True,
        "before:2023-11-14": False, "before:2023-11-15": True, "budget is:read label:WORK": True,
        "budget is:unread": False,
    }  # fmt: skip
    for text, expected in selected.items():
        assert selects(parse_search(text), DOC) is expected, text


def test_missing_fields_match_no_term_and_every_negation() -> None:
    bare: dict[str, Any] = {"mailbox": "INBOX"}
    terms = ["budget", "is:read", "is:starred", "label:work", "has:attachment", "after:1970-01-02", "before:2100-01-01"]
    for text in terms:
        assert not selects(parse_search(text), bare), text
        assert selects(parse_search(f"-{text}"), bare), text
    assert selects(parse_search("is:unread"), bare)  # no \Seen: unread
    assert not selects(parse_search("before:2100-01-01"), {**bare, "date": True})  # not a number
