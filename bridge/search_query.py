"""Gmail-like search syntax for the message index: parse it and render it back (the store turns it into a query).

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

`SearchQuery` is what the store selects by (bridge.store.Store.listing, through bridge.store_reads'
`to_mongo_filter`): the terms' meaning above is the contract that filter keeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal, TypeAlias

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


_TEXT_OPERATORS: Final[dict[str, TextField]] = {"from": "from", "to": "to", "subject": "subject"}
_FLAG_STATES: Final[dict[str, FlagState]] = {"unread": "unread", "read": "read", "starred": "starred"}
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

