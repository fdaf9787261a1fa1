"""The relay, the consumer and the socket edge when Redis fails at the worst moment, on the stack's
real Redis through a proxy that drops a connection, loses a reply or holds a command at an exact
point (tests/redis_proxy.py).

The relay tests run the relay itself in this process (the real `Consumer` and `Relay.relay`, with
the bridge's own Redis client settings) over a stream of their own; what it publishes goes into the
stack's fan-out and resume logs, and the stack's bridge emits it to a real socket. The socket and
gap tests run one more bridge node whose Redis is behind the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import redis.asyncio as aioredis
import socketio

from bridge import codec
from bridge.app import redis_client as bridge_redis
from bridge.browser_events import BrowserEvent
from bridge.events import ENTRY_FIELD, MessageNew
from bridge.fanout import lock_stripe
from bridge.fanout_publish import FanoutPublisher
from bridge.mail_facts import MailFacts
from bridge.metrics import Metrics
from bridge.relay import Relay
from bridge.stack.launcher import Stack, StackInfo
from bridge.streams import Consumer, Delivery, Publisher
from tests.common import Account, AccountPool, host_token, login
from tests.mailtools import lmtp_deliver, send_smtp, short_mail
from tests.redis_proxy import FORWARD, Once, RedisProxy, Verdict, proxied_node
from tests.socket_client import RecordingClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PREFIX = "mail"


@dataclass
class LocalRelay:
    """The relay under test, in this process."""

    relay: Relay
    client: aioredis.Redis
    consumer: Consumer
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.consumer.run(), name=f"relay-{self.consumer.name}")

    async def stop(self) -> None:
        """As a node dies: its task ends wherever it was."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def close(self) -> None:
        await self.stop()
        await self.client.aclose()


def local_relay(url: str, stream: str, name: str, *, claim_idle_ms: int = 30_000) -> LocalRelay:
    client = bridge_redis(url)  # the bridge's own settings: redis-py repeats a command on a dropped connection
    metrics = Metrics()
    publisher = FanoutPublisher(client, PREFIX, resume_log_len=10_000, metrics=metrics)
    relay = Relay(publisher, MailFacts(client, PREFIX), prefix=PREFIX, metrics=metrics)
    consumer = Consumer(client, (stream,), "relay-test", name, relay.relay, block_ms=200, claim_idle_ms=claim_idle_ms)
    return LocalRelay(relay, client, consumer)


@pytest.fixture
def proxy(stack: StackInfo) -> Iterator[RedisProxy]:
    p = RedisProxy(stack.redis_url)
    yield p
    p.close()


