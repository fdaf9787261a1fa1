"""bridge.mail_facts: whose mail a filter summary describes, and, against the session's Redis, a
summary meeting its delivery in either order."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bridge.browser_events import MtaFacts
from bridge.events import Attachment, Direction, MessageAppend, MessageNew, MtaAccepted
from bridge.mail_facts import MailFacts, summary_accounts, summary_facts
from bridge.store import message_doc_id

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


def delivered(
    account: str, uid: int, message_id: str = "<m@outside.test>", mailbox: str = "INBOX", **fields: object
) -> MessageNew:
    return MessageNew(
        key=f"dovecot:{account}:{mailbox}:{uid}:{message_id}",
        ts=TS,
        account=account,
        mailbox=mailbox,
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


# --------------------------------------------------------------------------- against the real Redis


@pytest.fixture
async def mail_facts(redis_client: aioredis.Redis) -> AsyncIterator[MailFacts]:
    """Facts under a prefix of their own in the session's Redis (removed afterwards)."""
    prefix = f"test-facts-{uuid.uuid4().hex[:8]}"
    yield MailFacts(redis_client, prefix)
    keys = [key async for key in redis_client.scan_iter(f"{prefix}:*")]
    if keys:
        await redis_client.delete(*keys)


async def test_a_delivery_before_its_summary_waits_for_it_and_one_after_finds_it(
    mail_facts: MailFacts,
) -> None:
    index = mail_facts
    first = delivered(ALICE, 1)
    facts, early = await index.meet([first])
    assert (facts, early) == ({}, [])  # nothing known yet: the delivery's document waits
    summary = accepted((ALICE,), size=777, category="promotions")
    facts, early = await index.meet([summary])
    assert facts == {}
    assert early == [(message_doc_id(ALICE, "INBOX", 1, 1), summary_facts(summary))]
    # A copy of the same mail into another mailbox (Sieve fileinto :copy): its facts are known at once.
    facts, early = await index.meet([delivered(ALICE, 1, mailbox="Work")])
    assert (facts, early) == ({0: {"hasAttachments": False, "size": 777, "category": "promotions"}}, [])
    # Whoever waited was told once: a repeated summary finds no one waiting.
    assert await index.meet([summary]) == ({}, [])


async def test_within_one_read_the_summary_and_its_delivery_meet_in_either_order(
    mail_facts: MailFacts,
) -> None:
    index = mail_facts
    summary = accepted((ALICE,), "<one@outside.test>", size=5)
    facts, early = await index.meet([summary, delivered(ALICE, 1, "<one@outside.test>")])
    assert (facts, early) == ({1: summary_facts(summary)}, [])
    summary = accepted((ALICE,), "<two@outside.test>", size=6)
    facts, early = await index.meet([delivered(ALICE, 2, "<two@outside.test>"), summary])
    assert (facts, early) == ({}, [(message_doc_id(ALICE, "INBOX", 1, 2), summary_facts(summary))])


async def test_a_summary_reaches_only_the_mail_of_the_accounts_it_names(mail_facts: MailFacts) -> None:
    """A sender who copies another mail's Message-ID reaches only its own recipients' mail."""
    index = mail_facts
    await index.meet([accepted((BOB,), size=1)])
    assert await index.meet([delivered(ALICE, 1)]) == ({}, [])  # alice's mail is not bob's
    assert await index.meet([delivered(BOB, 1)]) == ({0: summary_facts(accepted((BOB,), size=1))}, [])
    # The account is matched as Dovecot names it (lower case), whatever case the envelope had.
    await index.meet([accepted(("ALICE@example.test",), "<upper@outside.test>", size=2)])
    facts, _early = await index.meet([delivered(ALICE, 2, "<upper@outside.test>")])
    assert facts == {0: summary_facts(accepted((ALICE,), size=2))}


