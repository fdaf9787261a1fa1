"""The metadata index on the stack's real store (FerretDB, or MongoDB when configured): events applied
in reads, the filter's summary meeting its delivery in either order, flags, expunge, rename, counts."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.events import (
    Attachment,
    Direction,
    FlagsClear,
    FlagsSet,
    MailboxRename,
    MessageExpunge,
    MessageNew,
    MtaAccepted,
)
from bridge.index_cache import IndexCache
from bridge.stack.launcher import StackInfo
from bridge.store import MailboxCounts, Store, message_doc_id


class Index:
    """The indexer as the bridge runs it: the store, and the index's state in Redis."""

    def __init__(self, store: Index, cache: IndexCache) -> None:
        self.store, self.cache, self.messages = store, cache, store.messages

    async def apply(self, events: list[Any]) -> list[MailboxCounts]:
        """The counts the read moved, without their versions (tests/test_index_cache.py)."""
        return [dataclasses.replace(c, version=0) for c in await self.cache.apply(events)]

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        counts = await self.cache.counts(account, mailbox)
        return counts.unread, counts.total

    async def recount(self, account: str, mailbox: str) -> tuple[int, int]:
        return await self.store.counts(account, mailbox)


@pytest.fixture
async def store(stack: StackInfo, redis_client: aioredis.Redis) -> AsyncIterator[Index]:
    store = Store(stack.mongodb_url, "mailbridge")
    await store.open()
    yield Index(store, IndexCache(redis_client, store, "mail"))
    await store.close()


def delivery(account: str, uid: int, message_id: str, *, mailbox: str = "INBOX") -> MessageNew:
    return MessageNew(
        key=f"dovecot:{account}:{mailbox}:{uid}",
        ts=1_700_000_000_000,
        account=account,
        mailbox=mailbox,
        uidvalidity=7,
        uid=uid,
        subject=f"message {uid}",
        message_id=message_id,
    )


def summary(account: str, message_id: str) -> MtaAccepted:
    return MtaAccepted(
        key=f"postfix:{message_id}",
        ts=1_700_000_000_000,
        queue_id="ABC",
        direction=Direction.INBOUND,
        mail_from="carol@outside.test",
        rcpt_to=(account,),
        size=12345,
        message_id=message_id,
        attachments=(Attachment(filename="report.pdf", content_type="application/pdf", size=10000),),
        category="promotions",
    )


async def doc(store: Index, account: str, uid: int, mailbox: str = "INBOX") -> dict[str, Any] | None:
    found: dict[str, Any] | None = await store.messages.find_one({"_id": message_doc_id(account, mailbox, 7, uid)})
    return found


@pytest.mark.parametrize("order", ["summary first", "delivery first", "same read"])
async def test_the_filter_summary_completes_its_delivery_in_any_order(store: Index, order: str) -> None:
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    message_id = f"<{uuid.uuid4().hex}@outside.test>"
    new, mta = delivery(account, 1, message_id), summary(account, message_id)
    if order == "summary first":
        await store.apply([mta])
        assert await store.apply([new]) == [MailboxCounts(account, "INBOX", 1, 1)]
    elif order == "delivery first":
        await store.apply([new])
        assert (await doc(store, account, 1) or {})["hasAttachments"] is False  # not known yet
        assert await store.apply([mta]) == []
    else:
        await store.apply([new, mta])
    found = await doc(store, account, 1)
    assert found is not None
    assert (found["subject"], found["hasAttachments"], found["size"], found["category"]) == (
        "message 1",
        True,
        12345,
        "promotions",
    )


async def test_flags_expunge_and_counts(store: Index) -> None:
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    news = [delivery(account, uid, f"<{uuid.uuid4().hex}@x>") for uid in (1, 2, 3)]
    assert await store.apply(news) == [MailboxCounts(account, "INBOX", 3, 3)]  # one count for the read
    assert await store.counts(account, "INBOX") == (3, 3)
    seen = FlagsSet(key="f1", ts=0, account=account, mailbox="INBOX", uidvalidity=7, uid=2, flags=("\\Seen",))
    star = FlagsSet(key="f2", ts=0, account=account, mailbox="INBOX", uidvalidity=7, uid=3, flags=("\\Flagged",))
    assert await store.apply([seen, star]) == [MailboxCounts(account, "INBOX", 2, 3)]  # the star moves none
    assert await store.counts(account, "INBOX") == (2, 3)
    assert await store.apply([star]) == []
    assert (await doc(store, account, 3) or {})["flags"] == ["\\Flagged"]
    gone = MessageExpunge(key="x1", ts=0, account=account, mailbox="INBOX", uidvalidity=7, uid=1)
    assert await store.apply([gone]) == [MailboxCounts(account, "INBOX", 1, 2)]
    assert await store.messages.find_one({"account": account, "uid": 1}) is None  # a tombstone, which no listing sees
    # Applying reads again (a retried read) moves no count, and the kept counts match a recount.
    assert await store.apply([*news, seen, star, gone]) == [MailboxCounts(account, "INBOX", 1, 2)]
    assert await store.recount(account, "INBOX") == (1, 2)
    unseen = FlagsClear(key="f3", ts=0, account=account, mailbox="INBOX", uidvalidity=7, uid=2, flags=("\\Seen",))
    assert await store.apply([unseen, unseen]) == [MailboxCounts(account, "INBOX", 2, 2)]


