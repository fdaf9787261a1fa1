"""REDIS_URL may name a Redis Cluster: a bridge node and the Dovecot hook on a real three-master cluster.

The cluster is three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`. A
bridge node of the session stack runs on it with the prefix `{mail}` (every key of the bridge in
one slot); a user's hook (per-user plugin settings) is pointed at a cluster node that does not hold
that slot, so its first write is answered MOVED. Mail delivered over LMTP must reach the user's
socket on that node, a flag change too, and a socket that comes back with its lastEventId must be
replayed what it missed: the streams, the fan-out, the resume log and the index counts all on the
cluster. Nothing may be left in the hook's spool.
"""

from __future__ import annotations

import asyncio
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

import aiohttp
import pytest
import redis

from bridge import codec
from bridge.errors import ConfigError
from bridge.events import MessageNew
from bridge.redis_url import hash_tag, parse_cluster_url
from bridge.stack.launcher import Stack, StackInfo
from tests.common import Account, free_port, login
from tests.mailtools import lmtp_deliver, short_mail
from tests.raw_socket import RawSocket
from tests.test_sieve_notifier import run as run_notifier
from tests.waiting import until, wait_until

PREFIX = "{mail}"


def test_cluster_urls_are_parsed() -> None:
    target = parse_cluster_url("redis+cluster://:s%40cret@n1:7000,n2:7001/")
    assert (target.nodes, target.password) == ((("n1", 7000), ("n2", 7001)), "s@cret")


