"""The reliability suite's relay faults (scenario 13), under a steady mail load (over SMTP, and
straight into Dovecot over LMTP) with browsers that resume by lastEventId (tests/reliability_load.py).

One more bridge node joins the stack's consumer groups, its Redis reached through a proxy that
fails it at exact points (tests/redis_proxy.py): its connection dropped as a publish leaves or
before a reply comes back, a read's reply lost, the node killed as its publish leaves or after
Redis ran it. Each account has a browser on the stack's bridge and one on that node. Every mail
must reach every browser exactly once. The fast subset (make test) runs a few mails a second for
a few seconds; `make reliability` runs longer and faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import smtplib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis

from bridge.stack.launcher import Stack, StackInfo
from tests.common import Account
from tests.redis_proxy import FORWARD, Once, ProxiedNode, Verdict, proxied_node
from tests.reliability import Rig, Scenario
from tests.reliability_load import Browsers, MailLoad, Outcome, SentMail, assert_clean, settle, wait_delivered
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ACCOUNTS = 4
GROUP = "bridge"
NODE_NUMBERS = itertools.count(61)  # bridge-61, bridge-62, ...: one node per scenario


def relay_publish(chunk: bytes) -> bool:
    """The relay's script call (EVALSHA, or EVAL), publishing at least one new mail."""
    return b"EVAL" in chunk and b"new_email" in chunk


def new_entries_read(command: bytes) -> bool:
    """XREADGROUP for new entries (`>`), as opposed to a consumer reading its own pending ones."""
    return b"XREADGROUP" in command and b"$1\r\n>\r\n" in command


class LmtpLoad(MailLoad):
    """Numbered mails straight into Dovecot (LMTP): Dovecot's events without a filter's event
    before each. Over SMTP alone, the filter's and Dovecot's event of each mail come one after the
    other, and Redis, which hands a new entry to the consumer blocked longest, can settle into
    giving one node every filter event (which publish nothing) and the other every Dovecot event."""

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            message, sent = self.message(n)
            try:
                with smtplib.LMTP(self.stack.lmtp["host"], self.stack.lmtp["port"], timeout=30) as lmtp:
                    lmtp.send_message(message, to_addrs=[sent.account])
            except (smtplib.SMTPException, OSError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.2)
                continue
            self.sent.append(SentMail(sent.account, sent.subject, sent.message_id, time.monotonic()))
            n += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))


@dataclass
class Mail:
    """The two loads together."""

    smtp: MailLoad
    lmtp: LmtpLoad

    def stop(self) -> list[SentMail]:
        return self.smtp.stop() + self.lmtp.stop()


@dataclass
class Load:
    stack: StackInfo
    launcher: Stack
    node: ProxiedNode
    accounts: list[Account]
    groups: list[Browsers]  # the browsers on the stack's bridge, then those on the node
    redis: redis.Redis
    rate: float  # mails per second
    seconds: float

    def start(self) -> Mail:
        return Mail(
            MailLoad(self.stack, self.accounts, self.rate).start(),
            LmtpLoad(self.stack, self.accounts, self.rate / 2).start(),
        )

    async def deliver_all(self, sent: list[SentMail], scenario: Scenario) -> list[Outcome]:
        """Every mail in its mailbox and on every browser, once; the scenario's row counts both groups."""
        await wait_delivered(self.stack, sent, self.groups[0])
        outcomes = [await settle(self.stack, sent, group, scenario) for group in self.groups]
        scenario.events_expected = sum(len(sent) for _ in self.groups)
        scenario.events_received = sum(o.received for o in outcomes)
        scenario.events_duplicated = sum(len(o.duplicated_events) for o in outcomes)
        for outcome in outcomes:
            assert_clean(outcome)
        await wait_until(lambda: pending(self.redis) == 0, 30, "no entry left pending")
        return outcomes

    def describe(self, scenario: Scenario, extra: str) -> None:
        scenario.load = (
            f"{self.rate:g} mails/s over SMTP and {self.rate / 2:g} over LMTP for ~{2 * self.seconds:g} s to"
            f" {len(self.accounts)} accounts, a browser for each on the stack's bridge and one on a second node"
            f" whose Redis is behind a proxy; {extra}"
        )


