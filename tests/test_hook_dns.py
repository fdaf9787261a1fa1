"""The hook resolves host names within its time bound (hooks/mail-bridge-push.lua, "names").

LuaSocket's connect(name) asks the C library's getaddrinfo, which waits for as long as the name
services take and knows nothing of the hook's 250 ms: with a host name for Redis and a resolver that
does not answer, every delivery and every IMAP command would wait with it. Two resolvers that do not
answer, both on loopback and only for the test's own names:
- nsswitch.conf's mdns4_minimal (libnss-mdns) asks the Avahi daemon for names under `.local`; a
  daemon socket that accepts and never answers makes getaddrinfo wait until it closes;
- a DNS server of the test's own (mail_bridge_dns_servers) that answers, then falls silent.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import secrets
import shutil
import smtplib
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from bridge import codec
from bridge.events import Event, FlagsSet, MessageNew
from bridge.stack.launcher import Stack, StackInfo
from tests.common import Account
from tests.mailtools import StreamWatch, lmtp_deliver, short_mail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# The hook's bound is 250 ms; a delivery or an IMAP command takes some ms besides. A ceiling, well
# below what a stalled lookup costs (until the resolver answers: here, never).
CEILING_S = 1.5
AVAHI_SOCKET = Path("/run/avahi-daemon/socket")  # libnss-mdns's AVAHI_SOCKET (/var/run links to /run)


class SilentAvahi:
    """A socket where libnss-mdns expects the Avahi daemon: it takes every question and answers none,
    until closed (then the waiting lookups fail, and whatever waited on them goes on)."""

    def __init__(self) -> None:
        if AVAHI_SOCKET.exists():
            raise AssertionError(f"{AVAHI_SOCKET} exists (an Avahi daemon runs here): not replacing it")
        self.made_dir = not AVAHI_SOCKET.parent.exists()
        AVAHI_SOCKET.parent.mkdir(exist_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(AVAHI_SOCKET))
        os.chmod(AVAHI_SOCKET, 0o666)  # Dovecot's processes run as the mail user
        self.server.listen(64)
        self.server.settimeout(0.1)
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="silent-avahi", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.server.accept()
                self.held.append(conn)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.server.close()
        AVAHI_SOCKET.unlink(missing_ok=True)
        if self.made_dir:
            with contextlib.suppress(OSError):
                AVAHI_SOCKET.parent.rmdir()


@pytest.fixture
def silent_avahi() -> Iterator[SilentAvahi]:
    avahi = SilentAvahi()
    try:
        yield avahi
    finally:
        avahi.close()


class FakeDns:
    """A DNS server on loopback (RFC 1035) that names every A question 127.0.0.1 with a 1 s TTL,
    until told to fall silent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.silent = False
        self.questions: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            labels, pos = [], 12
            while pos < len(query) and query[pos]:
                labels.append(query[pos + 1 : pos + 1 + query[pos]].decode())
                pos += 1 + query[pos]
            (qtype,) = struct.unpack(">H", query[pos + 1 : pos + 3])
            self.questions.append(".".join(labels))
            if self.silent:
                continue
            answers = 1 if qtype == 1 else 0  # no AAAA
            reply = query[:2] + struct.pack(">HHHHH", 0x8180, 1, answers, 0, 0) + query[12 : pos + 5]
            if answers:
                reply += struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton("127.0.0.1")
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def fake_dns() -> Iterator[FakeDns]:
    dns = FakeDns()
    try:
        yield dns
    finally:
        dns.close()