@pytest.fixture
async def stream(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """An ingest stream of the test's own (and its consumer group), removed afterwards."""
    name = f"test:relay:{uuid.uuid4().hex}"
    yield name
    await redis_client.delete(name)


@pytest.fixture
async def watcher(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> AsyncIterator[RecordingClient]:
    """A socket of the account on the stack's bridge."""
    client = RecordingClient()
    await client.connect(stack.web_url, await login(http, account))
    await client.wait_for("resume_point")  # joined: everything published from now on reaches it
    yield client
    await client.close()


def mail_event(account: str, subject: str, key: str | None = None) -> MessageNew:
    return MessageNew(
        key=key or f"test:relay:{uuid.uuid4().hex}",
        ts=int(time.time() * 1000),
        account=account,
        mailbox="INBOX",
        uidvalidity=1,
        uid=int(time.time() * 1000) % 1_000_000_000,
        subject=subject,
    )


async def inject(client: aioredis.Redis, stream: str, event: MessageNew) -> None:
    await client.xadd(stream, {ENTRY_FIELD: codec.encode(event)})


async def logged(client: aioredis.Redis, account: str, subject: str) -> list[str]:
    """The ids of the account's resume-log entries that carry a mail with this subject."""
    entries: Any = await client.xrange(f"{PREFIX}:browser:{account.lower()}")
    return [
        entry_id.decode()
        for entry_id, fields in entries
        if msgpack.unpackb(fields[b"p"], raw=False).get("subject") == subject
    ]


async def pending(client: aioredis.Redis, stream: str) -> int:
    return int((await client.xpending(stream, "relay-test"))["pending"])


async def nothing_pending(client: aioredis.Redis, stream: str) -> bool:
    return await pending(client, stream) == 0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def holds(value: bool) -> bool:
    return value


def shown(client: RecordingClient, subject: str) -> list[dict[str, Any]]:
    return [e for name, e in client.events if name == "new_email" and e.get("subject") == subject]


def is_publish(chunk: bytes, subject: bytes) -> bool:
    """The relay's script call (EVALSHA, or EVAL the first time) for this mail."""
    return b"EVAL" in chunk and subject in chunk


async def shown_once_and_logged_once(
    watcher: RecordingClient, client: aioredis.Redis, account: str, subject: str
) -> None:
    await watcher.wait_for("new_email", lambda e: e.get("subject") == subject, timeout=20)
    await asyncio.sleep(1.0)  # room for a second copy
    assert len(shown(watcher, subject)) == 1
    assert len(await logged(client, account, subject)) == 1


# ------------------------------------------------------------------ 1. marker and publish, one step


async def test_a_publish_that_failed_is_published_when_the_entry_is_retried(
    proxy: RedisProxy, stream: str, watcher: RecordingClient, redis_client: aioredis.Redis, account: Account
) -> None:
    """The connection drops each time the relay sends its publish (redis-py's own retries too):
    the read stays pending, and once Redis answers again the retry publishes it. The marker used
    to be set in a round trip of its own before the publish, and the retry took the entry for a
    duplicate: acknowledged, never shown, not in the resume log."""
    subject = f"dropped publish {uuid.uuid4().hex[:8]}"
    drops = Once(times=3)  # the first call and redis-py's two retries
    proxy.command_rule = lambda chunk: (
        Verdict("drop") if is_publish(chunk, subject.encode()) and drops.take() else FORWARD
    )
    relay = local_relay(proxy.url, stream, "relay-a")
    relay.start()
    try:
        await inject(redis_client, stream, mail_event(account.email, subject))
        await shown_once_and_logged_once(watcher, redis_client, account.email, subject)
    finally:
        await relay.close()
    assert drops.left == 0  # every attempt of the first relay failed: it was the retry that published
    assert await nothing_pending(redis_client, stream)


async def test_an_entry_claimed_from_a_consumer_that_died_mid_publish_is_published(
    proxy: RedisProxy, stream: str, watcher: RecordingClient, redis_client: aioredis.Redis, account: Account
) -> None:
    """A consumer dies as its publish is on the way (held by the proxy, then dropped with all its
    connections: the publish never reached Redis). Another consumer claims the entry and publishes
    it; the marker, set before the publish, used to tell it the entry was done."""
    subject = f"claimed {uuid.uuid4().hex[:8]}"
    held = Once()
    proxy.command_rule = lambda chunk: (
        Verdict("drop", held.hold) if is_publish(chunk, subject.encode()) and held.take() else FORWARD
    )
    dying = local_relay(proxy.url, stream, "relay-dying")
    taker = local_relay(proxy.redis_url, stream, "relay-taker", claim_idle_ms=500)
    dying.start()
    try:
        await inject(redis_client, stream, mail_event(account.email, subject))
        await asyncio.to_thread(held.fired.wait, 20)
        assert held.fired.is_set(), "the relay never sent its publish"
        # It dies: its connections cut (redis-py would otherwise send the publish again on a new one,
        # and a task cancelled inside redis-py on Python 3.11 can go on until its next await).
        proxy.set_down(True)
        held.release()  # the held publish is dropped, never sent to Redis
        await dying.stop()
        taker.start()
        await shown_once_and_logged_once(watcher, redis_client, account.email, subject)
        await eventually(lambda: nothing_pending(redis_client, stream), 10, "the claimed entry acknowledged")
    finally:
        held.release()
        await dying.close()
        await taker.close()


async def test_a_publish_whose_reply_was_lost_is_not_shown_twice(
    proxy: RedisProxy, stream: str, watcher: RecordingClient, redis_client: aioredis.Redis, account: Account
) -> None:
    """Redis ran the publish, the connection dropped before its reply: redis-py sends the same call
    again on a new connection. The markers inside the script make the second run publish nothing."""
    subject = f"lost reply {uuid.uuid4().hex[:8]}"
    lost = Once()
    proxy.command_rule = lambda chunk: (
        Verdict("lose_reply") if is_publish(chunk, subject.encode()) and lost.take() else FORWARD
    )
    relay = local_relay(proxy.url, stream, "relay-a")
    relay.start()
    try:
        await inject(redis_client, stream, mail_event(account.email, subject))
        await shown_once_and_logged_once(watcher, redis_client, account.email, subject)
    finally:
        await relay.close()
    assert lost.fired.is_set()


async def test_publish_is_not_doubled_by_a_lost_reply(
    proxy: RedisProxy, watcher: RecordingClient, redis_client: aioredis.Redis, account: Account
) -> None:
    """The same for the bridge's own events (unread counts, email_moved): each call has a marker."""
    subject = f"own event {uuid.uuid4().hex[:8]}"
    lost = Once()
    proxy.command_rule = lambda chunk: (
        Verdict("lose_reply") if is_publish(chunk, subject.encode()) and lost.take() else FORWARD
    )
    relay = local_relay(proxy.url, "unused", "unused")
    try:
        event_id = await relay.relay.publisher.publish(
            BrowserEvent("new_email", account.email, {"account": account.email, "subject": subject})
        )
        await shown_once_and_logged_once(watcher, redis_client, account.email, subject)
        assert [event_id] == await logged(redis_client, account.email, subject)  # the first run's id
    finally:
        await relay.close()
    assert lost.fired.is_set()


async def test_a_publish_that_fails_in_redis_writes_nothing_until_it_succeeds(
    stack: StackInfo, stream: str, watcher: RecordingClient, redis_client: aioredis.Redis, account: Account
) -> None:
    """A Redis error inside the script (here: the account's resume log is not a stream) came after
    the fan-out entry and its sequence number were written, and after the marker: the socket got
    the event, the resume log never did, and the retry took it for a duplicate. Now nothing is
    written unless every write can be made; once the key is right again, the retry publishes it whole."""
    subject = f"script error {uuid.uuid4().hex[:8]}"
    log_key = f"{PREFIX}:browser:{account.email.lower()}"
    relay = local_relay(stack.redis_url, stream, "relay-a")
    await redis_client.delete(log_key)
    await redis_client.set(log_key, b"not a stream")
    try:
        relay.start()
        await inject(redis_client, stream, mail_event(account.email, subject))
        await eventually(lambda: is_pending(redis_client, stream), 10, "the relay to take the entry")
        await asyncio.sleep(1.5)  # retried meanwhile (every 0.5 s), failing each time
        assert shown(watcher, subject) == []  # nothing half-published
        assert await pending(redis_client, stream) == 1
        await redis_client.delete(log_key)
        await shown_once_and_logged_once(watcher, redis_client, account.email, subject)
        await eventually(lambda: nothing_pending(redis_client, stream), 10, "the entry acknowledged")
    finally:
        await relay.close()
        if await redis_client.type(log_key) == b"string":
            await redis_client.delete(log_key)


async def is_pending(client: aioredis.Redis, stream: str) -> bool:
    try:
        return await pending(client, stream) > 0
    except aioredis.ResponseError:  # no group yet
        return False


# ------------------------------------------------------------------ the consumer: a read's reply lost


async def test_a_read_whose_reply_was_lost_is_handled_soon(
    proxy: RedisProxy, stream: str, redis_client: aioredis.Redis
) -> None:
    """Redis handed entries to the consumer (they are pending on it), the reply never arrived, and
    redis-py sent the read again on a new connection, which gets only newer entries. No other
    consumer takes them before `claim_idle_ms` (30 s); the consumer now looks at its own pending
    entries every second."""
    key = f"test:lost-read:{uuid.uuid4().hex}"
    lost = Once()
    proxy.reply_rule = lambda command, reply: (
        Verdict("drop") if b"XREADGROUP" in command and key.encode() in reply and lost.take() else FORWARD
    )
    handled: list[str] = []

    async def handler(batch: Sequence[Delivery]) -> None:
        handled.extend(d.event.key for d in batch)

    client = bridge_redis(proxy.url)
    consumer = Consumer(client, (stream,), "relay-test", "reader", handler, block_ms=200)
    await consumer.ensure_groups()
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0.5)  # blocked in its read
        await inject(redis_client, stream, mail_event("nobody@example.test", "lost read", key))
        await eventually(lambda: holds(key in handled), 10, "the entry handled")
        await eventually(lambda: nothing_pending(redis_client, stream), 10, "the entry acknowledged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
    assert lost.fired.is_set()
    assert handled == [key]


# ------------------------------------------------------------------ 5. a connect that fails gives its slot back

MAX_SOCKETS = 2


def socket_count(metrics: str) -> float:
    lines = metrics.splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith("mailbridge_sockets_connected")))


