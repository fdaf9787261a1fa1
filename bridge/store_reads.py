"""Reads of the message index (listings and search with their paging, counts, contacts) and the
small per-account records (settings, whether the backfill indexed an account).

Part of the store (bridge.store is its only entry point, and maps the store's errors): the queries
are MongoDB's, and nothing outside the store builds one. A search (bridge.search_query's
`SearchQuery`) becomes a filter here, `to_mongo_filter(query, account, mailbox)`, whose top-level
`account` key can never be dropped or overridden by a term; it is also scoped to `mailbox` unless a
(non-negated) `in:` term names one. Text and labels match through a case-insensitive `$regex` of
`re.escape`d user text, because the store may be FerretDB, which has no `$text` search, and user
text must never act as a pattern; `in:` compares for equality. User text is only ever a string
value in the filter, never a key or an operator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bridge.errors import InvalidInput
from bridge.search_match import FLAG_MEANING, SEARCHED, TEXT_FIELDS, digest
from bridge.search_query import (
    FLAGGED,
    AttachmentTerm,
    DateTerm,
    FlagTerm,
    LabelTerm,
    MailboxTerm,
    SearchQuery,
    Term,
    TextTerm,
)
from bridge.store_flags import Documents

# The quick filters a listing may combine (by name), on top of its mailbox or search.
FILTERS: dict[str, dict[str, Any]] = {
    "unread": {"seen": False},
    "starred": {"flags": FLAGGED},
    "attachments": {"hasAttachments": True},
    "primary": {"category": {"$nin": ["social", "promotions"]}},
    "social": {"category": "social"},
    "promotions": {"category": "promotions"},
}
# Listings and contacts: latest arrival first, ties by UID (the order the cursor resumes in). By
# arrival, as IMAP's INTERNALDATE: a Date header is the sender's claim (a day late, or years ahead),
# and a mail that came last must show first, as Gmail and Fastmail show it.
NEWEST = [("arrived", -1), ("uid", -1)]

_INT64 = 1 << 63


async def counts(messages: Documents, account: str, mailbox: str) -> tuple[int, int]:
    """(unread, total) of one mailbox, counted from its documents (a scan on FerretDB: the kept
    counts are in bridge.index_cache)."""
    total = await messages.count_documents({"account": account, "mailbox": mailbox})
    unread = await messages.count_documents({"account": account, "mailbox": mailbox, "seen": False})
    return unread, total


# The Inbox's category tabs (bridge.mime_summary's categories); a mail of none is in Primary.
CATEGORIES = ("primary", "social", "promotions")


async def unread_by_category(messages: Documents, account: str, mailbox: str) -> dict[str, int]:
    """Unread messages of a mailbox per category tab: one read of the unread documents' category
    alone (unread mail is few; three counts would be three scans on FerretDB)."""
    found = dict.fromkeys(CATEGORIES, 0)
    async for doc in messages.find({"account": account, "mailbox": mailbox, "seen": False}, {"category": 1, "_id": 0}):
        category = doc.get("category")
        found[category if category in found else "primary"] += 1
    return found


async def listing(
    messages: Documents,
    account: str,
    mailbox: str,
    *,
    limit: int,
    cursor: str | None,
    filters: Sequence[str],
    search: SearchQuery | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the mailbox (or, with a search, of what it selects), newest first, and the cursor
    of the next page (None on the last)."""
    # A search filter is scoped to the account (and mailbox, unless it names one with in:).
    match: dict[str, Any] = (
        {"$and": [{"account": account}, to_mongo_filter(search, account, mailbox)]}
        if search is not None
        else {"account": account, "mailbox": mailbox}
    )
    for name in filters:
        if name not in FILTERS:
            raise InvalidInput(f"unknown filter {name!r} (known: {', '.join(FILTERS)})")
        match.update(FILTERS[name])
    if cursor:
        arrived, uid = decode_cursor(cursor)
        after = {"$or": [{"arrived": {"$lt": arrived}}, {"arrived": arrived, "uid": {"$lt": uid}}]}
        match = {"$and": [match, after]}
    docs = await messages.find(match).sort(NEWEST).limit(limit + 1).to_list()
    page = docs[:limit]
    return page, encode_cursor(page[-1]) if len(docs) > limit else None


def arrival(doc: Mapping[str, Any]) -> int:
    """A document's arrival (Unix seconds) as an integer: a stored time of another type counts as 0."""
    arrived = doc.get("arrived")
    if isinstance(arrived, float) and math.isfinite(arrived):
        return int(arrived)
    return arrived if isinstance(arrived, int) and not isinstance(arrived, bool) else 0


