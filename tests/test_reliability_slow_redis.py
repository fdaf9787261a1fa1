"""Reliability scenario 15: Redis slow, so the hook times out and spools while mail is delivered and
an IMAP client changes flags, expunges and moves mail; afterwards the index equals IMAP exactly.

Redis is paused for writes (CLIENT PAUSE ... WRITE: an XADD waits until the pause ends) for 400 ms
of every second, which Redis ends by itself. A hook that meets a pause waits its 250 ms, then
spools; another process that comes just after the pause publishes straight to Redis, ahead of it
(docs/events.md, "Order"). So events of a delivery and of the IMAP client's changes to that very
message reach the indexer in any order; the index must not depend on it (bridge/store.py).
"""

from __future__ import annotations

import asyncio
import imaplib
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bridge import codec
from bridge.events import MessageAdded, MessageEvent, MessageExpunge
from bridge.index_cache import IndexCache
from bridge.stack.launcher import StackInfo
from bridge.store import Store
from tests.common import Account, unread_total
from tests.mail_state import State, imap_state, index_state, ok
from tests.mailtools import imap_message_ids, send_smtp
from tests.reliability import Rig
from tests.reliability_load import MailLoad
from tests.waiting import until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAILBOXES = ("INBOX", "Archive")
PAUSE_MS, EVERY_S = (280, 450), 1.0
# (mailbox, uidvalidity, uid) -> (system flags, keywords, seen)


def log_count(stack: StackInfo, name: str, text: str) -> int:
    return (Path(stack.log_dir) / name).read_text(errors="replace").count(text)