async def test_a_renamed_mailbox_keeps_its_messages(store: Index) -> None:
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    await store.apply([delivery(account, uid, f"<{uuid.uuid4().hex}@x>", mailbox="Old") for uid in (1, 2)])
    rename = MailboxRename(key="r1", ts=0, account=account, mailbox="New", old_mailbox="Old")
    await store.apply([rename])
    assert await store.counts(account, "Old") == (0, 0)
    assert await store.counts(account, "New") == (2, 2)
    moved = await doc(store, account, 2, "New")
    assert moved is not None and moved["mailbox"] == "New" and moved["subject"] == "message 2"
    await store.apply([rename])  # applied twice (a retried read): still two messages
    assert await store.counts(account, "New") == (2, 2)


async def test_one_mail_to_two_users_in_one_read(store: Index) -> None:
    """Two deliveries of one Message-ID and its summary in the same read: each delivery is
    completed, and the summary's record is written without a duplicate-key race."""
    message_id = f"<{uuid.uuid4().hex}@outside.test>"
    accounts = [f"{uuid.uuid4().hex[:8]}@example.test" for _ in range(2)]
    mta = dataclasses.replace(summary(accounts[0], message_id), rcpt_to=tuple(accounts))  # its recipients
    await store.apply([delivery(accounts[0], 1, message_id), delivery(accounts[1], 1, message_id), mta])
    for account in accounts:
        found = await doc(store, account, 1)
        assert found is not None and found["hasAttachments"] is True, found


async def test_counts_lost_from_redis_are_counted_again(store: Index, redis_client: aioredis.Redis) -> None:
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    await store.apply([delivery(account, uid, f"<{uuid.uuid4().hex}@x>") for uid in (1, 2)])
    await redis_client.delete(f"mail:index:unread:{account}", f"mail:index:total:{account}")
    assert await store.counts(account, "INBOX") == (2, 2)  # from the store
    await redis_client.delete(f"mail:index:unread:{account}", f"mail:index:total:{account}")
    seen = FlagsSet(key="s", ts=0, account=account, mailbox="INBOX", uidvalidity=7, uid=1, flags=("\\Seen",))
    assert await store.apply([seen]) == [MailboxCounts(account, "INBOX", 1, 2)]


async def test_a_backfilled_mailbox_is_counted_again_by_the_indexer(store: Index) -> None:
    """The backfill writes documents beside the indexer, then counts the mailbox again."""
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    assert await store.apply([delivery(account, 1, "<a@x>"), delivery(account, 2, "<b@x>")]) == [
        MailboxCounts(account, "INBOX", 2, 2)
    ]
    backfilled = {"account": account, "mailbox": "INBOX", "uidvalidity": 7, "uid": 3, "seen": True}
    await store.messages.insert_one({"_id": message_doc_id(account, "INBOX", 7, 3), **backfilled})
    recounted = await store.cache.recount(account, "INBOX")  # the backfill counts again
    assert (recounted.unread, recounted.total) == (2, 3)
    assert await store.apply([delivery(account, 4, "<c@x>")]) == [MailboxCounts(account, "INBOX", 3, 4)]


async def test_a_count_overtaken_by_the_backfill_is_not_kept(stack: StackInfo, redis_client: aioredis.Redis) -> None:
    """The indexer counts a mailbox while the backfill writes a document and counts again: the
    indexer's count, taken before that document, must not be kept (it would stay one short)."""

    class Interleaved(Store):
        """The real store; its first count lets the backfill run between the count and its write."""

        backfill: Any = None

        async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
            found = await super().counts(account, mailbox)
            if self.backfill is not None:
                backfill, self.backfill = self.backfill, None
                await backfill()
            return found

    store = Interleaved(stack.mongodb_url, "mailbridge")
    await store.open()
    cache = IndexCache(redis_client, store, "mail")
    account = f"{uuid.uuid4().hex[:8]}@example.test"

    async def backfill() -> None:
        doc = {"account": account, "mailbox": "INBOX", "uidvalidity": 7, "uid": 9, "seen": False}
        await store.messages.insert_one({"_id": message_doc_id(account, "INBOX", 7, 9), **doc})
        await cache.recount(account, "INBOX")

    try:
        store.backfill = backfill
        await cache.apply([delivery(account, 1, "<first@x>")])  # first touch: counted
        counts = await cache.counts(account, "INBOX")
        assert (counts.unread, counts.total) == (2, 2)
        (moved,) = await cache.apply([delivery(account, 2, "<second@x>")])
        assert (moved.unread, moved.total) == (3, 3)
    finally:
        await store.close()
