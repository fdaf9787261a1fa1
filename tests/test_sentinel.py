"""REDIS_URL may name Redis Sentinel: the bridge asks the sentinels for the master and uses it.

A real `redis-server --sentinel` monitors the session stack's Redis; the bridge's own client factory
(bridge.app.redis_client), given a redis+sentinel:// URL, writes and reads the stack's streams.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.app import redis_client
from bridge.errors import ConfigError
from bridge.settings import parse_sentinel_url
from bridge.stack.launcher import StackInfo
from tests.conftest import free_port


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