async def test_a_submitted_mail_describes_the_submitters_sent_copy(mail_facts: MailFacts) -> None:
    index = mail_facts
    summary = accepted(("someone@outside.test",), "<sent@example.test>", sasl_user=ALICE, size=42)
    await index.meet([summary])
    facts, _early = await index.meet([delivered(ALICE, 9, "<sent@example.test>")])
    assert facts == {0: summary_facts(summary)}


async def test_mail_without_a_message_id_meets_nothing(mail_facts: MailFacts, redis_client: aioredis.Redis) -> None:
    index = mail_facts
    assert await index.meet([accepted((ALICE,), ""), delivered(ALICE, 1, "")]) == ({}, [])
    assert [key async for key in redis_client.scan_iter(f"{index.prefix}:*")] == []  # and leaves nothing waiting


def relay_facts(summary: MtaAccepted) -> MtaFacts:
    facts = summary_facts(summary)
    return MtaFacts(facts["hasAttachments"], facts["size"], facts["category"])


async def test_a_second_mail_with_the_same_message_id_is_not_given_the_first_ones_facts(
    mail_facts: MailFacts,
) -> None:
    """A sender reuses a Message-ID the account already received: the second mail, delivered
    before its own summary came, waits for it instead of taking the first one's (the relay shows it
    without facts meanwhile), and the first mail keeps its own."""
    index, relay = mail_facts, mail_facts
    first = accepted((ALICE,), size=10)
    assert await index.meet([first, delivered(ALICE, 1)]) == ({1: summary_facts(first)}, [])
    assert await relay.remember_and_read([first, delivered(ALICE, 1)]) == [None, relay_facts(first)]

    assert await relay.remember_and_read([delivered(ALICE, 2)]) == [None]
    assert await index.meet([delivered(ALICE, 2)]) == ({}, [])
    copycat = accepted(
        (ALICE,), size=99, attachments=(Attachment(filename="a.pdf", content_type="application/pdf", size=10),)
    )
    assert await index.meet([copycat]) == ({}, [(message_doc_id(ALICE, "INBOX", 1, 2), summary_facts(copycat))])
    # Read again, each delivery finds what it claimed, whichever reader asks.
    assert await relay.remember_and_read([delivered(ALICE, 2), delivered(ALICE, 1)]) == [
        relay_facts(copycat),
        relay_facts(first),
    ]


async def test_the_relay_and_the_index_agree_whichever_reads_first(mail_facts: MailFacts) -> None:
    """Two mails under one Message-ID, the relay ahead of a lagging index: the index gives each
    delivery the summary the relay matched it with, not the newest one."""
    index, relay = mail_facts, mail_facts
    first, second = accepted((ALICE,), size=10), accepted((ALICE,), size=20)
    read = [first, delivered(ALICE, 1), second, delivered(ALICE, 2)]
    assert await relay.remember_and_read(read) == [None, relay_facts(first), None, relay_facts(second)]
    assert await index.meet(read[:2]) == ({1: summary_facts(first)}, [])
    assert await index.meet(read[2:]) == ({1: summary_facts(second)}, [])


async def test_an_append_takes_the_newest_summary_and_claims_nothing(mail_facts: MailFacts) -> None:
    """A Sent copy or a moved copy (message.append) is the mail a summary describes, wherever it
    lands; it does not use up the summary for a delivery into the same mailbox."""
    index = mail_facts
    first, second = accepted((ALICE,), size=10), accepted((ALICE,), size=20)
    appended = MessageAppend(
        key="append", ts=TS, account=ALICE, mailbox="Sent", uidvalidity=1, uid=5, message_id="<m@outside.test>"
    )
    await index.meet([first])
    assert await index.meet([appended]) == ({0: summary_facts(first)}, [])
    await index.meet([second])
    assert await index.meet([appended]) == ({0: summary_facts(second)}, [])
    assert await index.meet([delivered(ALICE, 1, mailbox="Sent")]) == ({0: summary_facts(first)}, [])