async def node_sockets(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        return socket_count(await r.text())


async def try_connect(url: str, token: str, wait_timeout: float) -> RecordingClient | str:
    """A connected client, or why it was not."""
    client = RecordingClient()
    try:
        await client.sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=wait_timeout)
    except socketio.exceptions.ConnectionError as exc:
        return str(exc)
    return client


async def connect_when_back(url: str, token: str, timeout: float = 20) -> RecordingClient:
    """Connect as soon as the node takes the connection; the last refusal if it never does."""
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        got = await try_connect(url, token, 5)
        if isinstance(got, RecordingClient):
            return got
        why = got
        await asyncio.sleep(0.3)
    raise AssertionError(f"still refused after {timeout:.0f} s: {why}")


async def test_connects_refused_while_redis_is_down_give_their_slots_back(
    stack: StackInfo, stack_launcher: Stack, http: aiohttp.ClientSession, account: Account
) -> None:
    """Redis gone for the node while a user tries to connect more times than the socket limit:
    each connect is refused at once (it used to hang, its slot counted for good), and once Redis is
    back the user connects."""
    token = await login(http, account)
    with proxied_node(stack_launcher, stack.redis_url, 41, BRIDGE_MAX_SOCKETS_PER_USER=str(MAX_SOCKETS)) as node:
        node.proxy.set_down(True)
        try:
            for _ in range(MAX_SOCKETS + 2):
                got = await try_connect(node.url, token, 3)
                assert not isinstance(got, RecordingClient), "connected with Redis down"
        finally:
            node.proxy.set_down(False)
        client = await connect_when_back(node.url, token)
        assert await node_sockets(http, node.url) == 1
        await client.close()
        await asyncio.sleep(0.3)
        assert await node_sockets(http, node.url) == 0


