"""Gmail-like search syntax for the message index: parse it, render it back, and turn it into a MongoDB filter.

Pure: no I/O, no clock, no store access.

Contract
--------
`parse_search(text)` reads a query made of whitespace-separated terms, all of which must hold (AND):

- `from:V` `to:V` `subject:V` - case-insensitive substring of the sender (raw header, decoded name or address),
  the recipients (raw header or address), or the subject.
- a free word `V` - case-insensitive substring of the subject, the snippet, the sender or the recipients.
- `in:NAME` - the message is in mailbox NAME (exact; `inbox` in any case means `INBOX`, as in IMAP).
- `label:K` - the message carries keyword K (the whole keyword, case-insensitive).
- `is:unread` `is:read` `is:starred` - `\\Seen` absent, `\\Seen` present, `\\Flagged` present.
- `has:attachment` (or `has:attachments`).
- `before:D` - `date` < D 00:00:00 UTC, so day D itself is excluded.
  `after:D` - `date` >= D 00:00:00 UTC, so day D itself is included.
  D is `YYYY-MM-DD` or `YYYY/MM/DD` (two-digit month and day); `after:D before:D+1` is exactly the UTC day D.
  Days are UTC, not the reader's zone, which a query does not carry.
- a leading `-` negates a term: `-T` selects exactly the messages `T` does not select (its complement,
  including messages that lack the field, e.g. `-before:D` also matches undated messages).

Operators and the values of `is:`/`has:` are case-insensitive. A value may be quoted, `"like this"`, to hold
spaces; inside quotes a backslash takes the next character literally (`\\"`, `\\\\`); elsewhere a backslash,
and a quote that does not start a value, is an ordinary character. An unknown operator (`foo:bar`) is free
text `foo:bar`; an empty quoted free phrase (`""`) is ignored. Malformed input raises `InvalidInput` with a
one-line message: over 1000 characters, over 32 terms, an unterminated quote, a closing quote not followed
by a space, an invalid date, an empty operator value (`from:`), an unknown `is:`/`has:` value, a NUL.

`describe(query)` renders a query canonically; `parse_search(describe(q)) == q` for every `q` that
`parse_search` returns (and the rendering is never longer than the text `q` was parsed from).

`to_mongo_filter(query, account, mailbox)` returns a filter whose top-level `account` key can never be
dropped or overridden by a term; it is also scoped to `mailbox` unless a (non-negated) `in:` term names one.
Text and labels match through a case-insensitive `$regex` of `re.escape`d user text, because the store may be
FerretDB, which has no `$text` search, and user text must never act as a pattern; `in:` compares for
equality. User text is only ever a string value in the filter, never a key or an operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, TypeAlias

from bridge.errors import InvalidInput

MAX_QUERY_CHARS: Final = 1000
MAX_TERMS: Final = 32

SEEN: Final = "\\Seen"
FLAGGED: Final = "\\Flagged"

TextField: TypeAlias = Literal["text", "from", "to", "subject"]
FlagState: TypeAlias = Literal["unread", "read", "starred"]
DateBound: TypeAlias = Literal["before", "after"]


@dataclass(frozen=True, slots=True)
class TextTerm:
    """A case-insensitive substring match; `field` "text" is a free word, written without an operator."""

    field: TextField
    value: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class FlagTerm:
    """`is:unread`, `is:read` or `is:starred`."""

    state: FlagState
    negated: bool = False


@dataclass(frozen=True, slots=True)
class AttachmentTerm:
    """`has:attachment`."""

    negated: bool = False


@dataclass(frozen=True, slots=True)
class MailboxTerm:
    """`in:NAME`; a non-negated one replaces the caller's mailbox scope."""

    name: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class LabelTerm:
    """`label:KEYWORD`, an IMAP keyword."""

    keyword: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class DateTerm:
    """`before:DAY` (exclusive) or `after:DAY` (inclusive), days being UTC."""

    bound: DateBound
    day: date
    negated: bool = False


Term: TypeAlias = TextTerm | FlagTerm | AttachmentTerm | MailboxTerm | LabelTerm | DateTerm


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """The terms of a search, in the order written; all must hold. No terms selects everything in scope."""

    terms: tuple[Term, ...] = ()