@pytest.fixture
def spool(stack: StackInfo) -> Iterator[Path]:
    """A spool of the test's own (the bridge does not drain it), writable by the mail user."""
    path = Path(stack.state_dir) / f"dns-spool-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    mail = pwd.getpwnam("mail")
    os.chown(path, mail.pw_uid, mail.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def hook_user(launcher: Stack, **settings: str) -> Account:
    account = Account(f"dns-{uuid.uuid4().hex[:10]}@example.test", secrets.token_urlsafe(12))
    launcher.add_users({account.email: account.password}, {f"mail_bridge_{k}": v for k, v in settings.items()})
    return account


def spooled(spool: Path) -> list[Event]:
    events: list[Event] = []
    for path in sorted(spool.glob("*.mp")):
        with open(path, "rb") as f:
            events += [codec.from_wire(wire) for _stream, wire in msgpack.Unpacker(f, raw=False)]
    return events


def timed(action: Any, *args: Any) -> float:
    started = time.monotonic()
    action(*args)
    return time.monotonic() - started


def deliver(stack: StackInfo, email: str, subject: str) -> None:
    """One LMTP delivery; the client waits at most 10 s (a stalled hook holds the reply)."""
    with smtplib.LMTP(stack.lmtp["host"], stack.lmtp["port"], timeout=10) as lmtp:
        lmtp.send_message(short_mail(email, subject), to_addrs=[email])


def test_a_name_lookup_that_never_answers_does_not_stall_deliveries(
    stack: StackInfo, stack_launcher: Stack, spool: Path, silent_avahi: SilentAvahi
) -> None:
    name = f"redis-{uuid.uuid4().hex[:8]}.local"
    # The hang is real: the C library's lookup of the name waits on the silent daemon.
    try:
        subprocess.run(["getent", "hosts", name], timeout=1.0, capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        pass
    else:
        raise AssertionError(
            "getent answered at once: the C library here does not ask mDNS for .local names (Debian's"
            " libnss-mdns, with mdns4_minimal on the hosts line of /etc/nsswitch.conf), so the stall this test"
            " needs cannot be made"
        )
    account = hook_user(stack_launcher, redis_host=name, spool_dir=str(spool))
    took = [timed(deliver, stack, account.email, f"mail {n}") for n in range(3)]
    assert max(took) < CEILING_S, took
    # Nothing lost: the events wait in the spool, for the drainer.
    assert [e.subject for e in spooled(spool) if isinstance(e, MessageNew)] == ["mail 0", "mail 1", "mail 2"]


def test_names_are_resolved_within_the_bound_and_remembered(
    stack: StackInfo, stack_launcher: Stack, spool: Path, fake_dns: FakeDns
) -> None:
    redis_port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
    name = f"redis-{uuid.uuid4().hex[:8]}.hook-dns.test"
    account = hook_user(
        stack_launcher,
        redis_host=name,
        redis_port=redis_port,
        dns_servers=f"127.0.0.1:{fake_dns.port}",
        spool_dir=str(spool),
    )
    client = redis.Redis.from_url(stack.redis_url)
    imap = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
    try:
        watch = StreamWatch(client, account.email)
        lmtp_deliver(stack, account.email, short_mail(account.email, "resolved"))
        _create, new = watch.expect(2)  # published straight to Redis, at the address the DNS gave
        assert isinstance(new, MessageNew) and new.subject == "resolved"
        assert name in fake_dns.questions

        imap.login(account.email, account.password)
        imap.select("INBOX")

        def store(keyword: str) -> None:
            status, data = imap.uid("STORE", "1", "+FLAGS", f"({keyword})")
            assert status == "OK", data

        asked = len(fake_dns.questions)
        assert timed(store, "$Resolved") < CEILING_S  # this IMAP process resolves the name once
        assert len(fake_dns.questions) == asked + 1
        fake_dns.silent = True
        assert timed(store, "$Remembered") < CEILING_S  # within the answer's TTL: not asked again
        assert len(fake_dns.questions) == asked + 1
        time.sleep(1.2)  # the TTL is over, and the DNS no longer answers
        assert timed(store, "$Stale") < CEILING_S  # asked, no answer: the address it had still serves
        assert len(fake_dns.questions) == asked + 2
        events = watch.expect(3)
        assert [e.keywords for e in events if isinstance(e, FlagsSet)] == [
            ("$Resolved",),
            ("$Remembered",),
            ("$Stale",),
        ]
        assert spooled(spool) == []

        # A name never resolved, with the DNS silent: spooled within the bound, not lost.
        other = hook_user(
            stack_launcher,
            redis_host=f"never-{uuid.uuid4().hex[:8]}.hook-dns.test",
            redis_port=redis_port,
            dns_servers=f"127.0.0.1:{fake_dns.port}",
            spool_dir=str(spool),
        )
        assert timed(deliver, stack, other.email, "spooled") < CEILING_S
        assert [e.subject for e in spooled(spool) if isinstance(e, MessageNew)] == ["spooled"]
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()
        client.close()
