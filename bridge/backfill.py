"""Index a user's existing mail from IMAP, once, in the background (on first login or connect).

Events keep the index current from then on; this only fills in what was there before the bridge
was. Documents the events already wrote are left alone ($setOnInsert), so a backfill racing with
live events never overwrites newer state with older.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

from redis.exceptions import RedisError

from bridge.errors import BridgeError
from bridge.imap import ImapGateway
from bridge.imap_syntax import FetchedHeaders
from bridge.index_cache import IndexCache
from bridge.mail_headers import believable_date, decode_text
from bridge.store import SEEN, MailboxCounts, Store

log = logging.getLogger(__name__)

CONCURRENT_BACKFILLS = 4


def document(account: str, mailbox: str, uidvalidity: int, item: FetchedHeaders) -> dict[str, Any]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(item.header)
    raw_from = decode_text(str(headers.get("From") or ""))
    from_name, from_address = parseaddr(raw_from)
    _to_name, to_address = parseaddr(decode_text(str(headers.get("To") or "")))
    now = int(time.time())
    date: int | None
    try:
        date = int(parsedate_to_datetime(str(headers.get("Date"))).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        date = None
    # Year 10000 ("31 Dec 9999 ... -1200") reads fine here and formats nowhere. The mail arrived
    # at its INTERNALDATE (or before now): a Date it cannot have had counts as none.
    arrived = item.arrived if item.arrived is not None and item.arrived <= now else now
    date = believable_date(date, arrived)
    flags = [f for f in item.flags if f.startswith("\\") and f != "\\Recent"]
    return {
        "account": account,
        "mailbox": mailbox,
        "uidvalidity": uidvalidity,
        "uid": item.uid,
        "from": raw_from,
        "fromAddress": from_address,
        "fromName": from_name,
        "to": decode_text(str(headers.get("To") or "")),
        "toAddress": to_address,
        "subject": decode_text(str(headers.get("Subject") or "")),
        "snippet": "",
        "messageId": str(headers.get("Message-ID") or "").strip(),
        "date": arrived if date is None else date,
        "arrived": arrived,
        "flags": flags,
        "keywords": [f for f in item.flags if not f.startswith("\\")],
        "seen": SEEN in flags,
        "hasAttachments": False,
        "size": item.size,
    }


class Backfill:
    def __init__(
        self,
        imap: ImapGateway,
        store: Store,
        counts: IndexCache,
        publish_counts: Callable[[MailboxCounts], Awaitable[object]],
    ) -> None:
        self.imap = imap
        self.store = store
        self.counts = counts
        # A filled-in mailbox is counted again and its counts pushed: what browsers were told
        # before may not include what the backfill added.
        self.publish_counts = publish_counts
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()  # accounts known to be indexed: no store lookup per connection
        self._slots = asyncio.Semaphore(CONCURRENT_BACKFILLS)

    def start_all(self, accounts: tuple[str, ...]) -> None:
        for account in accounts:
            self.start(account)

    def start(self, account: str) -> None:
        if account in self._tasks or account in self._done:
            return
        task = asyncio.create_task(self._run(account), name=f"backfill-{account}")
        self._tasks[account] = task
        task.add_done_callback(lambda _t: self._tasks.pop(account, None))

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, account: str) -> None:
        # A connect storm of new users must not open an IMAP session and a store write stream per
        # user at once: Dovecot and the store would time out most of them (seen at 1,000 first
        # connects: most backfills postponed, the store answering SQLITE_BUSY).
        async with self._slots:
            await self._backfill(account)

    async def _backfill(self, account: str) -> None:
        try:
            if await self.store.is_indexed(account):
                self._done.add(account)
                return
            started, count = time.monotonic(), 0
            for box in await self.imap.list_mailboxes(account):
                if not box.selectable:
                    continue
                validity, items = await self.imap.headers_of_all(account, box.name)
                if items:
                    await self.counts.begin_writes({(account, box.name)})
                docs = [document(account, box.name, validity, item) for item in items]
                try:
                    await self.store.add_backfilled(docs)
                    # Its listing order is filled from the store afresh (bridge.listing_order).
                    await self.counts.order.forget({(account, box.name)})
                except BaseException:  # cancelled too (the bridge stopping): the mark must not stay up
                    # Clear the mark (and the counts, which may miss part of these writes). Not
                    # raising from here: that would replace the error (or the cancellation).
                    with contextlib.suppress(RedisError, OSError):
                        await self.counts.move_counts({}, {(account, box.name)}, {(account, box.name)})
                    raise
                if docs:  # an empty mailbox adds nothing to count (and a count is a scan on FerretDB)
                    # Published after counts of later reads perhaps: its version tells browsers.
                    await self.publish_counts(await self.counts.end_backfill(account, box.name))
                count += len(docs)
            await self.store.mark_indexed(account)
            self._done.add(account)
            log.info("[%s] backfilled %d message(s) in %.2f s", account, count, time.monotonic() - started)
        except (BridgeError, RedisError) as exc:  # the store's errors come as Unavailable
            log.warning("[%s] backfill postponed to the next login: %r", account, exc)
