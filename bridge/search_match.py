"""A search's meaning in Python, over a message document and over its search digest. Pure: no I/O.

bridge.store_reads turns a `SearchQuery` into a MongoDB filter for the store; bridge.listing_order
answers the same searches from Redis without a scan of the store, and uses this module to do it:

- `TEXT_FIELDS`: the index fields each kind of text term looks in (the store's filter uses them too).
- `digest(doc)`: a message's searched text, lowercased, as a msgpack array in `SEARCHED` order; what
  the listing order keeps per message, so that its scan (a script in Redis) can test text terms.
- `scan_terms(query)`: the text terms as that scan takes them (negated, 1-based positions in
  `SEARCHED`, the lowercased needle), or None when the query has no text term that narrows it
  enough to be worth a scan (only flags, labels, dates, attachments: those change, or select most
  of a mailbox, and the store answers them).
- `scope(query, mailbox)`: the one mailbox a search looks in, or None if its `in:` terms name two.
- `selects(query, doc)`: whether the query selects the document, with `to_mongo_filter`'s meaning
  (bridge.search_query states it), case-insensitive by `str.lower` on both sides.

The digest only narrows: a message it lets through is read from the store and tested whole here, so
a flag or a label that changed since is judged on the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgpack

from bridge.search_query import (
    FLAGGED,
    SEEN,
    AttachmentTerm,
    FlagState,
    FlagTerm,
    LabelTerm,
    MailboxTerm,
    SearchQuery,
    Term,
    TextField,
    TextTerm,
)

# Which index fields each kind of text term looks in. The raw From header may still be RFC 2047 encoded, so
# the decoded name and the address are searched too; a field a document lacks simply does not match.
TEXT_FIELDS: Final[dict[TextField, tuple[str, ...]]] = {
    "from": ("from", "fromName", "fromAddress"),
    "to": ("to", "toAddress"),
    "subject": ("subject",),
    "text": ("subject", "snippet", "from", "fromName", "fromAddress", "to", "toAddress"),
}
SEARCHED: Final = TEXT_FIELDS["text"]  # every field a text term looks in: the digest's order
# (flag, whether the state means the flag is present)
FLAG_MEANING: Final[dict[FlagState, tuple[str, bool]]] = {
    "unread": (SEEN, False),
    "read": (SEEN, True),
    "starred": (FLAGGED, True),
}


def digest(doc: Mapping[str, Any]) -> bytes:
    """The document's searched fields, lowercased, in `SEARCHED` order ("" for one it lacks)."""
    return msgpack.packb([_text(doc.get(name)) for name in SEARCHED])


def _text(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


def scan_terms(query: SearchQuery) -> list[tuple[bool, str, str]] | None:
    """(negated, field positions as digits, needle) per text term, for the digest scan; None when
    the query has no non-negated text term and is not made of text terms alone."""
    texts = [t for t in query.terms if isinstance(t, TextTerm)]
    if not any(not t.negated for t in texts) and len(texts) < len(query.terms):
        return None
    if not texts:
        return None  # no term at all: that is a listing, not a search
    return [
        (t.negated, "".join(str(SEARCHED.index(f) + 1) for f in TEXT_FIELDS[t.field]), t.value.lower()) for t in texts
    ]


def scope(query: SearchQuery, mailbox: str) -> str | None:
    """The mailbox the search looks in: the one its non-negated `in:` terms name, else `mailbox`;
    None if they name more than one (nothing is in two mailboxes: the store answers that)."""
    named = {t.name for t in query.terms if isinstance(t, MailboxTerm) and not t.negated}
    if len(named) > 1:
        return None
    return named.pop() if named else mailbox


def selects(query: SearchQuery, doc: Mapping[str, Any]) -> bool:
    """Whether every term holds for the document (no terms: it does)."""
    return all(_holds(term, doc) != term.negated for term in query.terms)


def _holds(term: Term, doc: Mapping[str, Any]) -> bool:
    """The non-negated term's meaning (a negated one is its complement)."""
    if isinstance(term, TextTerm):
        needle = term.value.lower()
        values = [doc.get(name) for name in TEXT_FIELDS[term.field]]
        return any(isinstance(value, str) and needle in value.lower() for value in values)
    if isinstance(term, FlagTerm):
        flag, present = FLAG_MEANING[term.state]
        return (flag in _strings(doc.get("flags"))) == present
    if isinstance(term, LabelTerm):
        wanted = term.keyword.lower()
        return any(k.lower() == wanted for k in _strings(doc.get("keywords")))
    if isinstance(term, MailboxTerm):
        return doc.get("mailbox") == term.name
    if isinstance(term, AttachmentTerm):
        return doc.get("hasAttachments") is True
    when = doc.get("date")
    if isinstance(when, bool) or not isinstance(when, int | float):
        return False  # an undated message matches neither bound, as in MongoDB
    seconds = int(datetime(term.day.year, term.day.month, term.day.day, tzinfo=UTC).timestamp())
    return when < seconds if term.bound == "before" else when >= seconds


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []
