"""REDIS_URL's two forms beyond redis-py's own: a Sentinel set and a Redis Cluster.

Parsed here, for the settings' validation at start and for `bridge.app` and the installer, which
open the connection each form names; `hash_tag` is how Redis Cluster picks a key's slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from bridge.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where Redis Sentinel is asked for the current master (redis-py's asyncio Sentinel)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


SENTINEL_SCHEME = "redis+sentinel"


def _hosts(part: str, what: str, default_port: int | None = None) -> tuple[tuple[tuple[str, int], ...], str | None]:
    """`[:password@]host:port[,host:port...]` of a Sentinel or Cluster URL: the addresses, and the
    password if any. Without `default_port`, every address needs its port."""
    password = None
    if "@" in part:
        auth, _, part = part.rpartition("@")
        password = unquote(auth.partition(":")[2] or auth) or None
    found = []
    for item in part.split(","):
        host, _, port = item.strip().rpartition(":")
        if ":" not in item and default_port is not None:
            host, port = item.strip(), str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"REDIS_URL: bad {what} {item!r} (host:port)")
        found.append((host, int(port)))
    return tuple(found), password


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[:password@]host[:port][,host[:port]...]/service[/db]` (port 26379 by
    default): the sentinels to ask, the monitored master's name and the database."""
    prefix = SENTINEL_SCHEME + "://"
    if not url.startswith(prefix):
        raise ConfigError(f"REDIS_URL: a Sentinel URL starts with {prefix}")
    hosts_part, _, path = url[len(prefix) :].partition("/")
    sentinels, password = _hosts(hosts_part, "sentinel address", default_port=26379)
    service, _, db = path.partition("/")
    if not service:
        raise ConfigError("REDIS_URL: a Sentinel URL names the master after the hosts: .../<service>[/<db>]")
    if db and not db.isdigit():
        raise ConfigError(f"REDIS_URL: the database must be a number, got {db!r}")
    return SentinelTarget(sentinels, service, int(db or 0), password)


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """Where a Redis Cluster is first reached (redis-py's asyncio RedisCluster finds the rest)."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None


CLUSTER_SCHEME = "redis+cluster"


def parse_cluster_url(url: str) -> ClusterTarget:
    """`redis+cluster://[:password@]host:port[,host:port...][/]`: some of the cluster's nodes."""
    prefix = CLUSTER_SCHEME + "://"
    if not url.startswith(prefix):
        raise ConfigError(f"REDIS_URL: a Redis Cluster URL starts with {prefix}")
    hosts_part, _, path = url[len(prefix) :].partition("/")
    if path.strip("/") not in ("", "0"):
        raise ConfigError(f"REDIS_URL: Redis Cluster has database 0 only, got /{path}")
    nodes, password = _hosts(hosts_part, "cluster node address")
    return ClusterTarget(nodes, password)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes (Redis Cluster specification, "Hash tags"): what is
    between the first `{` and the first `}` after it, when not empty; "" when there is none."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else ""