async def test_a_token_that_expires_during_a_slow_connect_is_refused(
    stack: StackInfo, stack_launcher: Stack, http: aiohttp.ClientSession, account: Account
) -> None:
    """Redis slow to answer a connect's read (held by the proxy) until the token has expired. The
    expiry timer, registered before the read, fired during it and could not disconnect a socket
    whose connect was not complete: the connect then completed, and the socket outlived its token
    for good. It is refused now."""
    log_key = f"{PREFIX}:browser:{account.email.lower()}".encode()
    with proxied_node(stack_launcher, stack.redis_url, 42) as node:
        slow = Once()
        node.proxy.command_rule = lambda chunk: (
            Verdict("forward", slow.hold) if b"XREVRANGE" in chunk and log_key in chunk and slow.take() else FORWARD
        )
        expires = int(time.time()) + 2
        token = host_token("user-slow", [account.email], exp=expires)
        connecting = asyncio.ensure_future(try_connect(node.url, token, 10))
        try:
            await asyncio.to_thread(slow.fired.wait, 10)
            assert slow.fired.is_set(), "the connect never read the log"
            await asyncio.sleep(expires + 0.5 - time.time())
        finally:
            slow.release()
        got = await connecting
        if isinstance(got, RecordingClient):
            await asyncio.sleep(2.0)  # an expired socket is disconnected at once
            outlived = got.sio.connected
            await got.close()
            assert not outlived, "the socket outlived its token"
        await asyncio.sleep(0.3)
        assert await node_sockets(http, node.url) == 0


# ------------------------------------------------------------------ 9a. joining during a gap's replay


def distinct_stripes(pool: AccountPool, count: int) -> list[Account]:
    """Accounts whose per-account locks differ: a connect for one must not wait on the replay of
    another only because both hash to the same lock."""
    picked: list[Account] = []
    stripes: set[int] = set()
    while len(picked) < count:
        candidate = pool.take()
        stripe = lock_stripe(candidate.email)
        if stripe not in stripes:
            stripes.add(stripe)
            picked.append(candidate)
    return picked


async def logged_mails(client: aioredis.Redis, accounts: Sequence[Account], tag: str, count: int) -> bool:
    """Whether each account's resume log holds `count` of this test's mails."""
    return [len(await log_mails(client, x.email, tag)) for x in accounts] == [count] * len(accounts)


