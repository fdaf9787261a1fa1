"""Search syntax for the mailbox index: parse it, and turn it into a MongoDB filter. Pure, no I/O.

Syntax (Gmail-like): `from:` `to:` `subject:` `in:` (mailbox) `label:` (keyword) `has:attachment`
`is:unread|read|starred` `before:` `after:` (YYYY-MM-DD or YYYY/MM/DD, UTC; `before:` excludes
that day, `after:` includes it), a leading `-` negates a term, `"quoted values"` may hold spaces,
and free words must each match subject, preview, from or to. Operators are case-insensitive; an
unknown `word:value` is free text. Matching is case-insensitive substring matching with escaped
regular expressions (user text is never a pattern), because FerretDB has no `$text` search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.errors import InvalidInput

MAX_QUERY_CHARS = 1000
MAX_TERMS = 32
FIELD_OPERATORS = {"from": ("from", "fromAddress", "fromName"), "to": ("to", "toAddress"), "subject": ("subject",)}
TEXT_FIELDS = ("subject", "snippet", "from", "fromAddress", "fromName", "to", "toAddress")
OPERATORS = {*FIELD_OPERATORS, "in", "label", "has", "is", "before", "after"}
IS_VALUES = {"unread", "read", "starred"}
_TOKEN = re.compile(r'\s*(-?)(?:([A-Za-z]+):)?("(?:\\.|[^"\\])*"?|[^\s"]+)')


@dataclass(frozen=True, slots=True)
class Term:
    operator: str  # "" for free text
    value: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    terms: tuple[Term, ...]


def _unquote(raw: str) -> str:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"') or (raw.endswith('\\"') and not raw.endswith('\\\\"')):
            raise InvalidInput("unterminated quote in search")
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def _date(value: str, operator: str) -> int:
    for pattern in ("%Y-%m-%d", "%Y/%m/%d"):
        try:
            return int(datetime.strptime(value, pattern).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
    raise InvalidInput(f"{operator}: expects a date like 2026-11-01, got {value!r}")


def parse_search(text: str) -> SearchQuery:
    if not isinstance(text, str):
        raise InvalidInput("search must be text")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"search longer than {MAX_QUERY_CHARS} characters")
    terms: list[Term] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise InvalidInput("unterminated quote in search")
        position = match.end()
        negated, operator, raw = match.group(1) == "-", (match.group(2) or "").lower(), match.group(3)
        if operator and operator not in OPERATORS:
            raw, operator = f"{match.group(2)}:{raw}", ""
        value = _unquote(raw)
        if operator and not value:
            raise InvalidInput(f"{operator}: needs a value")
        if not operator and not value:
            continue
        if operator == "is" and value.lower() not in IS_VALUES:
            raise InvalidInput(f"is: takes {', '.join(sorted(IS_VALUES))}")
        if operator == "has" and value.lower() not in {"attachment", "attachments"}:
            raise InvalidInput("has: takes attachment")
        if operator in {"before", "after"}:
            _date(value, operator)
        if operator in {"is", "has"}:
            value = value.lower()
        terms.append(Term(operator, value, negated))
        if len(terms) > MAX_TERMS:
            raise InvalidInput(f"at most {MAX_TERMS} search terms")
    return SearchQuery(tuple(terms))


def describe(query: SearchQuery) -> str:
    """Canonical text of a query; `parse_search(describe(q)) == q`."""
    parts = []
    for term in query.terms:
        value = term.value
        if not value or re.search(r'[\s"\\]', value) or (not term.operator and ":" in value) or value.startswith("-"):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        prefix = ("-" if term.negated else "") + (f"{term.operator}:" if term.operator else "")
        parts.append(prefix + value)
    return " ".join(parts)


def _contains(field: str, value: str) -> dict[str, Any]:
    return {field: {"$regex": re.escape(value), "$options": "i"}}


def _condition(term: Term) -> dict[str, Any]:
    if term.operator == "":
        return {"$or": [_contains(f, term.value) for f in TEXT_FIELDS]}
    if term.operator in FIELD_OPERATORS:
        return {"$or": [_contains(f, term.value) for f in FIELD_OPERATORS[term.operator]]}
    if term.operator == "in":
        return {"mailbox": term.value}
    if term.operator == "label":
        return {"keywords": term.value}
    if term.operator == "has":
        return {"hasAttachments": True}
    if term.operator == "is":
        states: dict[str, dict[str, Any]] = {
            "unread": {"seen": False},
            "read": {"seen": True},
            "starred": {"flags": "\\Flagged"},
        }
        return states[term.value]
    seconds = _date(term.value, term.operator)
    return {"date": {"$lt": seconds}} if term.operator == "before" else {"date": {"$gte": seconds}}


def to_mongo_filter(query: SearchQuery, account: str, mailbox: str | None) -> dict[str, Any]:
    """A filter always scoped to `account`; to `mailbox` too, unless an `in:` term names one."""
    clauses: list[dict[str, Any]] = [{"account": account}]
    if mailbox is not None and not any(t.operator == "in" and not t.negated for t in query.terms):
        clauses.append({"mailbox": mailbox})
    for term in query.terms:
        condition = _condition(term)
        clauses.append({"$nor": [condition]} if term.negated else condition)
    return {"$and": clauses}