@pytest.mark.parametrize("url", ["redis+cluster://n1", "redis+cluster://n1:port", "redis+cluster://n1:7000/3"])
def test_bad_cluster_urls_say_what_is_wrong(url: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        parse_cluster_url(url)


@pytest.mark.parametrize(
    ("key", "tag"), [("{mail}:dovecot", "mail"), ("mail:dovecot", ""), ("{}mail", ""), ("a{b}{c}", "b"), ("{a", "")]
)
def test_hash_tags_are_read_as_redis_cluster_reads_them(key: str, tag: str) -> None:
    assert hash_tag(key) == tag


@dataclass
class Cluster:
    ports: list[int]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def owner(self, key: str) -> int:
        """The port of the master that holds `key`'s slot."""
        with redis.Redis(port=self.ports[0], socket_timeout=2) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"no node holds slot {slot}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("redis-cluster")
    ports = [free_port() for _ in range(3)]
    processes = []
    try:
        for port in ports:
            (root / str(port)).mkdir()
            processes.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root / str(port)),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     # The bus port, by default the port + 10000: past 65535 for a high free port.
                     "--cluster-port", str(free_port()),
                     "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in ports:
            until(f"redis on {port}", lambda port=port: bool(redis.Redis(port=port, socket_timeout=1).ping()))
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            until(
                f"cluster state ok on {port}",
                lambda port=port: (
                    redis.Redis(port=port, socket_timeout=1).cluster("INFO")["cluster_state"] == "ok"  # type: ignore[no-untyped-call]
                ),
            )
        yield Cluster(ports)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_bridge_without_a_hash_tag_prefix_is_refused_on_a_cluster(stack: StackInfo, stack_launcher: Stack) -> None:
    base = stack_launcher.service("bridge")
    assert base.env is not None
    env = {**base.env, "REDIS_URL": "redis+cluster://127.0.0.1:1", "BRIDGE_STREAM_PREFIX": "mail"}
    result = subprocess.run(
        base.argv,
        env=env,
        cwd=base.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "BRIDGE_STREAM_PREFIX must be a hash tag on Redis Cluster" in result.stderr + result.stdout


@pytest.mark.e2e
async def test_a_bridge_node_and_the_hook_run_on_a_redis_cluster(
    stack: StackInfo, stack_launcher: Stack, cluster: Cluster
) -> None:
    stream = f"{PREFIX}:dovecot"
    elsewhere = next(p for p in cluster.ports if p != cluster.owner(stream))
    mail = pwd.getpwnam("mail")
    spools = {name: Path(stack.state_dir) / f"spool-cluster-{name}-{uuid.uuid4().hex[:6]}" for name in ("hook", "node")}
    for spool in spools.values():
        spool.mkdir()
        os.chown(spool, mail.pw_uid, mail.pw_gid)
    account = Account(f"cluster-{uuid.uuid4().hex[:10]}@example.test", secrets.token_urlsafe(12))
    stack_launcher.add_users(
        {account.email: account.password},
        userdb_fields={
            "mail_bridge_redis_host": "127.0.0.1",
            "mail_bridge_redis_port": str(elsewhere),
            "mail_bridge_stream": stream,
            "mail_bridge_spool_dir": str(spools["hook"]),
        },
    )
    url = stack_launcher.add_bridge_node(
        9,
        env={"REDIS_URL": cluster.url, "BRIDGE_STREAM_PREFIX": PREFIX, "BRIDGE_SPOOL_DIR": str(spools["node"])},
    )
    tag = uuid.uuid4().hex[:6]
    try:
        async with aiohttp.ClientSession() as http:
            async with aiohttp.ClientSession(base_url=url) as node:
                token = await login(node, account)
            socket = RawSocket(account.email, token)
            await socket.connect(http, url)
            try:
                await asyncio.to_thread(lmtp_deliver, stack, account.email, short_mail(account.email, f"{tag} one"))
                await wait_until(lambda: socket.subjects[f"{tag} one"] == 1, 30, "the first mail at the socket")

                def mark_read() -> None:
                    imap = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
                    try:
                        imap.login(account.email, account.password)
                        imap.select("INBOX")
                        imap.store("1", "+FLAGS", "(\\Seen)")
                    finally:
                        imap.logout()

                await asyncio.to_thread(mark_read)
                await wait_until(lambda: socket.names["email_flags"] >= 1, 30, "the flag change at the socket")
                await socket.close()

                # Away: a mail arrives; back with its lastEventId, it is replayed from the resume log.
                await asyncio.to_thread(lmtp_deliver, stack, account.email, short_mail(account.email, f"{tag} two"))
                await asyncio.sleep(0.5)
                await socket.connect(http, url)
                await wait_until(lambda: socket.subjects[f"{tag} two"] == 1, 30, "the missed mail replayed")

                # The index, on the cluster's counts: two mails, one read.
                headers = {"Authorization": f"Bearer {token}"}

                async def inbox() -> dict[str, int]:
                    async with http.get(f"{url}/api/v1/mailboxes", headers=headers) as r:
                        boxes = (await r.json())["mailboxes"]
                    box = next(b for b in boxes if b["name"] == "INBOX")
                    return {"unread": box["unread"], "total": box["total"]}

                deadline = time.monotonic() + 30
                counts = await inbox()
                while counts != {"unread": 1, "total": 2} and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    counts = await inbox()
                assert counts == {"unread": 1, "total": 2}
            finally:
                await socket.close()
        assert socket.subjects[f"{tag} one"] == 1 and socket.resyncs == 0
        assert [p.name for p in spools["hook"].iterdir()] == []  # the hook followed MOVED: nothing spooled
        with redis.Redis(port=cluster.owner(stream), socket_timeout=2) as client:
            assert client.xlen(stream) >= 3  # two deliveries and a flag change
    finally:
        stack_launcher.remove_service("bridge-9")
        for spool in spools.values():
            shutil.rmtree(spool, ignore_errors=True)


@pytest.mark.e2e  # the module's own cluster of redis-server processes
def test_the_sieve_notifier_follows_moved_to_the_node_of_its_stream(cluster: Cluster, tmp_path: Path) -> None:
    stream = f"{PREFIX}:sieve-{uuid.uuid4().hex[:6]}"
    elsewhere = next(p for p in cluster.ports if p != cluster.owner(stream))
    result = run_notifier("127.0.0.1", elsewhere, stream, tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # published, not spooled
    with redis.Redis(port=cluster.owner(stream), socket_timeout=2) as client:
        ((_entry_id, fields),) = client.xrange(stream)
    event = codec.decode(fields[b"e"])
    assert isinstance(event, MessageNew) and event.subject == "Grüße"