# Which index fields each kind of text term looks in. The raw From header may still be RFC 2047 encoded, so
# the decoded name and the address are searched too; a field a document lacks simply does not match.
_TEXT_FIELDS: Final[dict[TextField, tuple[str, ...]]] = {
    "from": ("from", "fromName", "fromAddress"),
    "to": ("to", "toAddress"),
    "subject": ("subject",),
    "text": ("subject", "snippet", "from", "fromName", "fromAddress", "to", "toAddress"),
}
_TEXT_OPERATORS: Final[dict[str, TextField]] = {"from": "from", "to": "to", "subject": "subject"}
_FLAG_STATES: Final[dict[str, FlagState]] = {"unread": "unread", "read": "read", "starred": "starred"}
# (flag, whether the state means the flag is present)
_FLAG_MEANING: Final[dict[FlagState, tuple[str, bool]]] = {
    "unread": (SEEN, False),
    "read": (SEEN, True),
    "starred": (FLAGGED, True),
}
_DATE_BOUNDS: Final[dict[str, DateBound]] = {"before": "before", "after": "after"}
_ATTACHMENT_VALUES: Final = frozenset({"attachment", "attachments"})
_OPERATORS: Final = frozenset({*_TEXT_OPERATORS, *_DATE_BOUNDS, "in", "label", "is", "has"})

# An operator is ASCII letters then a colon. Other prefixes (`12:30`) never are, and unknown ones (`http:`) are
# turned back into text by `_make_term`.
_OPERATOR_PREFIX: Final = re.compile(r"([A-Za-z]+):")
# [0-9], not \d: \d would accept other scripts' digits, which int() reads but nobody means as a date.
_DATE: Final = re.compile(r"([0-9]{4})([-/])([0-9]{2})\2([0-9]{2})")


def parse_search(text: str) -> SearchQuery:
    """Parse a search; raises `InvalidInput` (one line, safe to show the user) and nothing else."""
    if not isinstance(text, str):  # a JSON body can hand over anything
        raise InvalidInput("search must be text")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"search is too long: {len(text)} characters, at most {MAX_QUERY_CHARS}")
    if "\x00" in text:
        # MongoDB refuses patterns holding NUL; saying so here beats a store error (a 503) later.
        raise InvalidInput("search must not contain NUL characters")
    terms: list[Term] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position == end:
            break
        # A dash negates only when something follows it, so a lone "-" is searched for as text.
        negated = text[position] == "-" and position + 1 < end and not text[position + 1].isspace()
        if negated:
            position += 1
        operator = _OPERATOR_PREFIX.match(text, position)
        if operator is not None:
            position = operator.end()
        value, position = _read_value(text, position)
        term = _make_term(operator.group(1) if operator else None, value, negated)
        if term is None:
            continue
        terms.append(term)
        if len(terms) > MAX_TERMS:
            raise InvalidInput(f"too many search terms: at most {MAX_TERMS}")
    return SearchQuery(tuple(terms))


def _read_value(text: str, position: int) -> tuple[str, int]:
    """The value starting at `position` and where it ends: a quoted string, or a run of non-space characters."""
    end = len(text)
    if position < end and text[position] == '"':
        chars: list[str] = []
        index = position + 1
        while index < end:
            char = text[index]
            if char == '"':
                if index + 1 < end and not text[index + 1].isspace():
                    # `"a b"c` has no obvious meaning (one word? two?), so it is refused rather than guessed.
                    raise InvalidInput(f"the closing quote at character {index + 1} must be followed by a space")
                return "".join(chars), index + 1
            if char == "\\":
                if index + 1 == end:  # the backslash escapes the end of input: the quote never closes
                    break
                chars.append(text[index + 1])
                index += 2
                continue
            chars.append(char)
            index += 1
        raise InvalidInput(f"unterminated quote at character {position + 1} of the search")
    # A quote inside a bare word is an ordinary character: only a value's first character opens a quote.
    stop = position
    while stop < end and not text[stop].isspace():
        stop += 1
    return text[position:stop], stop


def _make_term(name: str | None, value: str, negated: bool) -> Term | None:
    """The term for `name:value` (or a free `value`); None for an empty free phrase, which restricts nothing."""
    operator = name.lower() if name is not None else None
    if name is not None and operator not in _OPERATORS:
        # Unknown operators are text, so "re:meeting" or "ticket:1234" still find what was typed.
        value, operator = f"{name}:{value}", None
    if operator is None:
        return TextTerm("text", value, negated) if value else None
    if not value:
        raise InvalidInput(f"{operator}: needs a value")
    if operator in _TEXT_OPERATORS:
        return TextTerm(_TEXT_OPERATORS[operator], value, negated)
    if operator in _DATE_BOUNDS:
        return DateTerm(_DATE_BOUNDS[operator], _parse_day(operator, value), negated)
    if operator == "in":
        # IMAP names INBOX case-insensitively and every other mailbox exactly (RFC 3501 5.1).
        return MailboxTerm("INBOX" if value.upper() == "INBOX" else value, negated)
    if operator == "label":
        return LabelTerm(value, negated)
    if operator == "is":
        state = _FLAG_STATES.get(value.lower())
        if state is None:
            raise InvalidInput(f"is: expects unread, read or starred, not {_shown(value)}")
        return FlagTerm(state, negated)
    # Only "has" is left. An unknown value is refused rather than searched as text: has:pdf matching the
    # word "has:pdf" would look like it worked while silently doing something else.
    if value.lower() not in _ATTACHMENT_VALUES:
        raise InvalidInput(f"has: expects attachment, not {_shown(value)}")
    return AttachmentTerm(negated)


