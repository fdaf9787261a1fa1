"""search_query: the search syntax, its canonical text, and the MongoDB filters it becomes (bridge.store_reads).
Pure, no server.

Filters are checked two ways: by their exact shape where the shape is the point (escaping, scoping), and
by their meaning, running them over sample documents with `matches`, a small evaluator of the MongoDB query
subset the module emits. The evaluator raises on any operator it does not know, so a filter that starts
using something else fails here instead of passing unchecked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import InvalidInput
from bridge.search_query import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    AttachmentTerm,
    DateTerm,
    FlagTerm,
    LabelTerm,
    MailboxTerm,
    SearchQuery,
    Term,
    TextTerm,
    describe,
    parse_search,
)
from bridge.store_reads import to_mongo_filter

ACCOUNT = "alice@example.test"
OTHER_ACCOUNT = "mallory@example.test"
NOV_1 = 1793491200  # 2026-11-01T00:00:00Z
OCT_1 = 1790812800  # 2026-10-01T00:00:00Z
OCT_31 = 1793404800  # 2026-10-31T00:00:00Z
FREE_FIELDS = ("subject", "snippet", "from", "fromName", "fromAddress", "to", "toAddress")
FROM_FIELDS = ("from", "fromName", "fromAddress")

# Hypothesis keeps no example database here: these tests write nothing outside their own process.
PROPERTY = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- a tiny evaluator of the MongoDB query subset the module emits -------------------------------------

_MISSING = object()


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether MongoDB would select `doc` with `query` (top-level keys are ANDed)."""
    for key, condition in query.items():
        if key == "$and":
            ok = all(matches(doc, part) for part in condition)
        elif key == "$or":
            ok = any(matches(doc, part) for part in condition)
        elif key == "$nor":
            ok = not any(matches(doc, part) for part in condition)
        elif key.startswith("$"):
            raise AssertionError(f"the evaluator does not know {key}")
        else:
            ok = _field_matches(doc.get(key, _MISSING), condition)
        if not ok:
            return False
    return True


def _field_matches(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict) and condition and all(key.startswith("$") for key in condition):
        options = condition.get("$options", "")
        assert set(options) <= {"i"}, options
        return all(_operator(value, op, arg, options) for op, arg in condition.items() if op != "$options")
    return _equals(value, condition)


def _candidates(value: Any) -> list[Any]:
    """What a condition is tried against: a missing field offers nothing, an array offers its elements."""
    if value is _MISSING:
        return []
    return list(value) if isinstance(value, list) else [value]


def _equals(value: Any, target: Any) -> bool:
    if value is _MISSING:
        return target is None
    # Strict types: Python's 1 == True would hide a filter comparing the wrong kind of value.
    return any(type(c) is type(target) and c == target for c in _candidates(value))


def _operator(value: Any, op: str, arg: Any, options: str) -> bool:
    if op == "$regex":
        flags = re.IGNORECASE if "i" in options else 0
        return any(isinstance(c, str) and re.search(arg, c, flags) is not None for c in _candidates(value))
    if op == "$ne":
        return not _equals(value, arg)
    numbers = [c for c in _candidates(value) if type(c) is int]  # null or missing never compares with a number
    if op == "$lt":
        return any(c < arg for c in numbers)
    if op == "$gte":
        return any(c >= arg for c in numbers)
    raise AssertionError(f"the evaluator does not know {op}")


def test_the_evaluator_follows_mongodb_on_arrays_and_missing_fields() -> None:
    assert matches({"flags": ["\\Seen"]}, {"flags": "\\Seen"})
    assert not matches({"flags": ["\\Seen"]}, {"flags": {"$ne": "\\Seen"}})
    assert matches({}, {"flags": {"$ne": "\\Seen"}})
    assert matches({"date": None}, {"$nor": [{"date": {"$lt": 5}}]})
    assert not matches({"date": None}, {"date": {"$gte": 0}})
    with pytest.raises(AssertionError):
        matches({}, {"$where": "1"})


# --- sample documents -----------------------------------------------------------------------------------


def message(uid: int, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "account": ACCOUNT,
        "mailbox": "INBOX",
        "uidvalidity": 1,
        "uid": uid,
        "from": "Carol <carol@x.test>",
        "fromAddress": "carol@x.test",
        "fromName": "Carol",
        "to": "alice@example.test",
        "toAddress": "alice@example.test",
        "subject": "lunch",
        "snippet": "see you at noon",
        "messageId": f"<{uid}@x.test>",
        "date": OCT_31,
        "flags": [],
        "keywords": [],
        "hasAttachments": False,
    }
    doc.update(fields)
    return doc


