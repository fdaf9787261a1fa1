"""bridge.index_cache: whose mail a filter summary describes, and, against the session's Redis, a
summary meeting its delivery in either order and the kept unread and total counts.

The store here is a stand-in that only counts (`Counted`): what is under test is what the cache keeps
in Redis and when it asks the store.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from bridge.events import Attachment, Direction, MessageExpunge, MessageNew, MtaAccepted
from bridge.index_cache import IndexCache, _with_believable_date, summary_accounts, summary_facts
from bridge.store import MailboxCounts, Store, message_doc_id

TS = 1_700_000_000_000  # ms
ALICE, BOB = "alice@example.test", "bob@example.test"


def accepted(
    rcpt_to: tuple[str, ...],
    message_id: str = "<m@outside.test>",
    *,
    sasl_user: str = "",
    size: int = 1234,
    category: str = "primary",
    attachments: tuple[Attachment, ...] = (),
) -> MtaAccepted:
    return MtaAccepted(
        key=f"k-{uuid.uuid4().hex}",
        ts=TS,
        queue_id="Q1",
        direction=Direction.OUTBOUND if sasl_user else Direction.INBOUND,
        mail_from="carol@outside.test",
        rcpt_to=rcpt_to,
        size=size,
        message_id=message_id,
        sasl_user=sasl_user,
        attachments=attachments,
        category=category,
    )


def delivered(account: str, uid: int, message_id: str = "<m@outside.test>", **fields: object) -> MessageNew:
    return MessageNew(
        key=f"dovecot:{account}:{uid}:{message_id}",
        ts=TS,
        account=account,
        mailbox="INBOX",
        uidvalidity=1,
        uid=uid,
        message_id=message_id,
        **fields,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------ pure


def test_a_summary_describes_each_recipients_mail_and_the_submitters_sent_copy() -> None:
    assert summary_accounts(accepted(("Alice@Example.TEST", "bob@example.test", ""))) == {ALICE, BOB}
    assert summary_accounts(accepted((BOB,), sasl_user="Alice@example.test")) == {ALICE, BOB}
    assert summary_accounts(accepted(())) == set()


def test_a_summary_keeps_the_facts_a_listing_shows() -> None:
    pdf = Attachment(filename="a.pdf", content_type="application/pdf", size=10)
    assert summary_facts(accepted((ALICE,), size=99, category="social", attachments=(pdf,))) == {
        "hasAttachments": True,
        "size": 99,
        "category": "social",
    }
    assert summary_facts(accepted((ALICE,)))["hasAttachments"] is False


def test_a_delivery_keeps_only_a_date_it_can_have_had() -> None:
    arrived = TS // 1000
    kept = delivered(ALICE, 1, date=arrived - 86400)
    assert _with_believable_date(kept) is kept
    for date in (-1, arrived + 2 * 3600):  # before 1970, or more than an hour after it arrived
        assert _with_believable_date(delivered(ALICE, 1, date=date)) == dataclasses.replace(kept, date=None)
    other = MessageExpunge(key="k", ts=TS, account=ALICE, mailbox="INBOX", uidvalidity=1, uid=1)
    assert _with_believable_date(other) is other


# --------------------------------------------------------------------------- against the real Redis


class Counted:
    """Stands for the store: the counts it would find now, and how often it was asked."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], tuple[int, int]] = {}
        self.asked = 0

    async def counts(self, account: str, mailbox: str) -> tuple[int, int]:
        self.asked += 1
        return self.found.get((account, mailbox), (0, 0))


@pytest.fixture
async def cache(redis_client: aioredis.Redis) -> AsyncIterator[tuple[IndexCache, Counted]]:
    """A cache under a prefix of its own in the session's Redis (removed afterwards)."""
    prefix = f"test-cache-{uuid.uuid4().hex[:8]}"
    store = Counted()
    yield IndexCache(redis_client, cast(Store, store), prefix), store
    keys = [key async for key in redis_client.scan_iter(f"{prefix}:*")]
    if keys:
        await redis_client.delete(*keys)


async def test_a_delivery_before_its_summary_waits_for_it_and_one_after_finds_it(
    cache: tuple[IndexCache, Counted],
) -> None:
    index, _store = cache
    first = delivered(ALICE, 1)
    facts, early = await index.meet([first])
    assert (facts, early) == ({}, [])  # nothing known yet: the delivery's document waits
    summary = accepted((ALICE,), size=777, category="promotions")
    facts, early = await index.meet([summary])
    assert facts == {}
    assert early == [(message_doc_id(ALICE, "INBOX", 1, 1), summary_facts(summary))]
    # The same Message-ID delivered again (a second copy): its facts are known at once.
    facts, early = await index.meet([delivered(ALICE, 2)])
    assert (facts, early) == ({0: {"hasAttachments": False, "size": 777, "category": "promotions"}}, [])
    # Whoever waited was told once: a repeated summary finds no one waiting.
    assert await index.meet([summary]) == ({}, [])