def _parse_day(operator: str, value: str) -> date:
    match = _DATE.fullmatch(value)
    if match is not None:
        try:
            return date(int(match.group(1)), int(match.group(3)), int(match.group(4)))
        except ValueError:  # 2026-02-30, month 13, year 0
            pass
    raise InvalidInput(f"{operator}: invalid date {_shown(value)}, expected YYYY-MM-DD or YYYY/MM/DD")


def _shown(value: str) -> str:
    """A user's value quoted for an error message: repr keeps it on one line, the cut keeps it short."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def describe(query: SearchQuery) -> str:
    """The canonical text of `query`, for logs: `parse_search(describe(q)) == q`."""
    return " ".join(_describe_term(term) for term in query.terms)


def _describe_term(term: Term) -> str:
    sign = "-" if term.negated else ""
    if isinstance(term, TextTerm):
        if term.field == "text":
            return sign + _render_free(term.value, term.negated)
        return f"{sign}{term.field}:{_render(term.value)}"
    if isinstance(term, FlagTerm):
        return f"{sign}is:{term.state}"
    if isinstance(term, AttachmentTerm):
        return f"{sign}has:attachment"
    if isinstance(term, MailboxTerm):
        return f"{sign}in:{_render(term.name)}"
    if isinstance(term, LabelTerm):
        return f"{sign}label:{_render(term.keyword)}"
    return f"{sign}{term.bound}:{term.day.isoformat()}"


def _render(value: str) -> str:
    """An operator's value: bare when it reads back unchanged, quoted otherwise."""
    if value and not value.startswith('"') and not any(char.isspace() for char in value):
        return value
    return _quote(value)


def _render_free(value: str, negated: bool) -> str:
    """A free word: as `_render`, but it must also not read back as a negation or as a known operator.

    Quoting only when needed keeps `describe` from ever being longer than the text it was parsed from, so a
    query within the length limit always describes within it too.
    """
    if not negated and len(value) > 1 and value.startswith("-"):  # "-" alone is not a negation
        return _quote(value)
    prefix = _OPERATOR_PREFIX.match(value)
    if prefix is not None and (prefix.group(1).lower() in _OPERATORS or value[prefix.end() :].startswith('"')):
        return _quote(value)
    return _render(value)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_mongo_filter(query: SearchQuery, account: str, mailbox: str | None) -> dict[str, Any]:
    """The filter selecting `query`'s messages of `account` (in `mailbox`, unless an `in:` term names one).

    The scope is top-level keys and every term sits inside `$and`, so no term can replace or loosen it.
    """
    if not account:
        raise ValueError("a search filter needs an account")  # a caller bug, never the user's input
    result: dict[str, Any] = {"account": account}
    if mailbox is not None and not any(isinstance(t, MailboxTerm) and not t.negated for t in query.terms):
        result["mailbox"] = mailbox
    clauses = [_clause(term) for term in query.terms]
    if clauses:  # MongoDB rejects an empty $and
        result["$and"] = clauses
    return result


def _clause(term: Term) -> dict[str, Any]:
    if isinstance(term, FlagTerm):
        # Both polarities have a direct form: an array field equals X when an element is X, and `$ne` holds
        # when no element is X (or the field is missing), which is exactly the complement.
        flag, present = _FLAG_MEANING[term.state]
        if term.negated:
            present = not present
        return {"flags": flag} if present else {"flags": {"$ne": flag}}
    alternatives = _alternatives(term)
    if term.negated:
        # $nor is the complement of "any alternative matches", also for documents lacking a field,
        # and unlike $not it needs no field name and works on $or-like lists.
        return {"$nor": alternatives}
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}


def _alternatives(term: TextTerm | AttachmentTerm | MailboxTerm | LabelTerm | DateTerm) -> list[dict[str, Any]]:
    """Conditions of which the (non-negated) term needs at least one."""
    if isinstance(term, TextTerm):
        pattern = re.escape(term.value)
        return [{field: {"$regex": pattern, "$options": "i"}} for field in _TEXT_FIELDS[term.field]]
    if isinstance(term, LabelTerm):
        # Anchored: label:work must not match the keyword "homework". On an array, any element may match.
        return [{"keywords": {"$regex": f"^{re.escape(term.keyword)}$", "$options": "i"}}]
    if isinstance(term, MailboxTerm):
        return [{"mailbox": term.name}]
    if isinstance(term, AttachmentTerm):
        return [{"hasAttachments": True}]
    seconds = int(datetime(term.day.year, term.day.month, term.day.day, tzinfo=UTC).timestamp())
    # A null or missing date never compares with a number in MongoDB, so undated messages match neither bound.
    return [{"date": {"$lt": seconds}}] if term.bound == "before" else [{"date": {"$gte": seconds}}]
