"""bridge.listing_order: each mailbox's listing order in Redis, against the session's Redis and the
real store. Its pages must be exactly the store's own listing (bridge.store_reads), whoever wrote
the documents and in whatever order, and an incomplete set must never be read as complete.

Each test has accounts of its own and a key prefix of its own; `Interleaved` lets a test act
between the store's answer and the order's next step, as another writer would.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge import listing_order
from bridge.events import FlagsSet, MailboxRename, MessageExpunge, MessageNew
from bridge.index_cache import IndexCache
from bridge.listing_order import ListingOrder
from bridge.search_query import parse_search
from bridge.stack.launcher import StackInfo
from bridge.store import Store
from bridge.store_writes import message_doc_id

pytestmark = pytest.mark.e2e

TS = 1_700_000_000_000  # ms


class Interleaved(Store):
    """The real store; `meanwhile`, if set, runs once after it read a mailbox's arrivals."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def arrivals(self, account: str, mailbox: str) -> list[tuple[int, int, int, bytes]]:
        found = await super().arrivals(account, mailbox)
        if self.meanwhile is not None:
            act, self.meanwhile = self.meanwhile, None
            await act()
        return found


@dataclasses.dataclass
class Rig:
    index: IndexCache
    order: ListingOrder
    store: Interleaved
    account: str
    redis: aioredis.Redis

    def delivered(self, uid: int, *, at: int = TS, mailbox: str = "INBOX") -> MessageNew:
        return MessageNew(
            key=f"dovecot:{self.account}:{mailbox}:{uid}",
            ts=at,
            account=self.account,
            mailbox=mailbox,
            uidvalidity=7,
            uid=uid,
            message_id=f"<{uid}@outside.test>",
            subject=f"Mail {uid}",
        )

    def expunged(self, uid: int) -> MessageExpunge:
        return MessageExpunge(key=f"x:{uid}", ts=TS, account=self.account, mailbox="INBOX", uidvalidity=7, uid=uid)

    async def pages(self, limit: int) -> list[list[int]]:
        """Every page of the INBOX's listing through the order, as UIDs."""
        out, cursor = [], None
        for _ in range(50):  # a ceiling: a cursor that does not move on would page for ever
            listed = await self.order.listing(self.account, "INBOX", limit, cursor)
            assert listed is not None
            docs, cursor = listed
            out.append([int(d["uid"]) for d in docs])
            if cursor is None:
                return out
        raise AssertionError(f"no last page after 50: {out[:6]}")

    async def store_pages(self, limit: int) -> list[list[int]]:
        """The same from the store's own listing (a scan)."""
        out, cursor = [], None
        for _ in range(50):
            docs, cursor = await self.store.listing(self.account, "INBOX", limit=limit, cursor=cursor)
            out.append([int(d["uid"]) for d in docs])
            if cursor is None:
                return out
        raise AssertionError(f"no last page after 50: {out[:6]}")