class Pauser(threading.Thread):
    """CLIENT PAUSE <280 to 450 ms> WRITE once every EVERY_S: each pause ends by itself. Of the hooks
    that meet a pause, those that came in its first part time out (250 ms) and spool, and those that
    came later publish once it ends: a delivery spools while an IMAP client's change to that very
    message, made a moment later, goes straight to Redis."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(name="redis-pauser", daemon=True)
        self.client = client
        self.stopping = threading.Event()
        self.pauses = 0

    def run(self) -> None:
        rng = random.Random(14)
        while not self.stopping.is_set():
            self.client.execute_command("CLIENT", "PAUSE", rng.randint(*PAUSE_MS), "WRITE")
            self.pauses += 1
            self.stopping.wait(EVERY_S)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.client.execute_command("CLIENT", "UNPAUSE")


@dataclass(eq=False)
class Changer(threading.Thread):
    """One IMAP client of one account: flags set and cleared, keywords, expunges and moves, on its
    newest or a random message of its INBOX, as fast as each command returns (the hook's wait
    included)."""

    stack: StackInfo
    account: Account
    seed: int
    ops: Counter[str] = field(default_factory=Counter)
    gone: set[str] = field(default_factory=set)  # Message-IDs expunged
    failure: str = ""
    newest: int = 0  # the highest UID this client has seen

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name=f"changer-{self.account.email}", daemon=True)
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random(self.seed)
        try:
            with imaplib.IMAP4(self.stack.imap["host"], self.stack.imap["port"], timeout=30) as imap:
                ok(imap.login(self.account.email, self.account.password))
                ok(imap.create("Archive"))
                while not self.stopping.is_set():
                    ok(imap.select("INBOX"))
                    uids = ok(imap.uid("SEARCH", "ALL"))[0].split()
                    if not uids:
                        time.sleep(0.05)
                        continue
                    self.change(imap, rng, [uid.decode() for uid in uids])
                    self.stopping.wait(0.05)
        except Exception as exc:  # reported by the test
            self.failure = f"{type(exc).__name__}: {exc}"

    def expunge(self, imap: imaplib.IMAP4, uid: str) -> None:
        header = ok(imap.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"))
        ids = re.findall(rb"<[^>]+>", b"".join(p[1] for p in header if isinstance(p, tuple)))
        ok(imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)"))
        ok(imap.uid("EXPUNGE", uid))
        self.gone.update(i.decode() for i in ids)

    def change(self, imap: imaplib.IMAP4, rng: random.Random, uids: list[str]) -> None:
        """Like a client that shows new mail as it comes: a message seen for the first time is read
        (and tagged with a keyword of its own, which stays) or deleted; meanwhile other messages
        get toggles, expunges and moves."""
        newest = uids[-1]
        if int(newest) > self.newest:
            self.newest = int(newest)
            time.sleep(rng.uniform(0, 0.2))  # the reader looks at it a moment later
            if rng.random() < 0.8:
                self.ops["read on arrival"] += 1
                ok(imap.uid("STORE", newest, "+FLAGS", f"(\\Seen $Read{self.ops['read on arrival']})"))
            else:
                self.ops["deleted on arrival"] += 1
                self.expunge(imap, newest)
            return
        uid, roll = rng.choice(uids), rng.random()
        if roll < 0.3:
            op, args = "seen", ("+FLAGS", "(\\Seen)")
        elif roll < 0.55:
            op, args = "unseen", ("-FLAGS", "(\\Seen)")
        elif roll < 0.72:
            op, args = "flagged", (rng.choice(("+FLAGS", "-FLAGS")), "(\\Flagged)")
        elif roll < 0.9:
            op, args = "keyword", (rng.choice(("+FLAGS", "-FLAGS")), f"($Label{rng.randint(1, 3)})")
        elif roll < 0.95:
            self.ops["expunge"] += 1
            self.expunge(imap, uid)
            return
        else:
            ok(imap.uid("MOVE", uid, "Archive"))
            self.ops["move"] += 1
            return
        ok(imap.uid("STORE", uid, *args))
        self.ops[op] += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def overtaken(client: redis.Redis, accounts: set[str]) -> tuple[int, int]:
    """How many flag changes and expunges of these accounts reached the stream before the delivery
    (or append) of their message: the disorder the index had to take."""
    added: set[tuple[str, str, int, int]] = set()
    ahead: Counter[str] = Counter()
    for _id, fields in client.xrange("mail:dovecot"):
        event = codec.decode(fields[b"e"])
        if not isinstance(event, MessageEvent) or event.account not in accounts:
            continue
        key = (event.account, event.mailbox, event.uidvalidity, event.uid)
        if isinstance(event, MessageAdded):
            added.add(key)
        elif key not in added:
            ahead["expunge" if isinstance(event, MessageExpunge) else "flags"] += 1
    return ahead["flags"], ahead["expunge"]


def counts(state: State) -> dict[str, tuple[int, int]]:
    out = {}
    for mailbox in MAILBOXES:
        seen = [s for (box, _v, _u), (_f, _k, s) in state.items() if box == mailbox]
        out[mailbox] = (seen.count(False), len(seen))
    return out


@pytest.mark.reliability(15, "Redis slow: the hook times out while mail and flag changes flow")
async def test_redis_slow_while_mail_and_flag_changes_flow(rig: Rig) -> None:
    stack, scenario = rig.stack, rig.scenario
    rate, seconds, count = (20.0, 20.0, 4) if rig.full else (8.0, 8.0, 4)
    accounts = rig.accounts(count)
    scenario.load = (
        f"{rate:g} mails/s for {seconds:g} s to {count} accounts, one IMAP client each changing flags, expunging"
        f" and moving; Redis paused for writes {PAUSE_MS[0]} to {PAUSE_MS[1]} ms of every {EVERY_S:g} s"
    )
    scenario.checked = (
        "every mail delivered once; the hook waits its 250 ms and spools, others publish past it; afterwards the"
        " index holds exactly what IMAP holds (messages, flags, keywords, no expunged message) and the unread"
        " and total counts match; no event lost."
    )
    spooled_before = log_count(stack, "dovecot.log", "; spooling")
    drained_before = log_count(stack, "bridge.out", "event(s) published to their streams")
    lost_before = log_count(stack, "dovecot.log", "mail-bridge: LOST")
    # Each INBOX exists before its client selects it.
    warm = MailLoad(stack, accounts, rate, tag="warm")
    first = [warm.message(n) for n in range(count)]
    await asyncio.to_thread(send_smtp, stack, [m for m, _ in first])
    for a in accounts:
        await asyncio.to_thread(
            until, f"the first mail of {a.email}", lambda a=a: bool(imap_message_ids(stack, a.email, a.password))
        )

    pauser = Pauser(redis.Redis.from_url(stack.redis_url, socket_timeout=10))
    changers = [Changer(stack, a, seed) for seed, a in enumerate(accounts)]
    load = MailLoad(stack, accounts, rate).start()
    try:
        for changer in changers:
            changer.start()
        pauser.start()
        await asyncio.sleep(seconds)
    finally:
        pauser.stop()
        sent = [s for _, s in first] + load.stop()
        for changer in changers:
            changer.stop()
    assert [c.failure for c in changers if c.failure] == []
    ops = sum((c.ops for c in changers), Counter())

    # Every mail in its mailbox (or expunged by its client), once.
    gone = set().union(*(c.gone for c in changers))
    by_account = {a.email: a for a in accounts}
    deadline = time.monotonic() + 120
    present: Counter[str] = Counter()
    while time.monotonic() < deadline:
        present = Counter()
        for email, account in by_account.items():
            for mailbox in MAILBOXES:
                ids = await asyncio.to_thread(imap_message_ids, stack, email, account.password, mailbox)
                present.update(ids)
        if all(m.message_id in present or m.message_id in gone for m in sent):
            break
        await asyncio.sleep(0.5)
    delivered = [m for m in sent if m.message_id in present or m.message_id in gone]
    scenario.mails_sent, scenario.mails_delivered = len(sent), len(delivered)
    assert len(delivered) == len(sent), f"mails missing: {[m.subject for m in sent if m not in delivered][:5]}"
    assert [mid for mid, n in present.items() if n > 1] == []

    # The index catches up, then holds what IMAP holds.
    store = Store(stack.mongodb_url, "mailbridge")
    client = aioredis.Redis.from_url(stack.redis_url)
    cache = IndexCache(client, store, "mail")
    expected: dict[str, State] = {}
    found: dict[str, State] = {}
    found_counts: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        expected = {a.email: await asyncio.to_thread(imap_state, stack, a, MAILBOXES) for a in accounts}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = {a.email: await index_state(store, a.email) for a in accounts}
            found_counts = {
                a.email: {b: unread_total(await cache.counts(a.email, b)) for b in MAILBOXES} for a in accounts
            }
            if found == expected and found_counts == {e: counts(s) for e, s in expected.items()}:
                break
            await asyncio.sleep(0.5)
    finally:
        await store.close()
        await client.aclose()
    with redis.Redis.from_url(stack.redis_url) as sync_client:
        flags_ahead, expunges_ahead = overtaken(sync_client, set(by_account))
    spooled = log_count(stack, "dovecot.log", "; spooling") - spooled_before
    drained = log_count(stack, "bridge.out", "event(s) published to their streams") - drained_before
    scenario.note(
        f"{pauser.pauses} pauses; the hook timed out and spooled {spooled} time(s), the bridge drained {drained}"
        f" spool file(s); IMAP changes: {', '.join(f'{n} {op}' for op, n in sorted(ops.items()))}; in the stream"
        f" {flags_ahead} flag change(s) and {expunges_ahead} expunge(s) came before their message; at the end"
        f" {sum(len(s) for s in expected.values())} messages in the index, as in IMAP."
    )
    for email, state in expected.items():
        differ = {k: (v, found[email].get(k)) for k, v in state.items() if found[email].get(k) != v}
        extra = {k: v for k, v in found[email].items() if k not in state}
        assert found[email] == state, f"{email}: index differs from IMAP on {differ}; holds besides {extra}"
    assert found_counts == {e: counts(s) for e, s in expected.items()}
    assert log_count(stack, "dovecot.log", "mail-bridge: LOST") == lost_before
    assert spooled > 0, "Redis was never slow enough for the hook: the scenario tested nothing"
    assert ops["expunge"] > 0 and ops["unseen"] > 0 and ops["read on arrival"] > 0