def consumers(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """By consumer of the relay's group on the Dovecot stream: (pending, ms idle), for a failure's message."""
    return {
        c["name"].decode(): (int(c["pending"]), int(c["idle"])) for c in client.xinfo_consumers("mail:dovecot", GROUP)
    }


def pending(client: redis.Redis) -> int:
    total = 0
    for stream in ("mail:dovecot", "mail:postfix"):
        with contextlib.suppress(redis.ResponseError):
            total += int(client.xpending(stream, GROUP)["pending"])
    return total


@pytest.fixture
async def load(rig: Rig) -> AsyncIterator[Load]:
    accounts = rig.accounts(ACCOUNTS)
    rate, seconds = (20.0, 6.0) if rig.full else (8.0, 2.0)
    client = redis.Redis.from_url(rig.stack.redis_url, socket_timeout=10)
    with proxied_node(rig.launcher, rig.stack.redis_url, next(NODE_NUMBERS)) as node:
        groups = [await Browsers(rig.stack.web_url).open(accounts), await Browsers(node.url).open(accounts)]
        try:
            yield Load(rig.stack, rig.launcher, node, accounts, groups, client, rate, seconds)
        finally:
            for group in groups:
                await group.close()
            client.close()


# ---------------------------------------------------------------------------------------- 12. relay


@dataclass
class Cuts:
    """Connection faults in turn: of the relay's publishes, one in three loses its reply (Redis
    ran it; redis-py sends it again) and one in three never reaches Redis (the connection drops as
    it leaves); one read of new entries in three loses its reply (the entries stay pending on the
    node's consumer, and redis-py reads again)."""

    publishes: int = 0
    reads: int = 0
    replies_lost: int = 0
    dropped: int = 0
    reads_lost: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def command(self, chunk: bytes) -> Verdict:
        if not relay_publish(chunk):
            return FORWARD
        with self.lock:
            self.publishes += 1
            turn = self.publishes % 3
            if turn == 1:
                self.replies_lost += 1
                return Verdict("lose_reply")
            if turn == 2:
                self.dropped += 1
                return Verdict("drop")
        return FORWARD

    def reply(self, command: bytes, reply: bytes) -> Verdict:
        if not new_entries_read(command) or len(reply) < 32:  # a read that timed out holds nothing
            return FORWARD
        with self.lock:
            self.reads += 1
            if self.reads % 3 == 1:
                self.reads_lost += 1
                return Verdict("drop")
        return FORWARD


@pytest.mark.reliability(13, "Relay: Redis connection dropped mid-relay under load")
async def test_redis_connection_dropped_mid_relay(load: Load, scenario: Scenario) -> None:
    load.describe(scenario, "the node's Redis connection cut mid-relay again and again.")
    scenario.checked = (
        "a publish whose reply was lost and is sent again by redis-py publishes nothing twice (the once-per-key"
        " markers are set by the same script that publishes); a publish cut before it reached Redis is retried"
        " from the pending entry; a read whose reply was lost is taken up within a second from the consumer's"
        " own pending entries: every mail shown exactly once on every browser, nothing left pending."
    )
    cuts = Cuts()
    load.node.proxy.command_rule = cuts.command
    load.node.proxy.reply_rule = cuts.reply
    mail = load.start()
    try:
        await asyncio.sleep(2 * load.seconds)
    finally:
        sent = mail.stop()
        load.node.proxy.reset()
    await load.deliver_all(sent, scenario)
    scenario.note(
        f"Cut: {cuts.replies_lost} publish replies lost after Redis ran them, {cuts.dropped} publishes dropped"
        f" before Redis, {cuts.reads_lost} read replies lost."
    )
    assert cuts.replies_lost > 0 and cuts.dropped > 0 and cuts.reads_lost > 0


async def kill_node_at(load: Load, *, after_redis_ran_it: bool) -> None:
    """SIGKILL the node as its next publish leaves it (never to reach Redis), or once Redis ran it
    and before the node heard back; then start it again (same consumer name)."""
    trigger = Once()
    if after_redis_ran_it:
        load.node.proxy.reply_rule = lambda command, _reply: (
            Verdict("drop", trigger.hold) if relay_publish(command) and trigger.take() else FORWARD
        )
    else:
        load.node.proxy.command_rule = lambda chunk: (
            Verdict("drop", trigger.hold) if relay_publish(chunk) and trigger.take() else FORWARD
        )
    try:
        await asyncio.to_thread(trigger.fired.wait, 30)
        assert trigger.fired.is_set(), f"the node published no mail in 30 s: {consumers(load.redis)}"
        await asyncio.to_thread(load.launcher.stop_service, load.node.name, signal.SIGKILL)
    finally:
        trigger.release()
        load.node.proxy.reset()
    await asyncio.to_thread(load.launcher.start_service, load.node.name)


@pytest.mark.reliability(13, "Relay: a node killed between marker and publish")
async def test_node_killed_between_marker_and_publish(load: Load, scenario: Scenario) -> None:
    load.describe(scenario, "the node killed (SIGKILL) twice mid-publish and started again.")
    scenario.checked = (
        "killed as a publish leaves it (the publish never reaches Redis: no once-per-key marker either, so the"
        " restarted node publishes its pending entries) and killed after Redis ran a publish it never heard back"
        " from (the markers were set with it: nothing published twice); its browsers resume by lastEventId: every"
        " mail shown exactly once on every browser, nothing left pending."
    )
    node_browsers = load.groups[1]
    mail = load.start()
    try:
        await asyncio.sleep(load.seconds)
        await kill_node_at(load, after_redis_ran_it=False)
        await asyncio.sleep(load.seconds / 2)
        await kill_node_at(load, after_redis_ran_it=True)
        await wait_until(lambda: node_browsers.connected() == ACCOUNTS, 30, "the node's browsers back")
        await asyncio.sleep(load.seconds / 2)
    finally:
        sent = mail.stop()
    await load.deliver_all(sent, scenario)
    assert all(b.connects >= 3 for b in node_browsers.browsers)  # dropped twice, back each time
    assert sum(b.resyncs for group in load.groups for b in group.browsers) == 0