SAMPLES = [
    message(1),
    message(2, subject="Q3 Quarterly Report draft", flags=["\\Seen"], keywords=["Work"], hasAttachments=True),
    message(3, **{"from": "=?utf-8?q?Alice_Sm=C3=ADth?= <asmith@y.test>"}, fromName="Alice Smíth"),
    message(4, fromAddress="spam@bad.test", flags=["\\Seen", "\\Flagged"], keywords=["homework"]),
    message(5, mailbox="Archive", snippet="quarterly numbers attached", date=None),
    message(6, subject="costs (draft) a.*b", to="Bob <bob@x.test>", toAddress="bob@x.test", date=NOV_1),
    # Sparse, like a backfilled or older document: the fields it lacks must behave as MongoDB does.
    {"account": ACCOUNT, "mailbox": "INBOX", "uidvalidity": 1, "uid": 7, "date": None},
]


def select(text: str, mailbox: str | None = None) -> list[int]:
    """The uids of SAMPLES that the search selects."""
    query = to_mongo_filter(parse_search(text), ACCOUNT, mailbox)
    return [doc["uid"] for doc in SAMPLES if matches(doc, query)]


# --- parsing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("from:alice", TextTerm("from", "alice")),
        ("to:bob@x.test", TextTerm("to", "bob@x.test")),
        ('subject:"quarterly report"', TextTerm("subject", "quarterly report")),
        ("has:attachment", AttachmentTerm()),
        ("has:attachments", AttachmentTerm()),
        ("is:unread", FlagTerm("unread")),
        ("is:read", FlagTerm("read")),
        ("is:starred", FlagTerm("starred")),
        ("in:Archive", MailboxTerm("Archive")),
        ('in:"Sent Items"', MailboxTerm("Sent Items")),
        ("label:work", LabelTerm("work")),
        ("before:2026-11-01", DateTerm("before", date(2026, 11, 1))),
        ("after:2026/10/01", DateTerm("after", date(2026, 10, 1))),
        ("hello", TextTerm("text", "hello")),
        ("from:a:b", TextTerm("from", "a:b")),
    ],
)
def test_each_operator_parses_to_its_term(text: str, term: Term) -> None:
    assert parse_search(text) == SearchQuery((term,))


def test_terms_keep_their_order_and_any_whitespace_separates_them() -> None:
    assert parse_search(" quarterly\t\nfrom:carol   report ") == SearchQuery(
        (TextTerm("text", "quarterly"), TextTerm("from", "carol"), TextTerm("text", "report"))
    )


@pytest.mark.parametrize("text", ["", "   ", "\t\n", '""', '"" ""'])
def test_blank_searches_have_no_terms(text: str) -> None:
    assert parse_search(text) == SearchQuery(())


def test_operators_and_is_has_values_are_case_insensitive_while_text_keeps_its_case() -> None:
    query = parse_search("FROM:Alice Subject:Hi IS:UNREAD Has:Attachment LABEL:Work In:Archive BEFORE:2026-11-01")
    assert query.terms == (
        TextTerm("from", "Alice"),
        TextTerm("subject", "Hi"),
        FlagTerm("unread"),
        AttachmentTerm(),
        LabelTerm("Work"),
        MailboxTerm("Archive"),
        DateTerm("before", date(2026, 11, 1)),
    )


@pytest.mark.parametrize(("text", "name"), [("in:inbox", "INBOX"), ("in:InBox", "INBOX"), ("in:archive", "archive")])
def test_only_inbox_is_case_insensitive_among_mailbox_names(text: str, name: str) -> None:
    assert parse_search(text).terms == (MailboxTerm(name),)


def test_the_query_is_frozen_and_slotted() -> None:
    query = parse_search("from:alice")
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.terms = ()  # type: ignore[misc]
    assert not hasattr(query, "__dict__")
    assert not hasattr(query.terms[0], "__dict__")
    assert hash(query) == hash(parse_search("from:alice"))