async def log_mails(client: aioredis.Redis, account: str, tag: str) -> list[tuple[str, str]]:
    """(id, subject) of the account's logged new_email events of this test."""
    entries: Any = await client.xrange(f"{PREFIX}:browser:{account.lower()}")
    found = []
    for entry_id, fields in entries:
        if fields[b"n"] != b"new_email":
            continue
        subject = msgpack.unpackb(fields[b"p"], raw=False).get("subject", "")
        if subject.startswith(tag):
            found.append((entry_id.decode(), subject))
    return found


def newer(a: str, b: str) -> bool:
    return tuple(map(int, a.split("-"))) > tuple(map(int, b.split("-")))


def mails_seen(client: RecordingClient, tag: str) -> Counter[str]:
    return Counter(e["subject"] for name, e in client.events if name == "new_email" and e["subject"].startswith(tag))


async def test_sockets_joining_during_a_gap_replay_miss_nothing(
    stack: StackInfo, stack_launcher: Stack, account_pool: AccountPool, redis_client: aioredis.Redis
) -> None:
    """A node was cut off from Redis (and stalled) while mail came: its PUB/SUB connection, and
    what was published on its accounts' channels meanwhile, are gone. Back, it subscribes again and
    catches each room up from the account's resume log. While it does (its Redis holds one room's
    read), three sockets join: a fresh one and a resuming one for an account whose room was already
    caught up, and a fresh one for an account that had no room here yet. Each gets exactly the
    events after its starting point (its resume_point, or its lastEventId), once."""
    a, b, c = distinct_stripes(account_pool, 3)
    tag = f"gap {uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(base_url=stack.web_url) as http:
        tokens = {x.email: await login(http, x) for x in (a, b, c)}

    def deliver(phase: str, n: int = 1) -> None:
        for x in (a, b, c):
            for i in range(n):
                lmtp_deliver(stack, x.email, short_mail(x.email, f"{tag} {phase} {i} {x.email}"))

    sockets: list[RecordingClient] = []
    with proxied_node(stack_launcher, stack.redis_url, 43) as node:
        process = stack_launcher.service(node.name).process
        assert process is not None
        try:
            a1, c1 = RecordingClient(), RecordingClient()
            sockets += [a1, c1]
            await a1.connect(node.url, tokens[a.email])  # a's room first, then c's: c's is replayed second
            await c1.connect(node.url, tokens[c.email])
            await asyncio.to_thread(deliver, "before")
            last_a = await a1.wait_for("new_email", lambda e: e["subject"].startswith(f"{tag} before"), timeout=20)
            await c1.wait_for("new_email", lambda e: e["subject"].startswith(f"{tag} before"), timeout=20)
            os.kill(process.pid, signal.SIGSTOP)
            try:
                node.proxy.set_down(True)  # every connection of the node cut, its PUB/SUB one too
                await asyncio.to_thread(deliver, "stalled", 2)
                await eventually(lambda: logged_mails(redis_client, (a, b, c), tag, 3), 20, "the mails logged")
                node.proxy.set_down(False)
                held = Once()
                c_log = f"{PREFIX}:browser:{c.email.lower()}".encode()
                node.proxy.command_rule = lambda chunk: (
                    Verdict("forward", held.hold) if b"XINFO" in chunk and c_log in chunk and held.take() else FORWARD
                )
            finally:
                os.kill(process.pid, signal.SIGCONT)
            try:
                await asyncio.to_thread(deliver, "after")
                await asyncio.to_thread(held.fired.wait, 20)
                assert held.fired.is_set(), "the node never caught its rooms up"
                a2, a3, b2 = RecordingClient(), RecordingClient(), RecordingClient()
                sockets += [a2, a3, b2]
                await a2.connect(node.url, tokens[a.email])
                await a3.sio.connect(
                    node.url,
                    auth={"token": tokens[a.email], "lastEventId": last_a["eventId"]},
                    transports=["websocket"],
                    wait_timeout=5,
                )
                await b2.connect(node.url, tokens[b.email])
                points = {id(s): (await s.wait_for("resume_point", timeout=10))["eventId"] for s in (a2, b2)}
            finally:
                held.release()
            starts = {id(a1): "0-0", id(c1): "0-0", id(a3): last_a["eventId"], **points}
            owner = {id(a1): a, id(c1): c, id(a2): a, id(a3): a, id(b2): b}

            async def all_logged() -> bool:  # before, stalled x 2, after
                counts = [len(await log_mails(redis_client, x.email, tag)) for x in (a, b, c)]
                return counts == [4, 4, 4]

            await eventually(all_logged, 20, "every mail in its resume log")
            expected = {
                id(s): Counter(
                    subject
                    for event_id, subject in await log_mails(redis_client, owner[id(s)].email, tag)
                    if newer(event_id, starts[id(s)])
                )
                for s in sockets
            }
            with contextlib.suppress(AssertionError):  # compared below, case by case
                await eventually(
                    lambda: holds(all(mails_seen(s, tag) == expected[id(s)] for s in sockets)), 30, "every mail"
                )
            await asyncio.sleep(1.0)  # room for a duplicate
            got = {id(s): mails_seen(s, tag) for s in sockets}
            assert [got[id(s)] for s in sockets] == [expected[id(s)] for s in sockets]
            assert not [n for s in sockets for n, _e in s.events if n == "resync"]
        finally:
            for s in sockets:
                if s.sio.connected:
                    await s.close()


