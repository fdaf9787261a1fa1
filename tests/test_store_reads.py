"""The store's methods for everything but the event stream, on the stack's real store: listings with
their cursor paging, quick filters and search, the backfill's writes and marks, contacts, settings;
and every method answering Unavailable (not a pymongo error) when the store does not answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest

from bridge.errors import InvalidInput, Unavailable
from bridge.events import MessageExpunge, MessageNew
from bridge.search_query import parse_search
from bridge.store import BULK_CHUNK, Store
from tests.common import free_port

pytestmark = pytest.mark.e2e


def fresh_account() -> str:
    return f"reads-{uuid.uuid4().hex[:8]}@example.test"


def doc(
    account: str, uid: int, *, mailbox: str = "INBOX", date: int = 0, arrived: int = 0, **fields: Any
) -> dict[str, Any]:
    """An index document as the backfill writes it (bridge.backfill.document)."""
    return {
        "account": account,
        "mailbox": mailbox,
        "uidvalidity": 7,
        "uid": uid,
        "subject": f"mail {uid}",
        "date": date or 1_700_000_000 + uid,
        "arrived": arrived or date or 1_700_000_000 + uid,
        "flags": [],
        "keywords": [],
        "seen": False,
        **fields,
    }


async def all_pages(store: Store, account: str, mailbox: str, limit: int, **kwargs: Any) -> list[list[int]]:
    """The UIDs of each page, following the cursors to the end."""
    pages, cursor = [], None
    while True:
        docs, cursor = await store.listing(account, mailbox, limit=limit, cursor=cursor, **kwargs)
        pages.append([d["uid"] for d in docs])
        if cursor is None:
            return pages


async def test_listing_pages_newest_first_with_filters_and_search(store: Store) -> None:
    account = fresh_account()
    same_date = 1_700_000_100  # ties are ordered by UID
    await store.add_backfilled(
        [
            doc(account, 1, seen=True),
            doc(account, 2, flags=["\\Flagged"]),
            doc(account, 3, date=same_date),
            doc(account, 4, date=same_date, seen=True),
            doc(account, 5, subject="Lunch on Friday"),
            doc(account, 6, mailbox="Archive", subject="Lunch archived"),
            doc(fresh_account(), 7),  # another account's mail is never listed
        ]
    )
    assert await all_pages(store, account, "INBOX", 2) == [[4, 3], [5, 2], [1]]
    assert await all_pages(store, account, "INBOX", 5) == [[4, 3, 5, 2, 1]]
    assert await all_pages(store, account, "INBOX", 2, filters=["unread"]) == [[3, 5], [2]]
    assert await all_pages(store, account, "INBOX", 9, filters=["unread", "starred"]) == [[2]]
    # A search is scoped to the account and the mailbox, unless it names one (in:).
    assert await all_pages(store, account, "INBOX", 9, search=parse_search("lunch")) == [[5]]
    assert await all_pages(store, account, "INBOX", 9, search=parse_search("lunch in:Archive")) == [[6]]
    assert await all_pages(store, account, "INBOX", 9, search=parse_search("lunch -in:INBOX")) == [[]]
    with pytest.raises(InvalidInput, match="unknown filter"):
        await store.listing(account, "INBOX", limit=9, cursor=None, filters=["$where"])
    with pytest.raises(InvalidInput, match="invalid cursor"):
        await store.listing(account, "INBOX", limit=9, cursor="bm90IGEgY3Vyc29y")


async def test_listing_is_by_arrival_not_by_the_date_header(store: Store) -> None:
    """A mail dated long ago that arrived last is listed first, and one dated in the future that
    arrived first is listed last, page by page."""
    account = fresh_account()
    await store.add_backfilled(
        [
            doc(account, 1, date=1_900_000_000, arrived=1_700_000_001),  # claims a date years ahead
            doc(account, 2, date=1_700_000_002, arrived=1_700_000_002),
            doc(account, 3, date=1_000_000_000, arrived=1_700_000_003),  # dated long ago, came last
        ]
    )
    assert await all_pages(store, account, "INBOX", 1) == [[3], [2], [1]]


async def test_backfilled_documents_never_replace_what_the_events_wrote(store: Store) -> None:
    """The backfill adds only what is not indexed: a delivery the events wrote keeps its state, and an
    expunged message stays a tombstone (no listing sees it); more than BULK_CHUNK documents go in
    several writes, and writing them again changes nothing."""
    account = fresh_account()
    new = MessageNew(
        key="k", ts=1_700_000_000_000, account=account, mailbox="INBOX", uidvalidity=7, uid=1, subject="from events"
    )
    gone = MessageExpunge(key="g", ts=1_700_000_000_000, account=account, mailbox="INBOX", uidvalidity=7, uid=2)
    await store.apply([new, gone], {}, [])
    docs = [doc(account, uid, subject="from IMAP") for uid in range(1, BULK_CHUNK + 10)]
    for _ in range(2):
        await store.add_backfilled(docs)
        listed, _cursor = await store.listing(account, "INBOX", limit=200, cursor=None)
        assert len(listed) == len(docs) - 1
        subjects = {d["uid"]: d["subject"] for d in listed}
        assert subjects[1] == "from events"
        assert 2 not in subjects
        assert subjects[3] == "from IMAP"
        assert await store.counts(account, "INBOX") == (len(docs) - 1, len(docs) - 1)


async def test_contacts_come_from_senders_and_sent_recipients(store: Store) -> None:
    account = fresh_account()
    await store.add_backfilled(
        [
            doc(account, 1, fromName="Carol Danvers", fromAddress="carol@outside.test", date=1_700_000_001),
            doc(account, 2, fromName="", fromAddress="dave@outside.test", date=1_700_000_002),
            doc(account, 3, mailbox="Junk", fromName="Spam", fromAddress="spam@outside.test"),
            doc(account, 4, mailbox="Sent", to="Erin <erin@outside.test>, frank@outside.test", date=1_700_000_004),
        ]
    )
    everyone = await store.senders(account, "", skip=("Sent", "Junk"), limit=10)
    carol, dave = (1_700_000_001, "Carol Danvers", "carol@outside.test"), (1_700_000_002, "", "dave@outside.test")
    assert everyone == [dave, carol]  # newest first
    assert await store.senders(account, "dan", skip=("Junk",), limit=10) == [carol]  # a word of the name
    assert await store.senders(account, "dav", skip=("Junk",), limit=10) == [dave]  # an address's start
    assert await store.senders(account, ".*", skip=("Junk",), limit=10) == []  # text, never a pattern
    assert await store.senders(account, "", skip=("Sent", "Junk"), limit=1) == [dave]
    assert await store.recipients(account, "Sent", limit=10) == [
        (1_700_000_004, "Erin <erin@outside.test>, frank@outside.test")
    ]


async def test_settings_and_the_backfills_mark_are_per_account(store: Store) -> None:
    account, other = fresh_account(), fresh_account()
    assert await store.account_settings(account) == {}
    await store.update_settings(account, {"signature": "-- A", "sound": True})
    await store.update_settings(account, {"sound": False})
    assert await store.account_settings(account) == {"signature": "-- A", "sound": False}
    assert await store.account_settings(other) == {}
    assert not await store.is_indexed(account)
    await store.mark_indexed(account)
    assert await store.is_indexed(account)
    assert not await store.is_indexed(other)


async def test_a_store_that_does_not_answer_is_unavailable() -> None:
    """Every method maps the store's errors at its edge: callers see Unavailable (a 503), never
    pymongo's errors."""
    store = Store(f"mongodb://127.0.0.1:{free_port()}/", "mailbridge")
    account = fresh_account()
    calls: list[Awaitable[object]] = [
        store.ping(),
        store.describe(),
        store.apply([], {}, [("x", {"hasAttachments": False, "size": 1, "category": "primary"})]),
        store.add_backfilled([doc(account, 1)]),
        store.counts(account, "INBOX"),
        store.listing(account, "INBOX", limit=1, cursor=None),
        store.senders(account, "", skip=(), limit=1),
        store.recipients(account, "Sent", limit=1),
        store.account_settings(account),
        store.update_settings(account, {"sound": True}),
        store.is_indexed(account),
        store.mark_indexed(account),
        store.prune(),
    ]
    try:
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await store.close()
    for outcome in outcomes:
        assert isinstance(outcome, Unavailable), repr(outcome)