# --- quoting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ('"two words"', TextTerm("text", "two words")),
        ('subject:"say \\"hi\\" now"', TextTerm("subject", 'say "hi" now')),
        ('"a \\\\ b"', TextTerm("text", "a \\ b")),
        ('"\\x"', TextTerm("text", "x")),  # inside quotes a backslash takes any next character literally
        ('"line\nbreak"', TextTerm("text", "line\nbreak")),
        ('"-not negated"', TextTerm("text", "-not negated")),
        ('"from:alice"', TextTerm("text", "from:alice")),  # quoted, an operator is just text
        ('O"Brien', TextTerm("text", 'O"Brien')),  # a quote that does not start a value is a character
        ('from:ab"c', TextTerm("from", 'ab"c')),
        ("a\\b", TextTerm("text", "a\\b")),  # outside quotes a backslash is a character
    ],
)
def test_quoting_and_escaping(text: str, term: Term) -> None:
    assert parse_search(text).terms == (term,)


def test_quoted_terms_may_be_followed_by_more_terms() -> None:
    assert parse_search('subject:"a b" "c d"\tlabel:"x y"').terms == (
        TextTerm("subject", "a b"),
        TextTerm("text", "c d"),
        LabelTerm("x y"),
    )


# --- negation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("-from:spam", TextTerm("from", "spam", negated=True)),
        ("-word", TextTerm("text", "word", negated=True)),
        ('-"two words"', TextTerm("text", "two words", negated=True)),
        ("-is:read", FlagTerm("read", negated=True)),
        ("-has:attachment", AttachmentTerm(negated=True)),
        ("-in:Spam", MailboxTerm("Spam", negated=True)),
        ("-label:work", LabelTerm("work", negated=True)),
        ("-before:2026-01-01", DateTerm("before", date(2026, 1, 1), negated=True)),
        ("-FROM:spam", TextTerm("from", "spam", negated=True)),
        ("--x", TextTerm("text", "-x", negated=True)),  # one dash negates; the rest is the value
        ("-", TextTerm("text", "-")),  # a dash with nothing after it negates nothing: it is text
        ("from:-x", TextTerm("from", "-x")),  # only a term's first character can negate it
        ("e-mail", TextTerm("text", "e-mail")),
    ],
)
def test_negation(text: str, term: Term) -> None:
    assert parse_search(text).terms == (term,)


def test_a_lone_dash_before_a_space_is_text_and_does_not_negate_the_next_term() -> None:
    assert parse_search("- x").terms == (TextTerm("text", "-"), TextTerm("text", "x"))


# --- unknown operators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("foo:bar", TextTerm("text", "foo:bar")),
        ("Re:meeting", TextTerm("text", "Re:meeting")),
        ("-foo:bar", TextTerm("text", "foo:bar", negated=True)),
        ('foo:"a b"', TextTerm("text", "foo:a b")),
        ("foo:", TextTerm("text", "foo:")),
        ("http://x.test/a?b=c", TextTerm("text", "http://x.test/a?b=c")),
        ("12:30", TextTerm("text", "12:30")),
        ("from2:x", TextTerm("text", "from2:x")),  # an operator is letters only
        ("fróm:x", TextTerm("text", "fróm:x")),
    ],
)
def test_unknown_operators_are_free_text(text: str, term: Term) -> None:
    assert parse_search(text).terms == (term,)


# --- dates ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("after:2024-02-29", date(2024, 2, 29)),  # a leap day
        ("after:2024/02/29", date(2024, 2, 29)),
        ("after:0001-01-01", date(1, 1, 1)),
        ("after:9999-12-31", date(9999, 12, 31)),
    ],
)
def test_valid_dates(text: str, day: date) -> None:
    assert parse_search(text).terms == (DateTerm("after", day),)


def test_both_date_spellings_are_the_same_term() -> None:
    assert parse_search("before:2026/11/01") == parse_search("before:2026-11-01")


def test_date_filters_are_utc_midnight_with_before_exclusive_and_after_inclusive() -> None:
    assert to_mongo_filter(parse_search("before:2026-11-01"), ACCOUNT, None)["$and"] == [{"date": {"$lt": NOV_1}}]
    assert to_mongo_filter(parse_search("after:2026-10-01"), ACCOUNT, None)["$and"] == [{"date": {"$gte": OCT_1}}]