async def test_an_event_logged_but_not_heard_on_its_channel_is_replayed_before_the_next(
    stack: StackInfo, watcher: RecordingClient, redis_client: aioredis.Redis, account: Account
) -> None:
    """An event reached the account's resume log but not the node's channel (lost on its way, as
    PUB/SUB may lose one): the next event's previous id is not the last one the room had, so the
    node replays the missed one from the log first. The socket gets both, once each, in order."""
    tag = uuid.uuid4().hex[:6]
    lost, sent = f"lost on its way {tag}", f"the next one {tag}"
    log_key = f"{PREFIX}:browser:{account.email.lower()}"
    # A first mail heard: the node's subscription took effect (and its catch-up is done).
    await asyncio.to_thread(lmtp_deliver, stack, account.email, short_mail(account.email, f"first {tag}"))
    await watcher.wait_for("new_email", lambda e: e.get("subject") == f"first {tag}", timeout=20)
    seen = -1
    while seen != len(watcher.events):  # and what followed it (its unread_count) too
        seen = len(watcher.events)
        await asyncio.sleep(1.0)
    payload = {"account": account.email, "mailbox": "INBOX", "subject": lost}
    lost_id = (await redis_client.xadd(log_key, {"n": "new_email", "p": msgpack.packb(payload)})).decode()
    await asyncio.sleep(0.5)
    assert shown(watcher, lost) == []  # only logged: nothing heard of it
    await asyncio.to_thread(lmtp_deliver, stack, account.email, short_mail(account.email, sent))
    await watcher.wait_for("new_email", lambda e: e.get("subject") == sent, timeout=20)
    await asyncio.sleep(1.0)  # room for a second copy
    got = [e for name, e in watcher.events if name == "new_email" and e.get("subject") in (lost, sent)]
    assert [(e["subject"], e["eventId"] == lost_id) for e in got] == [(lost, True), (sent, False)]


# ------------------------------------------------------------------ a resume racing the log's trimming


async def test_a_resume_whose_log_is_trimmed_while_it_reads_asks_for_resync(
    stack: StackInfo, stack_launcher: Stack, http: aiohttp.ClientSession, account: Account, redis_client: aioredis.Redis
) -> None:
    """A socket resumes while its account's log is trimmed (as every publish does once the log is
    full) between the check that `since` is still in the log and the read: the check passed, the
    read came back short, and the socket missed events without a resync. The check now follows the
    read, so a trim in between shows."""
    token = await login(http, account)
    watcher = RecordingClient()
    await watcher.connect(stack.web_url, token)
    subjects = [f"trimmed {n} {uuid.uuid4().hex[:6]}" for n in range(3)]
    for subject in subjects:
        await asyncio.to_thread(lmtp_deliver, stack, account.email, short_mail(account.email, subject))
    first = await watcher.wait_for("new_email", lambda e: e["subject"] == subjects[0], timeout=20)
    await watcher.wait_for("new_email", lambda e: e["subject"] == subjects[-1], timeout=20)
    await watcher.close()
    log_key = f"{PREFIX}:browser:{account.email.lower()}"
    with proxied_node(stack_launcher, stack.redis_url, 44) as node:
        held = Once()
        node.proxy.command_rule = lambda chunk: (
            Verdict("forward", held.hold)
            if b"\r\nXRANGE\r\n" in chunk and log_key.encode() in chunk and held.take()
            else FORWARD
        )
        resumed = RecordingClient()
        try:
            auth = {"token": token, "lastEventId": first["eventId"]}
            await resumed.sio.connect(node.url, auth=auth, transports=["websocket"], wait_timeout=5)
            await asyncio.to_thread(held.fired.wait, 10)
            assert held.fired.is_set(), "the resume never read the log"
            await redis_client.xtrim(log_key, maxlen=0, approximate=False)
        finally:
            held.release()
        try:
            await eventually(
                lambda: holds(
                    any(name == "resync" for name, _e in resumed.events)
                    or all(shown(resumed, subject) for subject in subjects[1:])
                ),
                10,
                "the missed mails or a resync",
            )
        finally:
            await resumed.close()


