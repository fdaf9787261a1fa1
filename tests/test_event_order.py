"""The index does not depend on the order events arrive in (bridge/store.py).

Events of different Dovecot processes can overtake one another: a delivery whose hook waits for a
slow Redis and spools arrives after the flag changes and expunges an IMAP client made meanwhile
(docs/events.md, "Order"). Here an account's real events, from real LMTP deliveries and real IMAP
commands, are held back (its hook publishes to a Redis port nobody listens on, so every event lands
in the account's own spool, in order), then published to the stack's stream in other orders: the
flag changes and expunges before the deliveries they concern, the whole sequence reversed, and
shuffled. The bridge's indexer must end with exactly what IMAP holds: the same messages, flags,
keywords and unread counts, and nothing Dovecot expunged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import os
import pwd
import random
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgpack
import pytest
import redis
import redis.asyncio as aioredis

from bridge import codec
from bridge.events import Event, FlagsChanged, FlagsSet, MailboxEvent, MessageAdded, MessageExpunge, MessageNew
from bridge.index_cache import IndexCache
from bridge.stack.launcher import Stack, StackInfo
from bridge.store import TOMBSTONE_DAYS, Store, message_doc_id
from tests.common import Account, free_port, unread_total
from tests.mail_state import State, imap_state, index_state, ok
from tests.mailtools import lmtp_deliver, short_mail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

STREAM = "mail:dovecot"
# (mailbox, uidvalidity, uid) -> (system flags, keywords, seen)


def private_spool(stack: StackInfo) -> Path:
    """A spool directory the bridge does not drain, writable by the mail user."""
    spool = Path(stack.state_dir) / f"held-{uuid.uuid4().hex[:8]}"
    spool.mkdir()
    mail = pwd.getpwnam("mail")
    os.chown(spool, mail.pw_uid, mail.pw_gid)
    return spool


@pytest.fixture
def held_account(stack: StackInfo, stack_launcher: Stack) -> Iterator[tuple[Account, Path]]:
    """A fresh account whose hook cannot reach Redis: its events wait in a spool of its own."""
    spool = private_spool(stack)
    account = Account(f"held-{uuid.uuid4().hex[:10]}@example.test", secrets.token_urlsafe(12))
    stack_launcher.add_users(
        {account.email: account.password},
        userdb_fields={"mail_bridge_redis_port": str(free_port()), "mail_bridge_spool_dir": str(spool)},
    )
    try:
        yield account, spool
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def spooled_events(spool: Path) -> list[Event]:
    """The events in the spool, in the order the hook wrote them."""
    events: list[Event] = []
    for path in sorted(spool.glob("*.mp")):
        for stream, wire in msgpack.Unpacker(open(path, "rb"), raw=False):  # noqa: SIM115
            assert stream == STREAM
            events.append(codec.from_wire(wire))
    return events


def counts_of(state: State, mailbox: str) -> tuple[int, int]:
    """(unread, total) of one mailbox of a state."""
    inside = [seen for (box, _v, _u), (_f, _k, seen) in state.items() if box == mailbox]
    return inside.count(False), len(inside)


@pytest.fixture
async def index(stack: StackInfo) -> AsyncIterator[tuple[Store, IndexCache]]:
    store = Store(stack.mongodb_url, "mailbridge")
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        yield store, IndexCache(client, store, "mail")
    finally:
        await store.close()
        await client.aclose()


def run_imap_session(stack: StackInfo, account: Account) -> None:
    """Flag changes (some undone, some redone), an expunge, a move and an append, as a client does."""
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        ok(imap.login(account.email, account.password))
        ok(imap.select("INBOX"))
        ok(imap.uid("STORE", "1", "+FLAGS", "(\\Seen)"))
        ok(imap.uid("STORE", "2", "+FLAGS", "(\\Flagged $Important)"))
        ok(imap.uid("STORE", "2", "-FLAGS", "(\\Flagged)"))
        for change in ("+FLAGS", "-FLAGS", "+FLAGS"):  # the same flag, set, cleared and set again
            ok(imap.uid("STORE", "3", change, "(\\Seen)"))
        ok(imap.uid("STORE", "4", "+FLAGS", "(\\Seen \\Deleted)"))
        ok(imap.expunge())  # UID 4 goes, after its flag changes
        ok(imap.create("Archive"))
        ok(imap.uid("MOVE", "5", "Archive"))  # an append in Archive, an expunge in INBOX
        ok(imap.uid("STORE", "6", "+FLAGS", "(\\Seen)"))
        ok(imap.uid("STORE", "6", "-FLAGS", "(\\Seen)"))  # marked unread again
        ok(imap.append("INBOX", "(\\Seen $Label1)", None, short_mail(account.email, "appended").as_bytes()))
        ok(imap.uid("STORE", "7", "-FLAGS", "(\\Seen)"))
        ok(imap.uid("STORE", "7", "+FLAGS", "($Label2)"))
        ok(imap.select("Archive"))
        ok(imap.uid("STORE", "1", "+FLAGS", "(\\Answered)"))


def orders(events: list[Event]) -> dict[str, list[Event]]:
    """The orders the test publishes the same events in."""
    added: list[Event] = [e for e in events if isinstance(e, MessageAdded)]
    rest = [e for e in events if not isinstance(e, MessageAdded)]
    shuffled = {f"shuffled{seed}": random.Random(seed).sample(events, len(events)) for seed in (1, 2, 3)}
    return {"late-deliveries": rest + added, "reversed": events[::-1], **shuffled}


async def test_the_index_equals_imap_whatever_order_events_arrive_in(
    stack: StackInfo, held_account: tuple[Account, Path], index: tuple[Store, IndexCache]
) -> None:
    account, spool = held_account
    store, cache = index
    for n in range(1, 7):
        await asyncio.to_thread(lmtp_deliver, stack, account.email, short_mail(account.email, f"held {n}"))
    await asyncio.to_thread(run_imap_session, stack, account)
    events = spooled_events(spool)
    expected = await asyncio.to_thread(imap_state, stack, account, ["INBOX", "Archive"])
    kinds = {type(e).__name__ for e in events}
    assert {"MessageNew", "MessageAppend", "MessageExpunge", "FlagsSet", "FlagsClear"} <= kinds, kinds
    assert len(expected) == 6  # INBOX: 6 delivered, 1 expunged, 1 moved away, 1 appended; Archive: 1
    assert sum(isinstance(e, FlagsChanged) for e in events) >= 12
    assert sum(isinstance(e, MessageExpunge) for e in events) == 2

    # Each order under an account name of its own (the index is per account): the same events.
    published: dict[str, str] = {}
    client = redis.Redis.from_url(stack.redis_url)
    try:
        for name, order in orders(events).items():
            alias = f"{name}-{account.email}"
            published[name] = alias
            pipe = client.pipeline(transaction=False)
            for event in order:
                assert isinstance(event, MailboxEvent)
                pipe.xadd(STREAM, {"e": codec.encode(dataclasses.replace(event, account=alias))})
            pipe.execute()
    finally:
        client.close()

    async def counts() -> dict[tuple[str, str], tuple[int, int]]:
        boxes = ("INBOX", "Archive")
        return {(n, box): unread_total(await cache.counts(a, box)) for n, a in published.items() for box in boxes}

    want_counts = {(n, box): counts_of(expected, box) for n in published for box in ("INBOX", "Archive")}
    found: dict[str, State] = {}
    found_counts: dict[tuple[str, str], tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = {name: await index_state(store, alias) for name, alias in published.items()}
        found_counts = await counts()
        if all(state == expected for state in found.values()) and found_counts == want_counts:
            break
        await asyncio.sleep(0.5)
    for name, state in found.items():
        missing = {k: v for k, v in expected.items() if state.get(k) != v}
        extra = {k: v for k, v in state.items() if expected.get(k) != v}
        assert state == expected, f"{name}: the index lacks or differs on {missing}, and holds {extra}"
    assert found_counts == want_counts  # unread and total, as the browsers are told


async def test_tombstones_and_unclaimed_flag_changes_are_pruned_in_time(index: tuple[Store, IndexCache]) -> None:
    """A tombstone, and a flag change whose message never came, are kept TOMBSTONE_DAYS, then pruned."""
    store, _cache = index
    account = f"prune-{uuid.uuid4().hex[:8]}@example.test"
    now = int(time.time() * 1000)
    gone = MessageExpunge(key="x", ts=now, account=account, mailbox="INBOX", uidvalidity=7, uid=1)
    early = FlagsSet(key="f", ts=now, account=account, mailbox="INBOX", uidvalidity=7, uid=2, flags=("\\Seen",))
    await store.apply([gone, early], {}, [])
    tombstone, record = message_doc_id(account, "INBOX", 7, 1), message_doc_id(account, "INBOX", 7, 2)

    async def kept() -> tuple[bool, bool]:
        return (
            await store.messages.find_one({"_id": tombstone}) is not None,
            await store.early_flags.find_one({"_id": record}) is not None,
        )

    assert await kept() == (True, True)
    assert await store.messages.find_one({"account": account}) is None  # no listing sees either
    await store.prune(now + (TOMBSTONE_DAYS - 1) * 86_400_000)
    assert await kept() == (True, True)
    await store.prune(now + (TOMBSTONE_DAYS + 1) * 86_400_000)
    assert await kept() == (False, False)


async def test_a_large_read_applied_again_leaves_the_store_answering(stack: StackInfo) -> None:
    """A read of 256 deliveries, applied twice (the indexer retries a read the store failed part of):
    the second time every write matches a document. FerretDB v1.24 never answers an update command
    with more than 100 such statements, nor anything after it on that database; the store keeps its
    commands smaller. (A database of the test's own: a stalled one stays stalled.)"""
    name = f"retry-{uuid.uuid4().hex[:8]}"
    store = Store(stack.mongodb_url, name)
    account = f"retry-{uuid.uuid4().hex[:8]}@example.test"
    news = [
        MessageNew(key=f"k{uid}", ts=1, account=account, mailbox="INBOX", uidvalidity=7, uid=uid, subject=f"{uid}")
        for uid in range(1, 257)
    ]
    try:
        first = await store.apply(news, {}, [])
        again = await asyncio.wait_for(store.apply(news, {}, []), 20)
        assert (first.deltas, again.deltas) == ({(account, "INBOX"): [256, 256]}, {(account, "INBOX"): [0, 0]})
        assert await store.counts(account, "INBOX") == (256, 256)
    finally:
        with contextlib.suppress(Exception):
            await store.client.drop_database(name)
        await store.close()