@pytest.mark.parametrize(
    ("seconds", "before_nov_1", "after_nov_1"),
    [
        (NOV_1 - 1, True, False),  # 2026-10-31T23:59:59Z
        (NOV_1, False, True),  # 2026-11-01T00:00:00Z: the day named by after:, and not before itself
        (NOV_1 + 86399, False, True),
        (None, False, False),  # an undated message is neither before nor after anything
    ],
)
def test_date_bounds_at_the_edges(seconds: int | None, before_nov_1: bool, after_nov_1: bool) -> None:
    doc = message(1, date=seconds)
    assert matches(doc, to_mongo_filter(parse_search("before:2026-11-01"), ACCOUNT, None)) is before_nov_1
    assert matches(doc, to_mongo_filter(parse_search("after:2026-11-01"), ACCOUNT, None)) is after_nov_1
    # A negated bound is the complement, so it takes undated messages too.
    assert matches(doc, to_mongo_filter(parse_search("-before:2026-11-01"), ACCOUNT, None)) is not before_nov_1
    assert matches(doc, to_mongo_filter(parse_search("-after:2026-11-01"), ACCOUNT, None)) is not after_nov_1


def test_after_a_day_and_before_the_next_is_exactly_that_utc_day() -> None:
    query = to_mongo_filter(parse_search("after:2026-10-31 before:2026-11-01"), ACCOUNT, None)
    inside = [OCT_31, OCT_31 + 43200, NOV_1 - 1]
    outside = [OCT_31 - 1, NOV_1, None]
    assert all(matches(message(1, date=s), query) for s in inside)
    assert not any(matches(message(1, date=s), query) for s in outside)


def test_the_same_day_after_and_before_selects_nothing() -> None:
    assert select("after:2026-10-31 before:2026-10-31") == []


# --- errors ---------------------------------------------------------------------------------------------

_DATE_HINT = ", expected YYYY-MM-DD or YYYY/MM/DD"
# 2026-11-01 in Arabic-Indic digits, which int() would read: a date must be written in ASCII digits.
ARABIC_INDIC_DATE = "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in "2026-11-01")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x" * 1001, "search is too long: 1001 characters, at most 1000"),
        (" ".join(["w"] * 33), "too many search terms: at most 32"),
        ('subject:"abc', "unterminated quote at character 9 of the search"),
        ('"abc\\"', "unterminated quote at character 1 of the search"),  # the last quote is escaped
        ('x "abc\\', "unterminated quote at character 3 of the search"),
        ('"', "unterminated quote at character 1 of the search"),
        ('"a b"c', "the closing quote at character 5 must be followed by a space"),
        ('from:"a""b"', "the closing quote at character 8 must be followed by a space"),
        ("before:2026-13-01", "before: invalid date '2026-13-01'" + _DATE_HINT),
        ("after:2025-02-29", "after: invalid date '2025-02-29'" + _DATE_HINT),
        ("after:2026-00-10", "after: invalid date '2026-00-10'" + _DATE_HINT),
        ("after:0000-01-01", "after: invalid date '0000-01-01'" + _DATE_HINT),
        ("before:2026-11-1", "before: invalid date '2026-11-1'" + _DATE_HINT),
        ("before:2026-11/01", "before: invalid date '2026-11/01'" + _DATE_HINT),
        ("before:26-11-01", "before: invalid date '26-11-01'" + _DATE_HINT),
        ("before:2026-11-01T00:00", "before: invalid date '2026-11-01T00:00'" + _DATE_HINT),
        ("before:tomorrow", "before: invalid date 'tomorrow'" + _DATE_HINT),
        (f"after:{ARABIC_INDIC_DATE}", f"after: invalid date '{ARABIC_INDIC_DATE}'" + _DATE_HINT),
        ("from:", "from: needs a value"),
        ("FROM:", "from: needs a value"),
        ("-to:", "to: needs a value"),
        ('subject:""', "subject: needs a value"),
        ("from: alice", "from: needs a value"),
        ("in:", "in: needs a value"),
        ("before:", "before: needs a value"),
        ("is:important", "is: expects unread, read or starred, not 'important'"),
        ("has:pdf", "has: expects attachment, not 'pdf'"),
        ("a\x00b", "search must not contain NUL characters"),
    ],
)
def test_invalid_searches_say_why_on_one_line(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_search(text)
    assert str(raised.value) == message


def test_a_long_bad_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_search("is:" + "x" * 500 + "\nmore")
    assert str(raised.value) == "is: expects unread, read or starred, not '" + "x" * 40 + "...'"


def test_a_value_with_a_line_break_stays_on_one_line_in_the_message() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_search('before:"2026\n11"')
    assert "\n" not in str(raised.value)


def test_non_text_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="search must be text"):
        parse_search(None)  # type: ignore[arg-type]