async def test_within_one_read_the_summary_and_its_delivery_meet_in_either_order(
    cache: tuple[IndexCache, Counted],
) -> None:
    index, _store = cache
    summary = accepted((ALICE,), "<one@outside.test>", size=5)
    facts, early = await index.meet([summary, delivered(ALICE, 1, "<one@outside.test>")])
    assert (facts, early) == ({1: summary_facts(summary)}, [])
    summary = accepted((ALICE,), "<two@outside.test>", size=6)
    facts, early = await index.meet([delivered(ALICE, 2, "<two@outside.test>"), summary])
    assert (facts, early) == ({}, [(message_doc_id(ALICE, "INBOX", 1, 2), summary_facts(summary))])


async def test_a_summary_reaches_only_the_mail_of_the_accounts_it_names(cache: tuple[IndexCache, Counted]) -> None:
    """A sender who copies another mail's Message-ID reaches only its own recipients' mail."""
    index, _store = cache
    await index.meet([accepted((BOB,), size=1)])
    assert await index.meet([delivered(ALICE, 1)]) == ({}, [])  # alice's mail is not bob's
    assert await index.meet([delivered(BOB, 1)]) == ({0: summary_facts(accepted((BOB,), size=1))}, [])
    # The account is matched as Dovecot names it (lower case), whatever case the envelope had.
    await index.meet([accepted(("ALICE@example.test",), "<upper@outside.test>", size=2)])
    facts, _early = await index.meet([delivered(ALICE, 2, "<upper@outside.test>")])
    assert facts == {0: summary_facts(accepted((ALICE,), size=2))}


async def test_a_submitted_mail_describes_the_submitters_sent_copy(cache: tuple[IndexCache, Counted]) -> None:
    index, _store = cache
    summary = accepted(("someone@outside.test",), "<sent@example.test>", sasl_user=ALICE, size=42)
    await index.meet([summary])
    facts, _early = await index.meet([delivered(ALICE, 9, "<sent@example.test>")])
    assert facts == {0: summary_facts(summary)}


async def test_mail_without_a_message_id_meets_nothing(
    cache: tuple[IndexCache, Counted], redis_client: aioredis.Redis
) -> None:
    index, _store = cache
    assert await index.meet([accepted((ALICE,), ""), delivered(ALICE, 1, "")]) == ({}, [])
    assert [key async for key in redis_client.scan_iter(f"{index.prefix}:*")] == []  # and leaves nothing waiting


async def test_counts_are_taken_from_the_store_once_then_moved_by_each_write(
    cache: tuple[IndexCache, Counted],
) -> None:
    index, store = cache
    box = (ALICE, "INBOX")
    store.found[box] = (2, 5)
    assert await index.move_counts({box: (1, 1)}, set()) == [MailboxCounts(ALICE, "INBOX", 2, 5)]
    assert store.asked == 1  # none kept yet: counted from the store (which holds the write already)
    assert await index.move_counts({box: (-1, 2)}, set()) == [MailboxCounts(ALICE, "INBOX", 1, 7)]
    assert await index.counts(*box) == (1, 7)
    assert store.asked == 1  # kept: the store is not asked again
    # A write that cannot say what it changed (a rename, a backfill) has the mailbox counted afresh,
    # the kept counts dropped for the new ones.
    store.found[box] = (0, 3)
    assert await index.move_counts({box: (5, 5)}, {box}) == [MailboxCounts(ALICE, "INBOX", 0, 3)]
    assert store.asked == 2
    assert await index.counts(*box) == (0, 3)
    assert store.asked == 2


async def test_a_recount_while_another_writer_is_at_work_drops_the_kept_counts(
    cache: tuple[IndexCache, Counted],
) -> None:
    index, store = cache
    box = (ALICE, "Sent")
    store.found[box] = (0, 4)
    await index.move_counts({box: (0, 1)}, set())  # (0, 4) kept
    await index.begin_writes({box})  # another writer at work
    store.found[box] = (0, 6)
    assert await index.move_counts({box: (0, 0)}, {box}) == [MailboxCounts(ALICE, "Sent", 0, 6)]
    asked = store.asked
    assert await index.counts(*box) == (0, 6)  # from the store: the old counts dropped, the new not kept
    assert store.asked == asked + 1


async def test_no_count_is_kept_while_another_writer_is_between_its_documents_and_its_counts(
    cache: tuple[IndexCache, Counted], redis_client: aioredis.Redis
) -> None:
    index, store = cache
    box = (BOB, "Archive")
    await index.begin_writes({box})  # another writer: its documents written, its counts still to move
    store.found[box] = (1, 1)
    assert await index.move_counts({box: (1, 1)}, set()) == [MailboxCounts(BOB, "Archive", 1, 1)]
    assert await index.counts(*box) == (1, 1)
    assert store.asked == 2  # not kept while the mark is up: asked each time
    # The other writer finishes: its mark goes, and, the last to finish, it keeps the count.
    store.found[box] = (2, 2)
    assert await index.move_counts({box: (1, 1)}, set(), {box}) == [MailboxCounts(BOB, "Archive", 2, 2)]
    assert await redis_client.hget(f"{index.prefix}:index:writing:{BOB}", "Archive") is None
    assert await index.counts(*box) == (2, 2)
    assert store.asked == 3
