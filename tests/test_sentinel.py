"""REDIS_URL may name Redis Sentinel: the bridge asks the sentinels for the master and uses it.

A real `redis-server --sentinel` monitors the session stack's Redis; the bridge's own client factory
(bridge.app.redis_client), given a redis+sentinel:// URL, writes and reads the stack's streams.
The Dovecot hook, given mail_bridge_redis_sentinels, follows a real failover of a master and
replica of its own (SIGKILL of the master, promotion by the sentinel).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import pwd
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bridge import codec
from bridge.app import redis_client
from bridge.errors import ConfigError
from bridge.events import FlagsSet, MessageNew
from bridge.redis_url import parse_sentinel_url
from bridge.spool import DRAIN_LOCK, SpoolDrainer
from bridge.stack.launcher import Stack, StackInfo
from tests.common import free_port
from tests.mailtools import lmtp_deliver, short_mail
from tests.waiting import until


def test_sentinel_urls_are_parsed() -> None:
    target = parse_sentinel_url("redis+sentinel://:s%40cret@s1:26380,s2/mail-master/2")
    assert (target.sentinels, target.service, target.db, target.password) == (
        (("s1", 26380), ("s2", 26379)),
        "mail-master",
        2,
        "s@cret",
    )


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://s1:26379", "redis+sentinel://s1:port/m", "redis+sentinel://:x@/m", "redis+sentinel://s1/m/x"],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        parse_sentinel_url(url)


@pytest.fixture
def sentinel(stack: StackInfo, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor mail-master 127.0.0.1 {redis_port} 1\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answer = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name("mail-master")
                if answer:
                    break
            except redis.RedisError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("Sentinel did not come up")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_the_bridge_reaches_redis_through_sentinel(stack: StackInfo, sentinel: int) -> None:
    key = f"mail:test-sentinel:{uuid.uuid4().hex[:8]}"
    client = redis_client(f"redis+sentinel://127.0.0.1:{sentinel}/mail-master/0")
    try:
        entry = await client.xadd(key, {"e": b"through sentinel"})
    finally:
        await client.aclose()
    direct = redis.Redis.from_url(stack.redis_url)
    try:
        assert [(i, f) for i, f in direct.xrange(key)] == [(entry, {b"e": b"through sentinel"})]
        direct.delete(key)
    finally:
        direct.close()


# ---------------------------------------------------------------------------- the hook across a failover

MASTER = "mail-failover"


@dataclass
class FailoverSet:
    """A master, its replica and one sentinel watching them: private to one test."""

    master: int
    replica: int
    sentinel: int
    processes: dict[int, subprocess.Popen[bytes]]

    def named_master(self) -> int | None:
        with redis.Redis(port=self.sentinel, socket_timeout=1) as client:
            answer = client.sentinel_get_master_addr_by_name(MASTER)
        return int(answer[1]) if answer else None


def _redis_server(tmp: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def failover_set(tmp_path: Path) -> Iterator[FailoverSet]:
    master, replica, sentinel = free_port(), free_port(), free_port()
    processes = {
        master: _redis_server(tmp_path / "master", master),
        replica: _redis_server(tmp_path / "replica", replica, "--replicaof", "127.0.0.1", str(master)),
    }
    conf = tmp_path / "sentinel.conf"
    # Down after 2 s: long enough for a delivery to meet the master gone before the sentinel acts.
    conf.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 2000\nsentinel failover-timeout {MASTER} 10000\n"
    )
    processes[sentinel] = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    found = FailoverSet(master, replica, sentinel, processes)
    try:
        with redis.Redis(port=replica, socket_timeout=1) as client:
            until("the replica in sync", lambda: client.info("replication").get("master_link_status") == "up")
        with redis.Redis(port=sentinel, socket_timeout=1) as client:
            # The sentinel learns of replicas from the master's INFO, every 10 s at first.
            until("the sentinel knowing the replica", lambda: bool(client.sentinel_slaves(MASTER)))
        yield found
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.e2e
def test_the_hook_follows_a_sentinel_failover_and_its_spool_drains_into_the_new_master(
    stack: StackInfo, stack_launcher: Stack, failover_set: FailoverSet
) -> None:
    """The hook, pointed at the sentinel (per-user plugin settings), publishes to the master. With the
    master killed, a change before the failover is spooled, and the bridge's drainer, through the
    sentinel, moves it into the new master. In the same IMAP session (the same process, which
    remembers the old master), the next change goes straight to the new master."""
    email, password = f"sentinel-{uuid.uuid4().hex[:10]}@example.test", secrets.token_urlsafe(12)
    mail = pwd.getpwnam("mail")
    spool = Path(stack.state_dir) / f"spool-{uuid.uuid4().hex[:8]}"
    spool.mkdir()
    os.chown(spool, mail.pw_uid, mail.pw_gid)
    stack_launcher.add_users(
        {email: password},
        userdb_fields={
            "mail_bridge_redis_sentinels": f"127.0.0.1:{failover_set.sentinel}",
            "mail_bridge_redis_master": MASTER,
            "mail_bridge_spool_dir": str(spool),
            "mail_bridge_timeout_msecs": "1000",
        },
    )

    def seen(port: int) -> list[str]:
        """What the account's events in the stream say: new mail by subject, keywords set."""
        with redis.Redis(port=port, socket_timeout=2) as client:
            events = [codec.decode(fields[b"e"]) for _id, fields in client.xrange("mail:dovecot")]
        out = []
        for e in events:
            if isinstance(e, MessageNew) and e.account == email:
                out.append(f"new {e.subject}")
            elif isinstance(e, FlagsSet) and e.account == email:
                out.extend(f"set {k}" for k in e.keywords)
        return out

    async def drain() -> int:
        client = redis_client(f"redis+sentinel://127.0.0.1:{failover_set.sentinel}/{MASTER}/0")
        try:
            return await SpoolDrainer(client, spool, maxlen=1000).drain_once()
        finally:
            await client.aclose()

    imap = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
    try:
        lmtp_deliver(stack, email, short_mail(email, "one"))
        imap.login(email, password)
        imap.select("INBOX")
        imap.store("1", "+FLAGS", "($First)")
        assert seen(failover_set.master) == ["new one", "set $First"]
        until("the replica in step", lambda: seen(failover_set.replica) == ["new one", "set $First"])

        failover_set.processes[failover_set.master].kill()
        failover_set.processes[failover_set.master].wait()
        imap.store("1", "+FLAGS", "($Second)")  # the sentinel still names the dead master: spooled
        assert failover_set.named_master() == failover_set.master
        assert [p.suffix for p in spool.iterdir() if p.suffix == ".mp"] == [".mp"]

        until("the failover", lambda: failover_set.named_master() == failover_set.replica)
        assert asyncio.run(drain()) == 1
        # The IMAP process still remembers the old master: refused, it asks the sentinel again.
        imap.store("1", "+FLAGS", "($Third)")
        lmtp_deliver(stack, email, short_mail(email, "two"))
        assert seen(failover_set.replica) == ["new one", "set $First", "set $Second", "set $Third", "new two"]
        # The last two went to Redis, not to the spool (where only the drainer's lock file stays).
        assert [p.name for p in spool.iterdir()] == [DRAIN_LOCK]
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()
        shutil.rmtree(spool, ignore_errors=True)