def test_the_limits_themselves_are_allowed() -> None:
    assert parse_search("x" * MAX_QUERY_CHARS).terms == (TextTerm("text", "x" * MAX_QUERY_CHARS),)
    assert len(parse_search(" ".join(["w"] * MAX_TERMS)).terms) == MAX_TERMS
    # Ignored empty phrases are not terms, so they do not count against the limit.
    assert len(parse_search(" ".join(["w"] * MAX_TERMS + ['""'] * 5)).terms) == MAX_TERMS


# --- filters: shape -------------------------------------------------------------------------------------


def regex(pattern: str) -> dict[str, str]:
    return {"$regex": pattern, "$options": "i"}


def test_an_empty_search_is_just_the_scope() -> None:
    assert to_mongo_filter(parse_search(""), ACCOUNT, "INBOX") == {"account": ACCOUNT, "mailbox": "INBOX"}
    assert to_mongo_filter(parse_search(""), ACCOUNT, None) == {"account": ACCOUNT}


def test_a_free_word_looks_in_every_text_field() -> None:
    assert to_mongo_filter(parse_search("Lunch"), ACCOUNT, "INBOX") == {
        "account": ACCOUNT,
        "mailbox": "INBOX",
        "$and": [{"$or": [{field: regex("Lunch")} for field in FREE_FIELDS]}],
    }


def test_a_negated_field_match_is_a_nor_of_its_fields() -> None:
    assert to_mongo_filter(parse_search("-from:spam"), ACCOUNT, None)["$and"] == [
        {"$nor": [{field: regex("spam")} for field in FROM_FIELDS]}
    ]
    assert to_mongo_filter(parse_search("-subject:x"), ACCOUNT, None)["$and"] == [{"$nor": [{"subject": regex("x")}]}]


@pytest.mark.parametrize(
    ("text", "clause"),
    [
        ("is:unread", {"flags": {"$ne": "\\Seen"}}),
        ("-is:unread", {"flags": "\\Seen"}),
        ("is:read", {"flags": "\\Seen"}),
        ("-is:read", {"flags": {"$ne": "\\Seen"}}),
        ("is:starred", {"flags": "\\Flagged"}),
        ("-is:starred", {"flags": {"$ne": "\\Flagged"}}),
        ("has:attachment", {"hasAttachments": True}),
        ("-has:attachment", {"$nor": [{"hasAttachments": True}]}),
        ("label:work", {"keywords": regex("^work$")}),
        ("-label:work", {"$nor": [{"keywords": regex("^work$")}]}),
        ("-in:Spam", {"$nor": [{"mailbox": "Spam"}]}),
        ("to:bob", {"$or": [{"to": regex("bob")}, {"toAddress": regex("bob")}]}),
    ],
)
def test_clause_shapes(text: str, clause: dict[str, Any]) -> None:
    assert to_mongo_filter(parse_search(text), ACCOUNT, None) == {"account": ACCOUNT, "$and": [clause]}


# --- filters: meaning -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "uids"),
    [
        ("from:alice", [3]),  # the decoded name, though the raw header is RFC 2047 encoded
        ("from:ASMITH@Y", [3]),
        ("from:spam", [4]),
        ("-from:spam", [1, 2, 3, 5, 6, 7]),  # a document with no sender is not from spam
        ("to:bob@x.test", [6]),
        ('subject:"quarterly report"', [2]),
        ("quarterly", [2, 5]),  # a free word looks at the snippet too
        ("quarterly draft", [2]),  # free words are ANDed
        ("-quarterly", [1, 3, 4, 6, 7]),
        ("is:unread", [1, 3, 5, 6, 7]),
        ("is:read", [2, 4]),
        ("is:starred", [4]),
        ("-is:starred", [1, 2, 3, 5, 6, 7]),
        ("is:read -is:starred", [2]),
        ("label:work", [2]),  # the whole keyword, any case; "homework" is not "work"
        ("label:WORK", [2]),
        ("-label:work", [1, 3, 4, 5, 6, 7]),
        ("has:attachment", [2]),
        ("-has:attachment", [1, 3, 4, 5, 6, 7]),  # missing counts as none
        ("in:Archive", [5]),
        ("-in:Archive", [1, 2, 3, 4, 6, 7]),
        ("in:INBOX in:Archive", []),  # terms are ANDed, in: too
        ("before:2026-11-01", [1, 2, 3, 4]),
        ("after:2026-11-01", [6]),
        ("nothing-like-this", []),
    ],
)
def test_what_searches_select(text: str, uids: list[int]) -> None:
    assert select(text) == uids


