"""Reliability scenario 5: a reconnect storm, and a socket that stops reading.

The storm: every socket (200 in the fast run, 1,000 under `make reliability`) loses its connection
at the same instant, mail arrives meanwhile, and all reconnect at once with their lastEventId:
each must be shown every mail of its account exactly once. The slow socket: one of an account's
sockets stops reading while a flood of events goes to that account; the others must get every
event, and the slow one must be dropped at its bound (bridge.slow_sockets) rather than buffered.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid

import aiohttp
import pytest

from bridge.stack.launcher import StackInfo
from tests.common import Account, login
from tests.mailtools import send_smtp, short_mail, wait_for_messages
from tests.raw_socket import RawSocket
from tests.reliability import Rig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SOCKETS_PER_ACCOUNT = 10


async def wait_all(sockets: list[RawSocket], subjects: dict[str, list[str]], timeout: float) -> None:
    """Until every socket has been shown every subject sent to its account (or the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(all(s.subjects[x] for x in subjects[s.account]) for s in sockets):
            return
        await asyncio.sleep(0.2)


def small_receive_buffer(addr_info: tuple[int, int, int, str, tuple[str, int]]) -> socket.socket:
    family, kind, proto, _name, _address = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def metric(http: aiohttp.ClientSession, name: str) -> float:
    async with http.get("/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.reliability(5, "Reconnect storm: every socket dropped and reconnecting at once")
async def test_reconnect_storm(rig: Rig) -> None:
    stack, scenario = rig.stack, rig.scenario
    total = 1000 if rig.full else 200
    accounts = rig.accounts(total // SOCKETS_PER_ACCOUNT)
    tag = uuid.uuid4().hex[:6]
    scenario.load = (
        f"{total:,} sockets ({len(accounts)} accounts x {SOCKETS_PER_ACCOUNT}), 3 mails per account:"
        " before, during and after the drop"
    )
    scenario.checked = (
        "all sockets cut at once (no close handshake), a mail to every account while they are away, all"
        " reconnecting at the same moment with lastEventId: every socket shown each mail exactly once."
    )
    subjects: dict[str, list[str]] = {a.email: [] for a in accounts}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url=stack.web_url, connector=connector) as http:
        tokens = {a.email: await login(http, a) for a in accounts}
        sockets = [RawSocket(a.email, tokens[a.email]) for a in accounts for _ in range(SOCKETS_PER_ACCOUNT)]
        try:
            await asyncio.gather(*(s.connect(http, stack.web_url) for s in sockets))

            async def round_of_mail(name: str) -> None:
                batch = [short_mail(a.email, f"{tag} {name} {a.email}") for a in accounts]
                for a in accounts:
                    subjects[a.email].append(f"{tag} {name} {a.email}")
                await asyncio.to_thread(send_smtp, stack, batch)

            await round_of_mail("before")
            await wait_all(sockets, subjects, 60)
            for s in sockets:
                s.drop()
            await round_of_mail("while away")
            for a in accounts:  # delivered and published while every socket is away
                await asyncio.to_thread(wait_for_messages, stack, a.email, a.password, 2, 60)
            started = time.monotonic()
            results = await asyncio.gather(*(s.connect(http, stack.web_url) for s in sockets), return_exceptions=True)
            reconnect_s = time.monotonic() - started
            failed = [r for r in results if isinstance(r, BaseException)]
            assert failed == [], f"{len(failed)} reconnects failed, e.g. {failed[:3]}"
            await round_of_mail("after")
            await wait_all(sockets, subjects, 90)
            await asyncio.sleep(1.0)  # room for a duplicate
        finally:
            await asyncio.gather(*(s.close() for s in sockets))
    expected = sum(len(subjects[s.account]) for s in sockets)
    received = sum(sum(1 for x in subjects[s.account] if s.subjects[x]) for s in sockets)
    duplicated = sum(sum(1 for x in subjects[s.account] if s.subjects[x] > 1) for s in sockets)
    scenario.mails_sent = scenario.mails_delivered = 3 * len(accounts)
    scenario.events_expected, scenario.events_received, scenario.events_duplicated = expected, received, duplicated
    scenario.note(f"All {total:,} reconnected in {reconnect_s:.1f} s.")
    assert (received, duplicated) == (expected, 0)
    assert sum(s.resyncs for s in sockets) == 0


# A long name makes each event about 400 bytes: the slow socket's buffers fill within the flood.
FLOOD_MAILBOX = "Flood-" + "x" * 240


def subscription_flood(stack: StackInfo, account: Account, commands: int) -> None:
    """`commands` IMAP SUBSCRIBE / UNSUBSCRIBE commands, pipelined (RFC 9051 allows a client to send
    commands without waiting): each is a mailbox event for the account's sockets, and none touches
    the index (so the flood tests the sockets, not the store)."""
    with socket.create_connection((stack.imap["host"], stack.imap["port"]), timeout=60) as imap:
        reader = imap.makefile("rb")
        reader.readline()  # greeting
        imap.sendall(f'a LOGIN "{account.email}" "{account.password}"\r\n'.encode())
        while not reader.readline().startswith(b"a "):
            pass
        imap.sendall(f"b CREATE {FLOOD_MAILBOX}\r\n".encode())  # Dovecot subscribes only existing ones
        while not reader.readline().startswith(b"b "):
            pass
        for start in range(0, commands, 500):
            batch = range(start, min(commands, start + 500))
            verbs = ("SUBSCRIBE", "UNSUBSCRIBE")
            imap.sendall(b"".join(f"c{n} {verbs[n % 2]} {FLOOD_MAILBOX}\r\n".encode() for n in batch))
            done = 0
            while done < len(batch):
                line = reader.readline()
                if not line:
                    raise ConnectionError("IMAP closed during the flood")
                if line.startswith(b"c"):
                    assert b" OK " in line, line
                    done += 1
        imap.sendall(b"z LOGOUT\r\n")


@pytest.mark.reliability(5, "Slow socket: one reader stops while its account gets a flood of events")
async def test_slow_socket_is_dropped_not_buffered(rig: Rig) -> None:
    stack, scenario, account = rig.stack, rig.scenario, rig.account
    expected_events = 10_000 if rig.full else 6_000
    readers_count = SOCKETS_PER_ACCOUNT
    scenario.load = (
        f"{readers_count} reading sockets and 1 that never reads, on one account; {expected_events:,} IMAP"
        " SUBSCRIBE/UNSUBSCRIBE commands, pipelined (one mailbox event each)"
    )
    scenario.checked = (
        "every reading socket gets every event; the socket that stopped reading is dropped once its queue"
        " passes the bound (counted in /metrics), never stalling the others."
    )
    # The slow socket's own receive buffer is small from the start (set before connect, which also
    # stops the kernel growing it), and it never reads: the bridge's send side fills up.
    slow_connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with (
        aiohttp.ClientSession(base_url=stack.web_url) as http,
        aiohttp.ClientSession(connector=slow_connector) as slow_http,
    ):
        token = await login(http, account)
        dropped_before = await metric(http, "mailbridge_slow_sockets_dropped_total")
        readers = [RawSocket(account.email, token) for _ in range(readers_count)]
        slow = RawSocket(account.email, token)
        try:
            await asyncio.gather(*(r.connect(http, stack.web_url) for r in readers))
            await slow.connect(slow_http, stack.web_url, read=False)

            def flood_events(r: RawSocket) -> int:
                return r.mailbox_actions["subscribed"] + r.mailbox_actions["unsubscribed"]

            base = [flood_events(r) for r in readers]
            started = time.monotonic()
            await asyncio.to_thread(subscription_flood, stack, account, expected_events)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if all(flood_events(r) - b >= expected_events for r, b in zip(readers, base, strict=True)):
                    break
                await asyncio.sleep(0.2)
            took = time.monotonic() - started
            got = [flood_events(r) - b for r, b in zip(readers, base, strict=True)]
            dropped = await metric(http, "mailbridge_slow_sockets_dropped_total") - dropped_before
        finally:
            await asyncio.gather(*(r.close() for r in readers), slow.close())
    scenario.events_expected = expected_events * readers_count
    scenario.events_received = sum(min(g, expected_events) for g in got)
    scenario.events_duplicated = sum(max(0, g - expected_events) for g in got)
    scenario.note(
        f"Slow sockets dropped: {dropped:g}; every reader had every event {took:.1f} s after the flood began."
    )
    assert got == [expected_events] * readers_count
    assert dropped == 1