def encode_cursor(doc: Mapping[str, Any]) -> str:
    """Where the next page starts: after this document, in the listing's order (arrival, then UID)."""
    # decode_cursor takes integers only: a stored time of another type must not make page 2 a 400.
    return base64.urlsafe_b64encode(json.dumps([arrival(doc), doc["uid"]]).encode()).decode()


async def documents(messages: Documents, ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Documents by `_id`, one query each, side by side (the client's pool bounds how many at once):
    FerretDB answers `{_id: <string>}` from an index, and `$in` by reading every document."""
    return list(await asyncio.gather(*(messages.find_one({"_id": doc_id}) for doc_id in ids)))


async def arrivals(messages: Documents, account: str, mailbox: str) -> list[tuple[int, int, int, bytes]]:
    """(UIDVALIDITY, UID, arrival, search digest) of every message of the mailbox (bridge.listing_order
    fills its order from them; bridge.search_match makes the digest)."""
    fields = {"uidvalidity": 1, "uid": 1, "arrived": 1, **dict.fromkeys(SEARCHED, 1)}
    cursor = messages.find({"account": account, "mailbox": mailbox}, fields)
    return [(int(d["uidvalidity"]), int(d["uid"]), arrival(d), digest(d)) async for d in cursor]


def decode_cursor(value: str) -> tuple[int, int]:
    """(arrival, UID) of a cursor `encode_cursor` made; InvalidInput for anything else."""
    try:
        date, uid = json.loads(base64.urlsafe_b64decode(value.encode()))
        if not (isinstance(date, int) and isinstance(uid, int)):
            raise TypeError
        if not (-_INT64 <= date < _INT64 and -_INT64 <= uid < _INT64):
            raise ValueError  # BSON holds no larger integer: the store would refuse the query
    except (ValueError, TypeError):
        raise InvalidInput("invalid cursor") from None
    return date, uid


async def senders(
    messages: Documents, account: str, needle: str, *, skip: Sequence[str], limit: int
) -> list[tuple[int, str, str]]:
    """(date, display name, address) of the senders of the account's newest mail outside the `skip`
    mailboxes, at most `limit` mails; with a `needle` (lower case), only those whose address, or a
    word of whose name, starts with it (case-insensitive)."""
    query: dict[str, Any] = {"account": account, "mailbox": {"$nin": list(skip)}}
    if needle:
        # Narrowed here, so the bound counts matches, not mail (the caller tests them exactly).
        escaped = re.escape(needle)
        query["$or"] = [
            {"fromAddress": {"$regex": f"^{escaped}", "$options": "i"}},
            {"fromName": {"$regex": rf"(^|\s){escaped}", "$options": "i"}},
        ]
    fields = {"fromAddress": 1, "fromName": 1, "date": 1, "_id": 0}
    docs = await messages.find(query, fields).sort(NEWEST).limit(limit).to_list()
    return [(int(d.get("date") or 0), str(d.get("fromName") or ""), str(d.get("fromAddress") or "")) for d in docs]


async def recipients(messages: Documents, account: str, mailbox: str, *, limit: int) -> list[tuple[int, str]]:
    """(date, To header as stored: maybe RFC 2047) of the account's newest mail in `mailbox` (its
    Sent), at most `limit`."""
    fields = {"to": 1, "date": 1, "_id": 0}
    docs = await messages.find({"account": account, "mailbox": mailbox}, fields).sort(NEWEST).limit(limit).to_list()
    return [(int(d.get("date") or 0), str(d.get("to") or "")) for d in docs]


async def account_settings(settings: Documents, account: str) -> dict[str, Any]:
    """The account's stored settings ({} if none)."""
    doc = await settings.find_one({"account": account}) or {}
    found: dict[str, Any] = doc.get("settings", {})
    return found


async def update_settings(settings: Documents, account: str, values: Mapping[str, Any]) -> None:
    """Store these settings of the account, keeping the others."""
    fields = {f"settings.{name}": value for name, value in values.items()}
    await settings.update_one({"account": account}, {"$set": fields}, upsert=True)


async def is_indexed(accounts: Documents, account: str) -> bool:
    """Whether the backfill indexed the account's mail already."""
    return await accounts.find_one({"account": account, "indexed": True}) is not None


async def mark_indexed(accounts: Documents, account: str) -> None:
    await accounts.update_one(
        {"account": account}, {"$set": {"indexed": True, "indexedAt": int(time.time())}}, upsert=True
    )


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
        flag, present = FLAG_MEANING[term.state]
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
        return [{field: {"$regex": pattern, "$options": "i"}} for field in TEXT_FIELDS[term.field]]
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
