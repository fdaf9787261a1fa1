"""The reliability suite's faults (scenarios 1-4), each under a steady mail load with browsers
connected that resume by lastEventId (tests/reliability_load.py). tests/test_redis_and_filter_failures.py
checks the Redis and content filter faults alone, without the load, in more detail.

These stop, kill and restart shared services of the session's stack and put every one back before
they return. The fast subset (make test) runs them at a few mails per second for a few seconds;
`make reliability` runs them longer and faster.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from bridge import codec
from bridge.events import MessageNew
from bridge.stack.launcher import Stack, StackInfo
from tests.mailtools import send_smtp
from tests.reliability import Rig, Scenario
from tests.reliability_load import Browsers, MailLoad, Outcome, SentMail, assert_clean, settle, wait_delivered
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ACCOUNTS = 4


@dataclass
class Fault:
    """What a fault scenario works with: the stack, its browsers, Redis, and the load's shape."""

    stack: StackInfo
    launcher: Stack
    browsers: Browsers
    redis: redis.Redis
    rate: float  # mails per second
    seconds: float  # of load on each side of the fault

    def load(self, rate: float | None = None) -> MailLoad:
        return MailLoad(self.stack, [b.account for b in self.browsers.browsers], rate or self.rate).start()

    async def deliver_all(self, sent: list[SentMail], scenario: Scenario, *, flush: bool = False) -> Outcome:
        """Every mail in its mailbox (after asking Postfix to retry what it deferred, if `flush`),
        then on its browser: zero lost, doubled, missing or shown twice."""
        if flush:
            await asyncio.to_thread(postqueue_flush, self.stack)
        await wait_delivered(self.stack, sent, self.browsers)
        outcome = await settle(self.stack, sent, self.browsers, scenario)
        assert_clean(outcome)
        return outcome

    def describe(self, scenario: Scenario, extra: str = "", rate: float | None = None) -> None:
        scenario.load = (
            f"{rate or self.rate:g} mails/s for ~{2 * self.seconds:g} s to {len(self.browsers.browsers)} accounts,"
            f" one browser each{extra}"
        )


@pytest.fixture
async def fault(rig: Rig) -> AsyncIterator[Fault]:
    browsers = await Browsers(rig.stack.web_url).open(rig.accounts(ACCOUNTS))
    client = redis.Redis.from_url(rig.stack.redis_url, socket_timeout=10)
    rate, seconds = (20.0, 6.0) if rig.full else (8.0, 2.0)
    try:
        yield Fault(rig.stack, rig.launcher, browsers, client, rate, seconds)
    finally:
        await browsers.close()
        client.close()


def log_count(stack: StackInfo, text: str, name: str = "bridge.out") -> int:
    return (Path(stack.log_dir) / name).read_text().count(text)


def postqueue_flush(stack: StackInfo) -> None:
    """Ask Postfix to retry its deferred mail now rather than at its next queue run."""
    etc = os.path.join(stack.state_dir, "postfix", "etc")
    subprocess.run(["postqueue", "-c", etc, "-f"], check=False, timeout=30, capture_output=True)


def spool_files(stack: StackInfo) -> list[str]:
    return [name for name in os.listdir(stack.spool_dir) if name.endswith(".mp")]


def published_message_ids(client: redis.Redis, accounts: set[str]) -> set[str]:
    """Message-IDs of the MessageNew events now in the Dovecot stream for these accounts."""
    found: set[str] = set()
    for _entry_id, fields in client.xrange("mail:dovecot"):
        event = codec.decode(fields[b"e"])
        if isinstance(event, MessageNew) and event.account in accounts and event.message_id:
            found.add(event.message_id)
    return found


def pending_entries(client: redis.Redis, group: str) -> int:
    total = 0
    for stream in ("mail:dovecot", "mail:postfix"):
        try:
            total += int(client.xpending(stream, group)["pending"])
        except redis.ResponseError:
            continue
    return total


# ---------------------------------------------------------------------------------------- 1. Redis