# ------------------------------------------------------------------ 9b. a mail's facts belong to its recipients


async def test_another_senders_mail_with_the_same_message_id_does_not_change_a_mails_facts(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    """The filter's facts about a mail (attachments, size, category) were kept by Message-ID alone:
    anyone could send a mail with the Message-ID of someone else's to anyone (themselves), and the
    victim's mail was then shown with those facts when it next appeared (moved, copied). They are
    now kept by recipient and Message-ID."""
    message_id = make_msgid(domain="outside.test")
    victim_mail = EmailMessage()
    victim_mail["From"] = "friend@outside.test"
    victim_mail["To"] = account.email
    victim_mail["Subject"] = subject = f"with attachment {uuid.uuid4().hex[:6]}"
    victim_mail["Message-ID"] = message_id
    victim_mail.set_content("see attached")
    victim_mail.add_attachment(b"%PDF-1.4 " + os.urandom(4000), maintype="application", subtype="pdf", filename="a.pdf")
    forged = short_mail(other_account.email, f"forged {uuid.uuid4().hex[:6]}", sender="mallory@outside.test")
    forged["Message-ID"] = message_id

    victim = RecordingClient()
    await victim.connect(stack.web_url, await login(http, account))
    attacker = RecordingClient()
    await attacker.connect(stack.web_url, await login(http, other_account))
    try:
        await asyncio.to_thread(send_smtp, stack, [victim_mail])
        first = await victim.wait_for("new_email", lambda e: e["subject"] == subject, timeout=30)
        assert first["hasAttachments"] is True
        await asyncio.to_thread(send_smtp, stack, [forged])
        theirs = await attacker.wait_for("new_email", lambda e: e["subject"] == forged["Subject"], timeout=30)
        assert theirs["hasAttachments"] is False

        def move() -> None:
            imap = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
            imap.login(account.email, account.password)
            imap.create("Kept")
            imap.select("INBOX")
            imap.uid("MOVE", str(first["uid"]), "Kept")
            imap.logout()

        await asyncio.to_thread(move)
        moved = await victim.wait_for("new_email", lambda e: e["mailbox"] == "Kept", timeout=30)
        assert (moved["subject"], moved["hasAttachments"]) == (subject, True)
        assert moved["size"] == first["size"]
    finally:
        await victim.close()
        await attacker.close()


# ------------------------------------------------------------------ lost-event counts kept across a cancel


async def test_lost_event_counts_survive_a_cancelled_report(proxy: RedisProxy, tmp_path: Path) -> None:
    """The filter counts in Redis the events it could neither publish nor spool, after its next
    publish. The counts were taken out before the report's round trip and put back only on a Redis
    error: a publish cancelled during that round trip (its SMTP session gone) dropped them."""
    lost_key = f"test:lost:{uuid.uuid4().hex}"
    client = bridge_redis(proxy.url)
    publisher = Publisher(client, tmp_path, 1000, lost_key=lost_key)
    publisher.unreported["mail:postfix"] = 2
    held = Once()
    proxy.command_rule = lambda chunk: (
        Verdict("drop", held.hold) if b"HINCRBY" in chunk and lost_key.encode() in chunk and held.take() else FORWARD
    )
    reporting = asyncio.ensure_future(publisher._report_lost())
    try:
        await asyncio.to_thread(held.fired.wait, 5)
        assert held.fired.is_set()
        reporting.cancel()
        await asyncio.gather(reporting, return_exceptions=True)
    finally:
        held.release()
        await client.aclose()
    assert reporting.cancelled()
    assert publisher.unreported == {"mail:postfix": 2}