def test_user_text_is_matched_literally_never_as_a_pattern() -> None:
    assert select(".*") == [6]  # only the subject that contains ".*" itself
    assert select("(") == [6]  # an unbalanced parenthesis is no error, just a character
    assert select("(draft)") == [6]
    assert select("a.*b") == [6]
    assert select("a.b") == []
    assert select("label:w.rk") == []
    assert select("label:.*") == []


@pytest.mark.parametrize("text", [".*", "(", "a+b", "[x]", "^$", "\\d", "a|b", "x{2}", "$where", "?", "#"])
def test_every_pattern_is_the_escaped_text(text: str) -> None:
    query = to_mongo_filter(parse_search(f"{text} from:{text} label:{text}"), ACCOUNT, None)
    patterns = {condition["$regex"] for condition in regex_conditions(query)}
    assert patterns == {re.escape(text), f"^{re.escape(text)}$"}
    assert all(condition["$options"] == "i" for condition in regex_conditions(query))


# --- scoping --------------------------------------------------------------------------------------------


def test_in_replaces_the_mailbox_scope_but_never_the_account() -> None:
    assert to_mongo_filter(parse_search("in:Archive"), ACCOUNT, "INBOX") == {
        "account": ACCOUNT,
        "$and": [{"mailbox": "Archive"}],
    }


def test_a_negated_in_narrows_the_scope_instead_of_replacing_it() -> None:
    assert to_mongo_filter(parse_search("-in:Archive"), ACCOUNT, "INBOX") == {
        "account": ACCOUNT,
        "mailbox": "INBOX",
        "$and": [{"$nor": [{"mailbox": "Archive"}]}],
    }


def test_the_mailbox_scope_applies_when_given() -> None:
    assert select("quarterly", mailbox="INBOX") == [2]
    assert select("quarterly", mailbox="Archive") == [5]
    assert select("quarterly in:Archive", mailbox="INBOX") == [5]


@pytest.mark.parametrize("text", ["", "in:Archive", "-in:INBOX", "-from:nobody", "-has:attachment", "-is:read"])
@pytest.mark.parametrize("mailbox", [None, "INBOX", "Archive"])
def test_another_accounts_messages_are_never_selected(text: str, mailbox: str | None) -> None:
    query = to_mongo_filter(parse_search(text), ACCOUNT, mailbox)
    assert query["account"] == ACCOUNT
    assert not any(matches({**doc, "account": OTHER_ACCOUNT}, query) for doc in SAMPLES)


def test_a_filter_needs_an_account() -> None:
    with pytest.raises(ValueError, match="needs an account"):
        to_mongo_filter(parse_search("in:Archive"), "", None)


# --- describe -------------------------------------------------------------------------------------------


def test_describe_renders_canonical_text() -> None:
    text = (
        'FROM:Alice   subject:"q3 report"  -IS:Unread after:2026/10/01 in:inbox HAS:attachments '
        + '"from:x" --y - re:z'
    )
    assert describe(parse_search(text)) == (
        'from:Alice subject:"q3 report" -is:unread after:2026-10-01 in:INBOX has:attachment "from:x" --y - re:z'
    )


def test_describe_quotes_and_escapes_only_when_needed() -> None:
    query = SearchQuery(
        (
            TextTerm("subject", 'say "hi" \\ now'),
            TextTerm("text", "-x"),
            TextTerm("text", 'foo:"x'),
            TextTerm("from", '"quoted'),
            TextTerm("to", 'a"b\\c'),
            LabelTerm("x y"),
        )
    )
    assert describe(query) == 'subject:"say \\"hi\\" \\\\ now" "-x" "foo:\\"x" from:"\\"quoted" to:a"b\\c label:"x y"'
    assert parse_search(describe(query)) == query


def test_describe_of_nothing_is_empty() -> None:
    assert describe(SearchQuery()) == ""


# --- properties -----------------------------------------------------------------------------------------

