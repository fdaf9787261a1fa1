"""The installer's options: what the admin chose, and what the installer resolves for them.

`Options` holds every choice of `mail-bridge install`, layered: flags given now, else what the last
install remembered (the state file), else the defaults. `resolve` fills in what the admin left to
us from the server's facts (`bridge.install_discovery`): the mail user, the filter's two ports (free
of every master.cf service and listener), Dovecot's IMAP port and Postfix's submission port, the
store. `redis_url` and `stream_prefix` are what the bridge is told of the Redis the hook is given.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError
from bridge.install_discovery import ServerFacts

OUR_TRANSPORT = "mail-bridge"
OUR_CLEANUP = "mail-bridge-cleanup"
DEFAULT_FILTER_PORT = 10025


class InstallError(BridgeError):
    """A validation or a command of the installer failed; nothing more is written."""


@dataclass(frozen=True)
class Options:
    """Everything the admin may choose. Zero and empty values mean "find it" (see `resolve`)."""

    dovecot_dir: Path = Path("/etc/dovecot")
    postfix_dir: Path = Path("/etc/postfix")
    hook_dir: Path = Path("/usr/local/lib/mail-bridge")
    spool_dir: Path = Path("/var/spool/mail-bridge")
    env_file: Path = Path("/etc/mail-bridge/mail-bridge.env")
    state_file: Path = Path("/var/lib/mail-bridge/install-state.json")
    mail_user: str = ""  # Dovecot's mail_uid, else vmail
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    # With Redis Sentinel: the sentinels and the master's name (then redis_host/port are unused).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master: str = "mymaster"
    # On Redis Cluster: some of its nodes (the hook is told the first; it follows MOVED from there).
    redis_cluster: tuple[tuple[str, int], ...] = ()
    filter_host: str = "127.0.0.1"
    filter_port: int = 0  # 10025, or the next port no master.cf service holds
    reinject_host: str = "127.0.0.1"
    reinject_port: int = 0  # the filter's port + 1, or the next free one
    http_host: str = "127.0.0.1"
    http_port: int = 18080
    imap_host: str = "127.0.0.1"
    imap_port: int = 0  # Dovecot's imap listener
    submission_host: str = "127.0.0.1"
    submission_port: int = 0  # Postfix's submission service
    mongodb_url: str = ""  # a MongoDB of the site's (replica set URL); empty with --store
    chain_content_filter: bool = False
    # The embedded store: FerretDB from `ferretdb_bin` (or built with Go), its own unit, on loopback.
    store: bool = False
    ferretdb_bin: str = ""
    store_port: int = 27017
    systemd_dir: Path = Path("/etc/systemd/system")
    mail_bridge_bin: str = ""  # the `mail-bridge` the units run: the one running this install

    def remembered(self) -> dict[str, Any]:
        """What the state file keeps, so `--check` and a re-run need no flags again."""
        data = dataclasses.asdict(self)
        for name in ("state_file",):
            data.pop(name)
        if self.store:
            data["mongodb_url"] = ""  # derived from the store's port on every run
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}

    @classmethod
    def from_layers(cls, remembered: dict[str, Any], given: dict[str, Any]) -> Options:
        """Flags given now, else what the last install remembered, else the defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for layer in (remembered, given):
            for name, raw in layer.items():
                if name not in fields or raw is None:
                    continue
                default = fields[name].default
                if isinstance(default, Path):
                    values[name] = Path(raw)
                elif isinstance(default, tuple):
                    values[name] = tuple((str(h), int(p)) for h, p in raw)
                else:
                    values[name] = raw
        # A store named now replaces the one remembered: your MongoDB, or the embedded one.
        if given.get("mongodb_url") and given.get("store") is None:
            values["store"] = False
        if given.get("store") and given.get("mongodb_url") is None:
            values["mongodb_url"] = ""
        return cls(**values)


def stream_prefix(o: Options) -> str:
    """On Redis Cluster every key of the bridge shares one hash tag (bridge.settings)."""
    return "{mail}" if o.redis_cluster else "mail"


def redis_url(o: Options) -> str:
    """The bridge's REDIS_URL for what the hook is told (README, Configuration)."""
    if o.redis_cluster:
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in o.redis_cluster)
    if o.redis_sentinels:
        hosts = ",".join(f"{host}:{port}" for host, port in o.redis_sentinels)
        return f"redis+sentinel://{hosts}/{o.redis_master}/0"
    return f"redis://{o.redis_host}:{o.redis_port}/0"


def _is_ours(entry_key: str, entry: str) -> bool:
    return entry_key.startswith(OUR_TRANSPORT) or f"cleanup_service_name={OUR_CLEANUP}" in entry


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _free_port(facts: ServerFacts, wanted: int, avoid: set[int], host: str) -> int:
    """`wanted`, or the next port that no admin's master.cf service holds and nothing listens on."""
    port = wanted
    while port in avoid or port in facts.inet_ports or _listening(host, port):
        port += 1
    return port


def resolve(o: Options, facts: ServerFacts, master_entries: dict[str, str]) -> Options:
    """Fill in what the admin left to us: the mail user, the filter's ports, Dovecot's IMAP port and
    Postfix's submission port. A port the admin gave that another service holds is refused."""
    theirs = {port: key for port, key in facts.inet_ports.items() if not _is_ours(key, master_entries.get(key, ""))}
    ours = dataclasses.replace(facts, inet_ports=theirs)
    for name, port in (("--filter-port", o.filter_port), ("--reinject-port", o.reinject_port)):
        if port and port in theirs:
            raise InstallError(f"{name} {port} is master.cf's {theirs[port]}: choose another port")
    filter_port = o.filter_port or _free_port(ours, DEFAULT_FILTER_PORT, set(), o.filter_host)
    reinject_port = o.reinject_port or _free_port(ours, filter_port + 1, {filter_port}, o.reinject_host)
    if filter_port == reinject_port:
        raise InstallError("--filter-port and --reinject-port must differ")
    if o.store and o.mongodb_url:
        raise InstallError("--store (the embedded FerretDB) or --mongodb-url (your MongoDB), not both")
    if not o.store and not o.mongodb_url:
        raise InstallError(
            "the bridge needs a MongoDB-compatible store: give --mongodb-url of your MongoDB (a replica set"
            " URL, e.g. mongodb://db1,db2,db3/mailbridge?replicaSet=rs0), or --store for the embedded FerretDB"
            " (SQLite, its own unit, loopback only)"
        )
    return dataclasses.replace(
        o,
        mongodb_url=o.mongodb_url or f"mongodb://127.0.0.1:{o.store_port}/",
        mail_bridge_bin=o.mail_bridge_bin or str(Path(sys.executable).parent / "mail-bridge"),
        mail_user=o.mail_user or facts.mail_uid or "vmail",
        filter_port=filter_port,
        reinject_port=reinject_port,
        imap_port=o.imap_port or facts.imap_port or 143,
        submission_port=o.submission_port or facts.submission_port or 587,
    )