@pytest.fixture
async def rig(stack: StackInfo, redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    prefix = f"test-order-{uuid.uuid4().hex[:8]}"
    store = Interleaved(stack.mongodb_url, "mailbridge")
    await store.open()
    account = f"{uuid.uuid4().hex[:10]}@example.test"
    index = IndexCache(redis_client, store, prefix)
    try:
        yield Rig(index, index.order, store, account, redis_client)
    finally:
        await store.messages.delete_many({"account": account})
        await store.messages.delete_many({"_id": {"$regex": f"^\\[\"{account}\""}})  # tombstones
        await store.close()
        keys = [key async for key in redis_client.scan_iter(f"{prefix}:*")]
        if keys:
            await redis_client.delete(*keys)


async def test_pages_are_the_stores_own_listing_with_ties_in_arrival(rig: Rig) -> None:
    # 23 mails: runs of them arrived in the same second (ties sort by UID), one much later.
    events = [rig.delivered(uid, at=TS + (uid // 5) * 1000) for uid in range(1, 23)]
    events.append(rig.delivered(23, at=TS + 86_400_000))
    await rig.index.apply(events)
    assert await rig.pages(4) == await rig.store_pages(4)
    assert [uid for page in await rig.pages(4) for uid in page][:3] == [23, 22, 21]
    assert await rig.pages(100) == [list(range(23, 0, -1))]


async def test_an_incomplete_set_is_filled_from_the_store_before_it_is_read(rig: Rig) -> None:
    await rig.index.apply([rig.delivered(uid) for uid in (1, 2, 3)])
    # Written by the events, but never filled: the set is not complete, and says so.
    assert await rig.order.page(rig.account, "INBOX", 10, None) is None
    assert await rig.pages(2) == [[3, 2], [1]]
    # Lost (Redis evicted it, or restarted without persistence): the mark goes with it.
    await rig.redis.delete(*[key async for key in rig.redis.scan_iter(f"{rig.order.prefix}:order:*")])
    assert await rig.order.page(rig.account, "INBOX", 10, None) is None
    assert await rig.pages(10) == [[3, 2, 1]]


async def test_writes_after_the_fill_move_the_set_and_expunged_mail_leaves_it(rig: Rig) -> None:
    await rig.index.apply([rig.delivered(1), rig.delivered(2)])
    assert await rig.pages(10) == [[2, 1]]
    await rig.index.apply([rig.delivered(3, at=TS + 5000), rig.expunged(1)])
    assert await rig.pages(10) == [[3, 2]] == await rig.store_pages(10)
    # A read applied again (its acknowledgement was lost) adds nothing twice.
    await rig.index.apply([rig.delivered(3, at=TS + 5000)])
    assert await rig.pages(10) == [[3, 2]]


async def test_an_add_that_inserted_nothing_takes_the_arrival_its_document_holds(rig: Rig) -> None:
    """The backfill indexed the mail first, with IMAP's INTERNALDATE; the delivery's event comes
    after, with its own time: the document keeps the first, and so must the order."""
    await rig.index.apply([rig.delivered(1, at=TS + 60_000), rig.delivered(2, at=TS + 30_000)])
    assert await rig.pages(10) == [[1, 2]]
    doc: dict[str, Any] = {"account": rig.account, "mailbox": "INBOX", "uidvalidity": 7, "uid": 3}
    await rig.store.add_backfilled([{**doc, "arrived": TS // 1000, "seen": False, "flags": []}])
    await rig.index.apply([rig.delivered(3, at=TS + 90_000)])  # inserted nothing: the backfill's came first
    assert await rig.pages(10) == [[1, 2, 3]] == await rig.store_pages(10)


async def test_a_member_whose_document_went_is_skipped_and_removed(rig: Rig) -> None:
    await rig.index.apply([rig.delivered(uid, at=TS + uid * 1000) for uid in (1, 2, 3, 4)])
    assert await rig.pages(10) == [[4, 3, 2, 1]]
    # A fill that read mail 3 just before its expunge wrote the member back after the expunge.
    await rig.store.messages.replace_one({"_id": message_doc_id(rig.account, "INBOX", 7, 3)}, {"gone": TS, "at": TS})
    assert await rig.pages(2) == [[4, 2], [1]]
    key = f"{rig.order.prefix}:order:"
    remaining = [m async for k in rig.redis.scan_iter(f"{key}*") for m in await rig.redis.zrange(k, 0, -1)]
    assert b"0000000003:7" not in remaining


async def test_a_fill_that_read_the_store_before_a_rename_does_not_count(rig: Rig) -> None:
    await rig.index.apply([rig.delivered(1), rig.delivered(2)])

    async def renamed_meanwhile() -> None:
        rename = MailboxRename(key="r", ts=TS, account=rig.account, mailbox="Old", old_mailbox="INBOX")
        await rig.index.apply([rename])

    rig.store.meanwhile = renamed_meanwhile
    assert await rig.order.fill(rig.account, "INBOX") is False
    assert await rig.order.page(rig.account, "INBOX", 10, None) is None  # still not complete
    assert await rig.order.listing(rig.account, "INBOX", 10, None) == ([], None)  # filled afresh: empty now
    assert [d["uid"] for d in (await rig.order.listing(rig.account, "Old", 10, None) or ([], None))[0]] == [2, 1]


# -- searches answered from the order and its digests


def _mail(rig: Rig, uid: int, **fields: Any) -> MessageNew:
    return dataclasses.replace(rig.delivered(uid, at=TS + uid * 1000), **fields)


async def _searched(rig: Rig, text: str, limit: int, *, store: bool = False) -> list[list[int]]:
    """Every page of a search in the INBOX, as UIDs: through the order, or from the store's scan."""
    query = parse_search(text)
    out, cursor = [], None
    for _ in range(50):
        if store:
            docs, cursor = await rig.store.listing(rig.account, "INBOX", limit=limit, cursor=cursor, search=query)
        else:
            found = await rig.order.search(rig.account, "INBOX", query, limit, cursor)
            assert found is not None, text
            docs, cursor = found
        out.append([int(d["uid"]) for d in docs])
        if cursor is None:
            return out
    raise AssertionError(f"no last page after 50: {out[:6]}")


async def test_searches_through_the_order_select_and_page_exactly_as_the_store(rig: Rig) -> None:
    mails = [
        _mail(rig, 1, subject="Quarterly budget", from_="Ann <ann@outside.test>", from_address="ann@outside.test"),
        _mail(rig, 2, subject="Invoice 42", snippet="please pay the budget", to="Team <team@example.test>"),
        _mail(rig, 3, subject="=?utf-8?q?Caf=C3=A9?=", from_name="Zoë Ünal", from_address="zoe@outside.test"),
        _mail(rig, 4, subject="INVOICE again", keywords=("work",), flags=("\\Seen",)),
        _mail(rig, 5, subject="lunch", snippet="invoice attached", to_address="bob@example.test"),
        _mail(rig, 6, subject="Über budget", flags=("\\Flagged",)),
    ]
    mails += [_mail(rig, uid, subject=f"Filler {uid}") for uid in range(7, 20)]
    await rig.index.apply(mails)
    # Every text field, negation, case (also beyond ASCII), flags and labels with text, in: the scope.
    for text in [
        "invoice", "INVOICE", "subject:invoice", "budget", "-budget", "budget -subject:budget", "from:ann",
        "from:zoë", "from:ÜNAL", "to:team", "to:bob@", "über", "invoice is:unread", "invoice -is:read",
        "budget is:starred", "invoice label:WORK", "invoice -label:work", "in:INBOX lunch", "-in:INBOX lunch",
        "filler -filler", "filler", "zzqx", "-zzqx", "invoice before:2023-11-15",
    ]:  # fmt: skip
        assert await _searched(rig, text, 2) == await _searched(rig, text, 2, store=True), text
    assert await _searched(rig, "invoice", 10) == [[5, 4, 2]]


async def test_flags_and_labels_are_judged_on_the_document_not_the_digest(rig: Rig) -> None:
    await rig.index.apply([_mail(rig, 1, subject="Invoice"), _mail(rig, 2, subject="Invoice")])
    assert await _searched(rig, "invoice is:unread", 10) == [[2, 1]]
    seen = FlagsSet(key="f", ts=TS, account=rig.account, mailbox="INBOX", uidvalidity=7, uid=2, flags=("\\Seen",))
    await rig.index.apply([seen])
    assert await _searched(rig, "invoice is:unread", 10) == [[1]]
    assert await _searched(rig, "invoice is:unread", 10, store=True) == [[1]]


async def test_a_message_without_a_digest_is_tested_on_its_document(rig: Rig) -> None:
    await rig.index.apply([_mail(rig, uid, subject="Report" if uid % 2 else "Other") for uid in range(1, 7)])
    assert await _searched(rig, "report", 10) == [[5, 3, 1]]
    digests = [k async for k in rig.redis.scan_iter(f"{rig.order.prefix}:search:*")]
    assert len(digests) == 1
    await rig.redis.hdel(digests[0], "0000000003:7", "0000000004:7")
    assert await _searched(rig, "report", 10) == [[5, 3, 1]]
    assert await _searched(rig, "-report", 10) == [[6, 4, 2]]


async def test_an_order_built_without_digests_is_filled_before_a_search(rig: Rig) -> None:
    """A set built before digests were kept (an upgrade): a search fills them, and finds everything."""
    await rig.index.apply([_mail(rig, uid, subject=f"Note {uid}") for uid in range(1, 5)])
    assert await rig.pages(10) == [[4, 3, 2, 1]]
    await rig.redis.delete(*[k async for k in rig.redis.scan_iter(f"{rig.order.prefix}:search:*")])
    assert await rig.order.page(rig.account, "INBOX", 10, None, parse_search("note")) is None
    assert await _searched(rig, "note", 3) == [[4, 3, 2], [1]]


async def test_a_scan_reads_on_past_its_budget_and_expunged_mail_leaves_the_digests(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing_order, "_SCAN_BUDGET", 3)  # each call looks at 3 members
    await rig.index.apply([_mail(rig, uid, subject="Needle" if uid in (2, 11) else "Hay") for uid in range(1, 15)])
    assert await _searched(rig, "needle", 1) == [[11], [2]]
    await rig.index.apply([rig.expunged(11)])
    assert await _searched(rig, "needle", 1) == [[2]]
    digests = [k async for k in rig.redis.scan_iter(f"{rig.order.prefix}:search:*")]
    assert not await rig.redis.hexists(digests[0], "0000000011:7")


async def test_searches_the_order_cannot_narrow_are_left_to_the_store(rig: Rig) -> None:
    await rig.index.apply([_mail(rig, 1, subject="Invoice")])
    for text in ["is:unread", "label:work", "-invoice is:unread", "in:INBOX in:Sent invoice"]:
        assert await rig.order.search(rig.account, "INBOX", parse_search(text), 10, None) is None, text