# Text made of the syntax's own pieces finds the corner cases far sooner than arbitrary characters do.
_PIECES = st.sampled_from(
    [" ", "  ", "\t", "\n", "-", "--", '"', '\\"', "\\", "\\\\", ":", "from:", "TO:", "subject:", "is:", "has:",
     "in:", "label:", "before:", "after:", "foo:", "unread", "read", "starred", "attachment", "inbox", "Archive",
     "2026-11-01", "2026/10/01", "2026-02-30", ".*", "(", "$ne", "é", "\u2028", "\x00", "word"]
)  # fmt: skip
SYNTAX_TEXT = st.lists(_PIECES | st.text(max_size=4), max_size=80).map("".join).filter(lambda s: len(s) <= 1200)


def regex_conditions(node: Any) -> Iterator[dict[str, Any]]:
    """Every `{"$regex": ..., "$options": ...}` in a filter."""
    if isinstance(node, dict):
        if "$regex" in node:
            yield node
        for value in node.values():
            yield from regex_conditions(value)
    elif isinstance(node, list):
        for item in node:
            yield from regex_conditions(item)


def keys_of(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys_of(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys_of(item)


_KNOWN_KEYS = {
    *FREE_FIELDS,
    *("account", "mailbox", "flags", "keywords", "hasAttachments", "date"),
    *("$and", "$or", "$nor", "$regex", "$options", "$ne", "$lt", "$gte"),
}


def check_parsed(text: str) -> None:
    """What must hold for any text: InvalidInput or a query that describes, round-trips and filters safely."""
    try:
        query = parse_search(text)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
        assert 0 < len(str(exc)) < 200
        return
    assert len(query.terms) <= MAX_TERMS
    rendered = describe(query)
    assert len(rendered) <= len(text)  # so the rendering is always within the length limit too
    assert parse_search(rendered) == query
    filter_ = to_mongo_filter(query, ACCOUNT, "INBOX")
    assert filter_["account"] == ACCOUNT
    assert set(keys_of(filter_)) <= _KNOWN_KEYS  # user text is never a key
    values = {t.value for t in query.terms if isinstance(t, TextTerm)}
    keywords = {t.keyword for t in query.terms if isinstance(t, LabelTerm)}
    allowed = {re.escape(v) for v in values} | {f"^{re.escape(k)}$" for k in keywords}
    assert {c["$regex"] for c in regex_conditions(filter_)} <= allowed
    assert not any(matches({**doc, "account": OTHER_ACCOUNT}, filter_) for doc in SAMPLES)


@PROPERTY
@given(st.text(max_size=1200))
def test_any_text_parses_or_is_invalid_input(text: str) -> None:
    check_parsed(text)


@settings(PROPERTY, max_examples=500)
@given(SYNTAX_TEXT)
def test_syntax_like_text_parses_or_is_invalid_input(text: str) -> None:
    check_parsed(text)


# Values the samples hold, so that generated terms also select something, mixed with arbitrary ones.
_SAMPLE_VALUES = st.sampled_from(["alice", "spam", "quarterly", "Work", "Archive", "INBOX", ".*", "\\Seen"])
_VALUE = _SAMPLE_VALUES | st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=20)
_MAILBOX = _VALUE.filter(lambda name: name == "INBOX" or name.upper() != "INBOX")
_NEGATED = st.booleans()
TERMS: st.SearchStrategy[Term] = st.one_of(
    st.builds(TextTerm, st.sampled_from(["text", "from", "to", "subject"]), _VALUE, _NEGATED),
    st.builds(FlagTerm, st.sampled_from(["unread", "read", "starred"]), _NEGATED),
    st.builds(AttachmentTerm, _NEGATED),
    st.builds(MailboxTerm, _MAILBOX, _NEGATED),
    st.builds(LabelTerm, _VALUE, _NEGATED),
    st.builds(DateTerm, st.sampled_from(["before", "after"]), st.dates(), _NEGATED),
)
QUERIES = st.lists(TERMS, max_size=8).map(lambda terms: SearchQuery(tuple(terms)))


@settings(PROPERTY, max_examples=300)
@given(QUERIES)
def test_describe_round_trips_generated_queries(query: SearchQuery) -> None:
    assert parse_search(describe(query)) == query


@PROPERTY
@given(TERMS)
def test_a_negated_term_selects_exactly_what_the_term_does_not(term: Term) -> None:
    positive = to_mongo_filter(SearchQuery((dataclasses.replace(term, negated=False),)), ACCOUNT, None)
    negative = to_mongo_filter(SearchQuery((dataclasses.replace(term, negated=True),)), ACCOUNT, None)
    for doc in SAMPLES:
        assert matches(doc, positive) != matches(doc, negative)