async def redis_fault(fault: Fault, scenario: Scenario, *, persistent: bool) -> None:
    stack, browsers, sync_redis, seconds = fault.stack, fault.browsers, fault.redis, fault.seconds
    fault.describe(scenario, "; half the browsers away across the outage")
    warnings_before = log_count(stack, "paused, retrying")
    away = {b.account.email for b in browsers.browsers[: ACCOUNTS // 2]}
    accounts = {b.account.email for b in browsers.browsers}
    restart_args: tuple[str, ...] = ()
    if persistent:
        # Every write to the append-only file before Redis answers it (Redis "Persistence":
        # appendfsync always): a SIGKILL then loses nothing Redis confirmed.
        sync_redis.config_set("appendonly", "yes")
        sync_redis.config_set("appendfsync", "always")
        await wait_until(lambda: not int(sync_redis.info("persistence")["aof_rewrite_in_progress"]), 30, "AOF")
        restart_args = ("--appendonly", "yes", "--appendfsync", "always")
    load = fault.load()
    try:
        await asyncio.sleep(seconds)
        await browsers.drop(lambda b: b.account.email in away, stay_away=True)
        killed_at = time.monotonic()
        fault.launcher.stop_service("redis", signal.SIGKILL)
        try:
            await asyncio.sleep(seconds / 2)  # mail keeps coming: its events go to the spool
        finally:
            fault.launcher.start_service("redis", *restart_args)
        await asyncio.sleep(seconds / 2)
        await browsers.come_back()
        await asyncio.sleep(seconds / 2)
    finally:
        sent = load.stop()
    await wait_delivered(stack, sent, browsers)
    await wait_until(lambda: not spool_files(stack), 30, "the spool to drain")
    in_stream = await asyncio.to_thread(published_message_ids, sync_redis, accounts)

    def excused(mail: SentMail) -> bool:
        # Without persistence, Redis takes with it what it held: the MessageNew of a mail delivered
        # just before the kill (not yet relayed), and the resume log that browsers away across the
        # outage would have replayed. Nothing published after the restart or spooled is excused.
        if persistent or mail.message_id in in_stream:
            return False
        return mail.account in away or mail.sent_at > killed_at - 1.0

    outcome = await settle(stack, sent, browsers, scenario, excused=excused)
    if persistent:
        fault.redis.config_set("appendonly", "no")  # back to the stack's setting for the tests after
    shown = {b.account.email: set(b.shown) for b in browsers.browsers}
    held = [m for m in sent if excused(m) and m.subject not in shown[m.account]]
    if not persistent:
        scenario.note(
            f"Not expected and not shown: {len(held)} event(s) Redis held when it died (taken before the kill,"
            " not yet relayed, or in the resume log of a browser away across the outage)."
        )
    assert_clean(outcome)
    if persistent:
        assert held == []
    groups = {g["name"].decode() for g in sync_redis.xinfo_groups("mail:dovecot")}
    assert {"bridge", "bridge-index"} <= groups  # recreated by the consumers if Redis forgot them
    assert log_count(stack, "paused, retrying") - warnings_before <= 3  # once per reader (2 consumers, fan-out)
    assert pending_entries(sync_redis, "bridge") == 0
    resyncs = sum(b.resyncs for b in browsers.browsers)
    if persistent:
        assert resyncs == 0  # the log survived: a plain resume
    else:
        # A browser back from the outage finds a new log: all of it is replayed (checked above),
        # and it is told to refresh, since the old log's last events may be gone.
        assert resyncs == len(away)
        scenario.note(f"The {len(away)} browsers that were away were also told to refresh (the log was reset).")


@pytest.mark.reliability(1, "Redis killed (SIGKILL) and restarted, no persistence")
async def test_redis_killed_without_persistence(fault: Fault, scenario: Scenario) -> None:
    scenario.checked = (
        "every mail delivered once; every event published after the restart or spooled during the outage shown"
        " exactly once, live or replayed to browsers resuming by lastEventId; consumer groups recreated; one"
        " warning per outage, no error loop."
    )
    await redis_fault(fault, scenario, persistent=False)


@pytest.mark.reliability(1, "Redis killed (SIGKILL) and restarted, AOF (appendfsync always)")
async def test_redis_killed_with_aof(fault: Fault, scenario: Scenario) -> None:
    scenario.checked = (
        "every mail delivered once and every event shown exactly once, including those Redis held when"
        " killed: browsers away across the outage resume from the persisted log."
    )
    await redis_fault(fault, scenario, persistent=True)


# ---------------------------------------------------------------------------------------- 2. bridge


@pytest.mark.reliability(2, "Bridge killed (SIGKILL) mid-stream and restarted")
async def test_bridge_killed_mid_stream(fault: Fault, scenario: Scenario) -> None:
    browsers, seconds = fault.browsers, fault.seconds
    fault.describe(scenario)
    scenario.checked = (
        "every browser is dropped, reconnects and resumes by lastEventId: every mail shown exactly once;"
        " the entries the dead process had read but not acknowledged are taken up again (nothing left pending)."
    )
    load = fault.load()
    try:
        await asyncio.sleep(seconds)
        fault.launcher.stop_service("bridge", signal.SIGKILL)
        await asyncio.sleep(seconds / 2)  # mail keeps coming; its events wait in the streams
        fault.launcher.start_service("bridge")
        await wait_until(lambda: browsers.connected() == ACCOUNTS, 30, "every browser back")
        await asyncio.sleep(seconds / 2)
    finally:
        sent = load.stop()
    await fault.deliver_all(sent, scenario)
    assert all(b.connects >= 2 for b in browsers.browsers)  # each was dropped and came back
    assert sum(b.resyncs for b in browsers.browsers) == 0
    await wait_until(lambda: pending_entries(fault.redis, "bridge") == 0, 30, "no entry left pending")


# ---------------------------------------------------------------------------------------- 3. filter


@pytest.mark.reliability(3, "Content filter killed (SIGKILL) mid-batch and restarted")
async def test_filter_killed_mid_batch(fault: Fault, scenario: Scenario) -> None:
    stack, seconds = fault.stack, fault.seconds
    fault.describe(scenario, rate=fault.rate * 2)
    scenario.checked = (
        "Postfix defers what the dead filter held and retries it: every mail delivered exactly once (the"
        " filter's retry record and Dovecot's dedupe script), every mail shown exactly once."
    )
    load = fault.load(fault.rate * 2)
    try:
        await asyncio.sleep(seconds)
        fault.launcher.stop_service("filter", signal.SIGKILL)
        await asyncio.sleep(seconds / 2)  # Postfix queues and defers meanwhile
        fault.launcher.start_service("filter")
        await asyncio.to_thread(postqueue_flush, stack)
        await asyncio.sleep(seconds / 2)
    finally:
        sent = load.stop()
    await fault.deliver_all(sent, scenario, flush=True)


# ---------------------------------------------------------------------------------------- 4. Dovecot, store


async def api(http: aiohttp.ClientSession, method: str, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    """One REST call: (status, JSON body), with a ceiling so an outage shows as an answer, not a hang."""
    started = time.monotonic()
    async with http.request(
        method, path, headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=20), **kwargs
    ) as r:
        body = await r.json(content_type=None)
    assert time.monotonic() - started < 15, f"{path} took {time.monotonic() - started:.1f} s to answer"
    return r.status, body


async def listed(http: aiohttp.ClientSession, token: str, account: str) -> int:
    status, body = await api(http, "GET", f"/api/v1/email/inbox?account={account}&limit=200", token)
    return len(body["emails"]) if status == 200 else -1


async def index_caught_up(http: aiohttp.ClientSession, fault: Fault, sent: list[SentMail]) -> dict[str, int]:
    """Wait until the index (the store behind the inbox listing) lists every mail sent to each account."""
    wanted = {b.account.email: sum(1 for m in sent if m.account == b.account.email) for b in fault.browsers.browsers}
    deadline = time.monotonic() + 60
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        found = {b.account.email: await listed(http, b.token, b.account.email) for b in fault.browsers.browsers}
        if found == wanted:
            break
        await asyncio.sleep(0.5)
    assert found == wanted, f"the index lists {found}, the mailboxes hold {wanted}"
    return found


@pytest.mark.reliability(4, "Dovecot stopped and restarted")
async def test_dovecot_restarted(fault: Fault, scenario: Scenario) -> None:
    stack, browsers, seconds = fault.stack, fault.browsers, fault.seconds
    fault.describe(scenario)
    scenario.checked = (
        "while Dovecot is down: Postfix defers delivery, reading a mail and logging in answer 503 with a clear"
        " error, /health says which dependency is down; after: every mail delivered and shown once, the API"
        " reads mail again and the index lists every mail."
    )
    first = browsers.browsers[0]
    load = fault.load()
    async with aiohttp.ClientSession(base_url=stack.web_url) as http:
        try:
            await asyncio.sleep(seconds)
            await wait_until(lambda: bool(first.email_ids), 10, "a first mail on the first browser")
            email_id = next(iter(first.email_ids.values()))
            fault.launcher.stop_service("dovecot")
            try:
                status, body = await api(http, "GET", f"/api/v1/email/{email_id}", first.token)
                assert (status, "IMAP" in body["error"]) == (503, True), body
                async with http.post(
                    "/api/v1/auth/login", json={"email": first.account.email, "password": first.account.password}
                ) as r:
                    assert r.status == 503, await r.text()
                    assert "error" in await r.json()
                async with http.get("/health") as r:
                    health = await r.json()
                    assert (r.status, health["checks"]["redis"], health["checks"]["imap"][:4]) == (503, "ok", "down")
                await asyncio.sleep(seconds / 2)
            finally:
                fault.launcher.start_service("dovecot")
            await asyncio.to_thread(postqueue_flush, stack)
            await asyncio.sleep(seconds / 2)
        finally:
            sent = load.stop()
        await fault.deliver_all(sent, scenario, flush=True)
        status, body = await api(http, "GET", f"/api/v1/email/{email_id}", first.token)
        assert status == 200, body
        await index_caught_up(http, fault, sent)


@pytest.mark.reliability(4, "Store (FerretDB) stopped and restarted")
async def test_store_restarted(fault: Fault, scenario: Scenario) -> None:
    stack, browsers, seconds = fault.stack, fault.browsers, fault.seconds
    if not any(s.name == "ferretdb" for s in fault.launcher.services):
        pytest.skip("the store is an external MongoDB (MONGODB_URL): this stack cannot restart it")
    # At most 8 mails/s even at full load: at 20 mails/s FerretDB v1.24's SQLite backend, restarted
    # under the indexer's catch-up, stopped answering for the rest of the run (the bridge kept
    # relaying; the index waited). A MongoDB store is not held to this.
    rate = min(fault.rate, 8.0)
    fault.describe(scenario, rate=rate)
    if rate < fault.rate:
        scenario.note(
            f"Held to {rate:g} mails/s: at {fault.rate:g}, FerretDB (SQLite) stopped answering after its restart."
        )
    scenario.checked = (
        "while the store is down: new mail still reaches browsers, the inbox listing answers 503 with a clear"
        " error, /health names the store; after: the index catches up by itself and lists every mail."
    )
    first = browsers.browsers[0]
    load = fault.load(rate)
    async with aiohttp.ClientSession(base_url=stack.web_url) as http:
        try:
            await asyncio.sleep(seconds)
            fault.launcher.stop_service("ferretdb")
            try:
                shown_before = len(first.shown)
                status, body = await api(http, "GET", f"/api/v1/email/inbox?account={first.account.email}", first.token)
                assert (status, "store" in body["error"]) == (503, True), body
                async with http.get("/health") as r:
                    health = await r.json()
                    assert (r.status, health["checks"]["redis"], health["checks"]["store"][:4]) == (503, "ok", "down")
                await wait_until(lambda: len(first.shown) > shown_before, 10, "new mail shown while the store is down")
                await asyncio.sleep(seconds / 2)
            finally:
                fault.launcher.start_service("ferretdb")
            await asyncio.sleep(seconds / 2)
        finally:
            sent = load.stop()
        await fault.deliver_all(sent, scenario)
        await index_caught_up(http, fault, sent)
        await wait_until(lambda: pending_entries(fault.redis, "bridge-index") == 0, 30, "the indexer's pending entries")


# ---------------------------------------------------------------------------------------- 6. spool


LOST_LINE = re.compile(r'^mailbridge_events_lost_total\{stream="([^"]+)"\} ([0-9.e+]+)$', re.M)


async def lost_counts(http: aiohttp.ClientSession) -> dict[str, float]:
    async with http.get("/metrics") as r:
        text = await r.text()
    assert "mailbridge_dovecot_metrics_up 1.0" in text, "Dovecot's statistics did not answer"
    return {stream: float(value) for stream, value in LOST_LINE.findall(text)}


@pytest.mark.reliability(6, "Spool unwritable while Redis is down")
async def test_unwritable_spool_delivers_mail_and_counts_lost_events(fault: Fault, scenario: Scenario) -> None:
    stack, browsers = fault.stack, fault.browsers
    count = 40 if fault.rate > 10 else 10
    accounts = [b.account for b in browsers.browsers]
    scenario.load = f"{count} mails to {len(accounts)} accounts with Redis stopped and the spool replaced by a file"
    scenario.checked = (
        "every mail delivered; each event neither Redis nor the spool could take is logged as LOST (the filter's"
        " log, Dovecot's log) and counted in /metrics (mailbridge_events_lost_total, the hook's via Dovecot's"
        " statistics); once both are back, events flow again."
    )
    spool = Path(stack.spool_dir)
    saved = spool.with_name(spool.name + ".saved")
    # Mailboxes exist first, so each mail below is exactly one event per producer.
    warmup = MailLoad(stack, accounts, 20.0, tag="warm")
    await asyncio.to_thread(send_smtp, stack, [warmup.message(n)[0] for n in range(len(accounts))])
    await wait_until(lambda: all(b.shown for b in browsers.browsers), 30, "the first mail on every browser")
    async with aiohttp.ClientSession(base_url=stack.web_url) as http:
        before = await lost_counts(http)
        filter_lost = log_count(stack, "LOST event", "filter.out")
        dovecot_lost = log_count(stack, "mail-bridge: LOST 1 event(s)", "dovecot.log")
        fault.launcher.stop_service("redis")
        spool.rename(saved)
        spool.write_text("not a directory: the spool is unwritable\n")
        broken = MailLoad(stack, accounts, 20.0, tag=f"lost-{uuid.uuid4().hex[:4]}")
        lost_mail = [broken.message(n) for n in range(count)]
        try:
            await asyncio.to_thread(send_smtp, stack, [m for m, _ in lost_mail])
            await wait_delivered(stack, [s for _, s in lost_mail], browsers)
            # A LOST line is written when its producer gives up, which can trail the mail's arrival
            # in the mailbox by a moment (Dovecot's hook runs as the delivery's transaction ends).
            await wait_until(
                lambda: (
                    log_count(stack, "LOST event", "filter.out") - filter_lost >= count
                    and log_count(stack, "mail-bridge: LOST 1 event(s)", "dovecot.log") - dovecot_lost >= count
                ),
                10,
                "the LOST lines",
            )
        finally:
            spool.unlink()
            saved.rename(spool)
            fault.launcher.start_service("redis")
        logged_filter = log_count(stack, "LOST event", "filter.out") - filter_lost
        logged_dovecot = log_count(stack, "mail-bridge: LOST 1 event(s)", "dovecot.log") - dovecot_lost
        # Mail flows with its events again; the filter's first publish also reports what it lost.
        after_mail = MailLoad(stack, accounts, 20.0, tag=f"back-{uuid.uuid4().hex[:4]}")
        recovered = [after_mail.message(n) for n in range(len(accounts))]
        await asyncio.to_thread(send_smtp, stack, [m for m, _ in recovered])
        sent = [s for _, s in lost_mail] + [s for _, s in recovered]
        lost_ids = {s.message_id for _, s in lost_mail}
        outcome = await settle(stack, sent, browsers, scenario, excused=lambda m: m.message_id in lost_ids)
        deadline = time.monotonic() + 10
        counted: dict[str, float] = {}
        while time.monotonic() < deadline:
            after = await lost_counts(http)
            counted = {s: after.get(s, 0.0) - before.get(s, 0.0) for s in ("mail:postfix", "mail:dovecot")}
            if counted == {"mail:postfix": count, "mail:dovecot": count}:
                break
            await asyncio.sleep(0.5)
    scenario.note(
        f"By design {2 * count} events were lost (Redis down and no spool): logged {logged_filter} (filter) and"
        f" {logged_dovecot} (Dovecot) times, counted {counted.get('mail:postfix', 0):g} and"
        f" {counted.get('mail:dovecot', 0):g} in /metrics."
    )
    assert_clean(outcome)  # every mail delivered; the events after recovery all shown
    assert (logged_filter, logged_dovecot) == (count, count)
    assert counted == {"mail:postfix": count, "mail:dovecot": count}
