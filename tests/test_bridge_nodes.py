"""Three bridge processes serving the same users behind a TCP round-robin, as a load balancer would.

Two more `mail-bridge serve` processes join the session's bridge, each with its own HTTP port and
consumer name and the same Redis, store and Dovecot. Browsers connect through a round-robin TCP
proxy, so the sockets of one account land on different nodes. Every mail must reach every socket
exactly once, whichever node relayed it; a socket that reconnects through the proxy (to another
node) with its lastEventId must get what it missed exactly once; the ingest is shared by the
consumer groups; the unread counts the three indexers keep stay right.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import EmailMessage

import aiohttp
import pytest
import redis
import redis.asyncio

from bridge.stack.launcher import Stack, StackInfo
from tests.common import AccountPool, login
from tests.mailtools import lmtp_deliver, send_smtp, short_mail
from tests.raw_socket import RawSocket

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

NODES = 3


class RoundRobin:
    """A TCP proxy handing each new connection to the next backend in turn."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = itertools.cycle(backends)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            backend_r, backend_w = await asyncio.open_connection("127.0.0.1", next(self.backends))
        except OSError:
            client_w.close()
            return
        for source, sink in ((client_r, backend_w), (backend_r, client_w)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@dataclass
class Cluster:
    ports: list[int]  # each node's HTTP port; the first is the session's bridge
    proxy: RoundRobin

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"


@pytest.fixture(scope="module")
def extra_nodes(stack: StackInfo, stack_launcher: Stack) -> Iterator[list[int]]:
    """Two more bridge processes beside the session's own: same settings, their own port and name."""
    names = [f"bridge-{n}" for n in range(2, NODES + 1)]
    try:
        yield [int(stack_launcher.add_bridge_node(n).rsplit(":", 1)[1]) for n in range(2, NODES + 1)]
    finally:
        for name in names:
            with contextlib.suppress(KeyError):
                stack_launcher.remove_service(name)


@pytest.fixture
async def cluster(stack: StackInfo, extra_nodes: list[int]) -> AsyncIterator[Cluster]:
    first = int(stack.web_url.rsplit(":", 1)[1])
    proxy = RoundRobin([first, *extra_nodes])
    await proxy.start()
    yield Cluster([first, *extra_nodes], proxy)
    await proxy.close()


async def shown_everywhere(sockets: list[RawSocket], subjects: dict[str, list[str]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(all(s.subjects[x] for x in subjects[s.account]) for s in sockets):
            return
        await asyncio.sleep(0.1)


async def test_three_nodes_deliver_once_per_socket_and_resume_across_nodes(
    cluster: Cluster, stack: StackInfo, account_pool: AccountPool
) -> None:
    accounts = [account_pool.take() for _ in range(3)]
    tag = uuid.uuid4().hex[:6]
    subjects: dict[str, list[str]] = {a.email: [] for a in accounts}

    def round_of_mail(name: str) -> list[EmailMessage]:
        batch = []
        for a in accounts:
            for n in range(3):
                subjects[a.email].append(f"{tag} {name} {n} {a.email}")
                batch.append(short_mail(a.email, f"{tag} {name} {n} {a.email}"))
        return batch

    async with aiohttp.ClientSession() as http:
        # Logins through the proxy too: any node issues tokens every node accepts.
        tokens = {}
        for a in accounts:
            async with aiohttp.ClientSession(base_url=cluster.url) as via_proxy:
                tokens[a.email] = await login(via_proxy, a)
        # Three sockets per account, connected one after another: round-robin puts them on three nodes.
        sockets = [RawSocket(a.email, tokens[a.email]) for a in accounts for _ in range(NODES)]
        try:
            for s in sockets:
                await s.connect(http, cluster.url)
            await asyncio.to_thread(send_smtp, stack, round_of_mail("first"))
            await shown_everywhere(sockets, subjects)
            # One socket per account drops; mail arrives; it comes back through the proxy, which
            # hands the new connection to the next node in turn, with its lastEventId.
            away = sockets[::NODES]
            for s in away:
                await s.close()
            await asyncio.to_thread(send_smtp, stack, round_of_mail("while away"))
            await shown_everywhere([s for s in sockets if s not in away], subjects)
            for s in away:
                await s.connect(http, cluster.url)
            await asyncio.to_thread(send_smtp, stack, round_of_mail("after"))
            await shown_everywhere(sockets, subjects)
            await asyncio.sleep(1.0)  # room for a duplicate from another node
        finally:
            await asyncio.gather(*(s.close() for s in sockets))
    missing = {(s.account, x) for s in sockets for x in subjects[s.account] if not s.subjects[x]}
    doubled = {(s.account, x) for s in sockets for x in subjects[s.account] if s.subjects[x] > 1}
    assert (sorted(missing), sorted(doubled)) == ([], [])
    assert sum(s.resyncs for s in sockets) == 0

    client = redis.Redis.from_url(stack.redis_url)
    try:
        consumers = {c["name"].decode() for c in client.xinfo_consumers("mail:dovecot", "bridge")}
    finally:
        client.close()
    assert {f"bridge-{n}" for n in range(1, NODES + 1)} <= consumers  # the ingest is shared

    # The three indexers share the index group too: each account's unread count, whichever node
    # answers, is the nine mails it was sent (none was read).
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        counts: dict[tuple[int, str], int] = {}
        while time.monotonic() < deadline:
            counts = {}
            for port, a in itertools.product(cluster.ports, accounts):
                headers = {"Authorization": f"Bearer {tokens[a.email]}"}
                async with http.get(f"http://127.0.0.1:{port}/api/v1/mailboxes", headers=headers) as r:
                    boxes = (await r.json())["mailboxes"]
                counts[(port, a.email)] = next(b["unread"] for b in boxes if b["name"] == "INBOX")
            if set(counts.values()) == {9}:
                break
            await asyncio.sleep(0.5)
    assert set(counts.values()) == {9}, counts


async def _quiet(sockets: list[RawSocket], seconds: float = 2.0, timeout: float = 30.0) -> None:
    """Until no socket has seen a new event for `seconds`."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_seen = sum(sum(s.names.values()) for s in sockets)
        if now_seen != seen:
            seen, since = now_seen, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        await asyncio.sleep(0.1)


async def test_a_node_cut_off_from_its_channels_replays_what_it_missed_from_the_resume_logs(
    cluster: Cluster, stack: StackInfo, stack_launcher: Stack, account_pool: AccountPool
) -> None:
    """A node stalls (SIGSTOP, as a long pause would) and Redis drops every node's PUB/SUB connection
    (a network cut, a failover) before mail comes: PUB/SUB keeps nothing for a subscriber that is
    away. When the node runs again it subscribes again, and its sockets get every mail exactly once,
    from the resume logs, with no resync: also for an account whose log began in the stall. The
    running nodes, cut off too, miss nothing either."""
    accounts = [account_pool.take() for _ in range(3)]
    late = accounts[-1]  # no mail before the stall
    tag = uuid.uuid4().hex[:6]
    subjects: dict[str, list[str]] = {a.email: [] for a in accounts}
    stalled = stack_launcher.service(f"bridge-{NODES}").process
    assert stalled is not None

    def deliver(name: str) -> None:
        for a in accounts:
            if a is late and name == "before":
                continue
            for n in range(3):
                subject = f"{tag} {name} {n} {a.email}"
                subjects[a.email].append(subject)
                lmtp_deliver(stack, a.email, short_mail(a.email, subject))

    client = redis.asyncio.Redis.from_url(stack.redis_url)
    async with aiohttp.ClientSession() as http:
        tokens = {}
        for a in accounts:
            async with aiohttp.ClientSession(base_url=cluster.url) as via_proxy:
                tokens[a.email] = await login(via_proxy, a)
        # One socket per account on each node, straight to the node.
        by_node = {port: [RawSocket(a.email, tokens[a.email]) for a in accounts] for port in cluster.ports}
        sockets = [s for group in by_node.values() for s in group]
        running = [s for port in cluster.ports[:-1] for s in by_node[port]]
        try:
            for port, group in by_node.items():
                for s in group:
                    await s.connect(http, f"http://127.0.0.1:{port}")
            await asyncio.to_thread(deliver, "before")
            await shown_everywhere(sockets, subjects)
            await _quiet(sockets, seconds=1.0)
            # The late account's log starts in the stall (its connection's own events dropped).
            await client.delete(f"mail:browser:{late.email.lower()}")
            gaps_before = await _gaps(http, cluster.ports[-1])
            os.kill(stalled.pid, signal.SIGSTOP)
            try:
                killed = await client.client_kill_filter(_type="pubsub")
                assert killed >= NODES  # every node's; the stalled one cannot subscribe again yet
                await asyncio.to_thread(deliver, "while stalled")
                # The running nodes have emitted all they could (what the stalled node's consumers
                # took before it stopped waits for it).
                await _quiet(running)
            finally:
                os.kill(stalled.pid, signal.SIGCONT)
            # Before any more mail (whose ids would also show what was missed): the node caught
            # its rooms up as soon as it had subscribed again.
            await shown_everywhere(sockets, subjects)
            missed_until_more = {(s.account, x) for s in sockets for x in subjects[s.account] if not s.subjects[x]}
            await asyncio.to_thread(deliver, "after")
            await shown_everywhere(sockets, subjects)
            await asyncio.sleep(1.0)  # room for a duplicate
            gaps_after = await _gaps(http, cluster.ports[-1])
        finally:
            await asyncio.gather(*(s.close() for s in sockets))
            await client.aclose()
    missing = {(s.account, x) for s in sockets for x in subjects[s.account] if not s.subjects[x]}
    doubled = {(s.account, x) for s in sockets for x in subjects[s.account] if s.subjects[x] > 1}
    assert (sorted(missed_until_more), sorted(missing), sorted(doubled)) == ([], [], [])
    assert sum(s.resyncs for s in sockets) == 0
    assert gaps_after > gaps_before  # the stalled node replayed what it missed from the logs


async def _gaps(http: aiohttp.ClientSession, port: int) -> float:
    """The node's mailbridge_fanout_gaps_total (times it replayed what it missed on a channel)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("mailbridge_fanout_gaps_total")))
