"""An index write marks its mailboxes (bridge.index_cache) while its documents are written and its
counts not yet moved; a write that stops half-way, by an error or by being cancelled (the bridge
shutting down), must clear its marks, or every count of those mailboxes is taken from the store
until the mark expires."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import time
import uuid

import pytest
import redis.asyncio as aioredis

from bridge.backfill import Backfill
from bridge.events import MessageNew
from bridge.imap import ImapGateway
from bridge.index_cache import IndexCache
from bridge.stack.launcher import StackInfo
from bridge.stack.render import MASTER_USER
from bridge.store import BULK_CHUNK, MailboxCounts, Store
from tests.common import Account

pytestmark = pytest.mark.e2e


async def test_a_cancelled_index_write_clears_its_marks(store: Store, redis_client: aioredis.Redis) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    cache = IndexCache(redis_client, store, prefix)
    # pymongo lets a cancellation that comes while it picks a connection pass unnoticed (the write
    # then completes): cancel later and later until one does cancel the write.
    for delay in (0.02, 0.05, 0.1, 0.2, 0.4):
        account = f"{uuid.uuid4().hex[:8]}@example.test"
        events = [
            MessageNew(key=f"k{uid}", ts=1_700_000_000_000, account=account, mailbox="INBOX", uidvalidity=1, uid=uid)
            for uid in range(1, 2001)
        ]
        writing = f"{prefix}:index:writing:{account}"
        task = asyncio.create_task(cache.apply(events))
        for _ in range(2000):  # until its documents are being written (bounded: 2000 round trips)
            if await redis_client.hget(writing, "INBOX") is not None or task.done():
                break
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled = task.cancelled()
        assert await redis_client.hget(writing, "INBOX") is None, f"mark left up (cancelled after {delay} s)"
        await store.messages.delete_many({"account": account})
        if cancelled:
            return
    raise AssertionError("no write was cancelled")


async def test_a_cancelled_backfill_clears_its_mark(
    stack: StackInfo, stack_secrets: dict[str, object], account: Account, redis_client: aioredis.Redis
) -> None:
    """The bridge stopping cancels a running backfill (Backfill.close) while it writes a mailbox's
    documents: the mailbox's mark goes too."""
    mails = BULK_CHUNK + 1  # two writes to the store
    await asyncio.to_thread(deliver_many, stack, account.email, mails)
    imap = ImapGateway(stack.imap["host"], stack.imap["port"], MASTER_USER, str(stack_secrets["master_password"]), 30)
    for _attempt in range(5):
        prefix, database = f"test-{uuid.uuid4().hex[:8]}", f"test_backfill_{uuid.uuid4().hex[:8]}"
        store = Store(stack.mongodb_url, database)

        async def publish(_counts: MailboxCounts) -> None:
            pass

        backfill = Backfill(imap, store, IndexCache(redis_client, store, prefix), publish)
        writing = f"{prefix}:index:writing:{account.email}"
        try:
            backfill.start(account.email)
            task = backfill._tasks[account.email]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until its documents are being written
                if task.done() or await store.messages.count_documents({}) > 0:
                    break
                await asyncio.sleep(0.005)
            await backfill.close()
            # Only a cancellation that stopped the writes tells (pymongo sometimes lets one pass).
            if task.cancelled() and await store.messages.count_documents({}) < mails:
                assert await redis_client.hget(writing, "INBOX") is None, "mark left up"
                return
        finally:
            await store.client.drop_database(database)
            await store.close()
    raise AssertionError("no backfill was cancelled while it wrote")


def deliver_many(stack: StackInfo, recipient: str, count: int) -> None:
    with smtplib.LMTP(stack.lmtp["host"], stack.lmtp["port"], timeout=30) as lmtp:
        for i in range(count):
            lmtp.sendmail("bulk@outside.test", [recipient], f"Subject: bulk {i}\r\n\r\nbody {i}\r\n".encode())
