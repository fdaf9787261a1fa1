"""Settings: the one place that reads the environment.

`Settings` configures the bridge process (web, Socket.IO, content filter, consumers); `StackSettings`
configures the local stack launcher (`mail-bridge stack`). Both are frozen, validated when built, and
passed explicitly to whatever needs them; no other module reads `os.environ`.
Every variable is documented in README.md ("Configuration").
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bridge.auth import HOST_ALGORITHMS, SHARED_SECRET_ALGORITHMS
from bridge.errors import ConfigError
from bridge.redis_url import CLUSTER_SCHEME, SENTINEL_SCHEME, hash_tag, parse_cluster_url, parse_sentinel_url
from bridge.resources import web_client_dir
from bridge.webpush import load_vapid_key, origin_of

DEFAULT_HOST = "127.0.0.1"

# Defaults stay clear of the standard ports (25, 143, 587, 6379, 27017, 80/443) so the stack can run
# beside a real mail server.
DEFAULT_PORTS: dict[str, int] = {
    "http": 18080,
    "redis": 16379,
    "mongodb": 27117,
    "imap": 11143,
    "lmtp": 10024,
    "smtp": 2525,
    "submission": 2587,
    "filter": 10025,
    "reinject": 10026,
    "dovecot_metrics": 19900,
}

DEFAULT_REDIS_URL = f"redis://{DEFAULT_HOST}:{DEFAULT_PORTS['redis']}/0"
DEFAULT_MONGODB_URL = f"mongodb://{DEFAULT_HOST}:{DEFAULT_PORTS['mongodb']}/"
MIN_SECRET_BYTES = 32
LOOPBACK = ("127.0.0.1", "::1")


class _Env:
    """Typed reads from an environment mapping, each failure naming its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        value = self._env.get(name, "").strip()
        return value or default

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, *, low: int = 0, high: int = 2**31) -> int:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw not in ("yes", "no", "true", "false", "1", "0"):
            raise ConfigError(f"{name} must be yes or no, got {raw!r}")
        return raw in ("yes", "true", "1")

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, low=0, high=65535)

    def items(self, name: str) -> tuple[str, ...]:
        raw = self._env.get(name, "")
        return tuple(item.strip() for item in raw.split(",") if item.strip())


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _check_redis_url(url: str) -> str:
    if url.startswith(SENTINEL_SCHEME + "://"):
        parse_sentinel_url(url)
        return url
    if url.startswith(CLUSTER_SCHEME + "://"):
        parse_cluster_url(url)
        return url
    return _check_url("REDIS_URL", url, ("redis", "rediss", "unix"))


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL, got {url!r}")
    return url


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one bridge process."""

    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_PORTS["http"]
    redis_url: str = DEFAULT_REDIS_URL
    mongodb_url: str = DEFAULT_MONGODB_URL
    mongodb_database: str = "mailbridge"
    imap_host: str = DEFAULT_HOST
    imap_port: int = DEFAULT_PORTS["imap"]
    imap_master_user: str = ""
    imap_master_password: str = field(default="", repr=False)
    imap_timeout_s: float = 10.0
    # The after-queue content filter (Postfix FILTER_README, "advanced" mode); port 0 disables it.
    filter_port: int = DEFAULT_PORTS["filter"]
    reinject_host: str = DEFAULT_HOST
    reinject_port: int = DEFAULT_PORTS["reinject"]
    submission_host: str = DEFAULT_HOST
    submission_port: int = DEFAULT_PORTS["submission"]
    # STARTTLS before AUTH, as a submission service with smtpd_tls_auth_only demands (RFC 3207).
    submission_starttls: bool = False
    send_per_minute: int = 30
    requests_per_second: int = 20
    # Failed logins (bridge.rate_limit.LoginLimits): per client address in 10 minutes, and per
    # account in an hour from addresses that never signed in to it.
    login_failures_per_address: int = 10
    login_failures_per_account: int = 50
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the client; no one else's.
    # Loopback by default: a proxy on the same host (README's nginx). A remote client never connects
    # from loopback, so it cannot name itself another address through this default.
    trusted_proxies: tuple[str, ...] = LOOPBACK
    jwt_secret: str = field(default="", repr=False)
    jwt_algorithm: str = "HS256"
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_issuer: str = "mail-bridge"
    jwt_audience: str = "mail-bridge"
    jwt_ttl_s: int = 3600
    host_jwt_issuer: str = ""
    host_jwt_audience: str = ""
    host_jwt_algorithm: str = "RS256"
    host_jwt_key_file: Path | None = None
    cors_origins: tuple[str, ...] = ()
    spool_dir: Path = Path("var/spool")
    # The built web client: inside the installed package, or the checkout's web/dist (bridge.resources).
    web_dir: Path = field(default_factory=web_client_dir)
    stream_prefix: str = "mail"
    stream_maxlen: int = 1_000_000
    resume_log_len: int = 10_000
    max_sockets_per_user: int = 20
    # Packets one socket may have waiting before it is dropped as too slow (bridge.slow_sockets).
    socket_max_queued: int = 1000
    # Dovecot's OpenMetrics page, where the hook's lost events are counted (dovecot-conf/90-*.conf).
    dovecot_metrics_url: str | None = None
    consumer_group: str = "bridge"
    consumer_name: str = "bridge-1"
    log_level: str = "INFO"
    # Web Push (bridge.push_sender): the VAPID key (RFC 8292) from this PEM file, or else one made
    # once and kept in the store, shared by every node; the contact the push services are given.
    vapid_private_key_file: Path | None = None
    vapid_subject: str = "mailto:postmaster@localhost"
    # Push service origins allowed besides public https ones (a local test receiver).
    push_allowed_origins: tuple[str, ...] = ()
    push_max_subscriptions: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable, an unset or blank one taking the field's default above (`d`), so each
        default is written once; the bounds are the environment's, not the field's."""
        e = _Env(os.environ if env is None else env)
        d = cls()
        jwt_audience = e.text("BRIDGE_JWT_AUDIENCE", d.jwt_audience)
        settings = cls(
            host=e.text("BRIDGE_HOST", d.host),
            http_port=e.port("BRIDGE_HTTP_PORT", d.http_port),
            redis_url=_check_redis_url(e.text("REDIS_URL", d.redis_url)),
            mongodb_url=_check_url("MONGODB_URL", e.text("MONGODB_URL", d.mongodb_url), ("mongodb", "mongodb+srv")),
            mongodb_database=e.text("BRIDGE_MONGODB_DATABASE", d.mongodb_database),
            imap_host=e.text("BRIDGE_IMAP_HOST", d.imap_host),
            imap_port=e.port("BRIDGE_IMAP_PORT", d.imap_port),
            imap_master_user=e.text("BRIDGE_IMAP_MASTER_USER", d.imap_master_user),
            imap_master_password=e.text("BRIDGE_IMAP_MASTER_PASSWORD", d.imap_master_password),
            filter_port=e.port("BRIDGE_FILTER_PORT", d.filter_port),
            reinject_host=e.text("BRIDGE_REINJECT_HOST", d.reinject_host),
            reinject_port=e.port("BRIDGE_REINJECT_PORT", d.reinject_port),
            submission_host=e.text("BRIDGE_SUBMISSION_HOST", d.submission_host),
            submission_port=e.port("BRIDGE_SUBMISSION_PORT", d.submission_port),
            submission_starttls=e.flag("BRIDGE_SUBMISSION_STARTTLS", d.submission_starttls),
            send_per_minute=e.integer("BRIDGE_SEND_PER_MINUTE", d.send_per_minute, low=1),
            requests_per_second=e.integer("BRIDGE_REQUESTS_PER_SECOND", d.requests_per_second, low=1),
            login_failures_per_address=e.integer(
                "BRIDGE_LOGIN_FAILURES_PER_ADDRESS", d.login_failures_per_address, low=1, high=10_000
            ),
            login_failures_per_account=e.integer(
                "BRIDGE_LOGIN_FAILURES_PER_ACCOUNT", d.login_failures_per_account, low=1, high=10_000
            ),
            trusted_proxies=e.items("BRIDGE_TRUSTED_PROXIES") or d.trusted_proxies,
            jwt_secret=e.text("BRIDGE_JWT_SECRET", d.jwt_secret),
            jwt_algorithm=e.text("BRIDGE_JWT_ALGORITHM", d.jwt_algorithm),
            jwt_private_key_file=_optional_path(e.optional("BRIDGE_JWT_PRIVATE_KEY_FILE")),
            jwt_public_key_file=_optional_path(e.optional("BRIDGE_JWT_PUBLIC_KEY_FILE")),
            jwt_issuer=e.text("BRIDGE_JWT_ISSUER", d.jwt_issuer),
            jwt_audience=jwt_audience,
            jwt_ttl_s=e.integer("BRIDGE_JWT_TTL", d.jwt_ttl_s, low=60, high=30 * 86400),
            host_jwt_issuer=e.text("BRIDGE_HOST_JWT_ISSUER", d.host_jwt_issuer),
            # A host website's tokens name the bridge's own audience unless told otherwise.
            host_jwt_audience=e.text("BRIDGE_HOST_JWT_AUDIENCE", jwt_audience),
            host_jwt_algorithm=e.text("BRIDGE_HOST_JWT_ALGORITHM", d.host_jwt_algorithm),
            host_jwt_key_file=_optional_path(e.optional("BRIDGE_HOST_JWT_KEY_FILE")),
            cors_origins=e.items("BRIDGE_CORS_ORIGINS"),
            spool_dir=Path(e.text("BRIDGE_SPOOL_DIR", str(d.spool_dir))),
            web_dir=Path(e.text("BRIDGE_WEB_DIR", str(d.web_dir))),
            stream_prefix=e.text("BRIDGE_STREAM_PREFIX", d.stream_prefix),
            stream_maxlen=e.integer("BRIDGE_STREAM_MAXLEN", d.stream_maxlen, low=1000),
            resume_log_len=e.integer("BRIDGE_RESUME_LOG_LEN", d.resume_log_len, low=100),
            max_sockets_per_user=e.integer("BRIDGE_MAX_SOCKETS_PER_USER", d.max_sockets_per_user, low=1),
            socket_max_queued=e.integer("BRIDGE_SOCKET_MAX_QUEUED", d.socket_max_queued, low=10),
            dovecot_metrics_url=e.optional("BRIDGE_DOVECOT_METRICS_URL"),
            consumer_group=e.text("BRIDGE_CONSUMER_GROUP", d.consumer_group),
            consumer_name=e.text("BRIDGE_CONSUMER_NAME", d.consumer_name),
            log_level=e.text("BRIDGE_LOG_LEVEL", d.log_level).upper(),
            vapid_private_key_file=_optional_path(e.optional("BRIDGE_VAPID_PRIVATE_KEY_FILE")),
            vapid_subject=e.text("BRIDGE_VAPID_SUBJECT", d.vapid_subject),
            push_allowed_origins=e.items("BRIDGE_PUSH_ALLOWED_ORIGINS"),
            push_max_subscriptions=e.integer(
                "BRIDGE_PUSH_MAX_SUBSCRIPTIONS", d.push_max_subscriptions, low=1, high=100
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.jwt_algorithm in SHARED_SECRET_ALGORITHMS:
            if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"BRIDGE_JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes of random text")
        elif self.jwt_algorithm in HOST_ALGORITHMS:
            for name, path in (
                ("BRIDGE_JWT_PRIVATE_KEY_FILE", self.jwt_private_key_file),
                ("BRIDGE_JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file),
            ):
                if path is None or not path.is_file():
                    raise ConfigError(f"{name} must name a readable PEM file for {self.jwt_algorithm}")
        else:
            allowed = SHARED_SECRET_ALGORITHMS + HOST_ALGORITHMS
            raise ConfigError(f"BRIDGE_JWT_ALGORITHM must be one of {', '.join(allowed)}")
        if not self.imap_master_user or not self.imap_master_password:
            raise ConfigError(
                "BRIDGE_IMAP_MASTER_USER and BRIDGE_IMAP_MASTER_PASSWORD must be set "
                "(a Dovecot master user: dovecot-conf/91-mail-bridge-master.conf)"
            )
        if self.redis_url.startswith(CLUSTER_SCHEME + "://") and not hash_tag(self.stream_prefix):
            # One script appends an event to the fan-out stream and to its account's resume log,
            # and one read takes both ingest streams: on a cluster their keys must share a slot.
            raise ConfigError(
                "BRIDGE_STREAM_PREFIX must be a hash tag on Redis Cluster (such as {mail}), so every key"
                f" of the bridge is in one slot; got {self.stream_prefix!r}"
            )
        if self.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"BRIDGE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {self.log_level}")
        if self.host_jwt_issuer or self.host_jwt_key_file:
            if not (self.host_jwt_issuer and self.host_jwt_key_file):
                raise ConfigError("BRIDGE_HOST_JWT_ISSUER and BRIDGE_HOST_JWT_KEY_FILE are set together")
            if self.host_jwt_issuer == self.jwt_issuer:
                raise ConfigError("BRIDGE_HOST_JWT_ISSUER must differ from BRIDGE_JWT_ISSUER")
            if self.host_jwt_algorithm not in HOST_ALGORITHMS:
                raise ConfigError(f"BRIDGE_HOST_JWT_ALGORITHM must be one of {', '.join(HOST_ALGORITHMS)}")
            if not self.host_jwt_key_file.is_file():
                raise ConfigError(f"BRIDGE_HOST_JWT_KEY_FILE {self.host_jwt_key_file} is not a readable file")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(
                    f"BRIDGE_TRUSTED_PROXIES: {proxy!r} is not an address or network (such as 127.0.0.1 or 10.0.0.0/8)"
                ) from None
        if "*" in self.cors_origins:
            raise ConfigError("BRIDGE_CORS_ORIGINS must list origins explicitly; '*' is refused")
        self._validate_push()

    def _validate_push(self) -> None:
        # RFC 8292 2.1: the `sub` claim is a mailto: or an https: URI of the sender's contact.
        subject = urlsplit(self.vapid_subject)
        if not (
            (subject.scheme == "mailto" and "@" in subject.path) or (subject.scheme == "https" and subject.hostname)
        ):
            raise ConfigError(f"BRIDGE_VAPID_SUBJECT must be a mailto: or https: URI, got {self.vapid_subject!r}")
        if self.vapid_private_key_file is not None:
            try:
                load_vapid_key(self.vapid_private_key_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"BRIDGE_VAPID_PRIVATE_KEY_FILE must name a readable PEM file of a P-256 private key: {exc}"
                ) from None
        for origin in self.push_allowed_origins:
            if origin_of(origin) != origin:
                raise ConfigError(
                    f"BRIDGE_PUSH_ALLOWED_ORIGINS: {origin!r} is not an origin (such as http://127.0.0.1:8999)"
                )

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


def default_state_dir(repo: Path) -> Path:
    """Where a checkout's local stacks keep their state: `var/` in the checkout, unless Dovecot's mail
    user could not reach it there (a clone under root's 0700 home, or in a `mktemp -d` directory):
    then a directory of the checkout's own under /var/tmp (named by a hash of its path, so two clones
    never share one). The launcher then makes `var` in the checkout a link to it."""
    for part in [repo, *repo.parents]:
        if part.exists() and not part.stat().st_mode & 0o001:
            return Path("/var/tmp") / ("mail-bridge-" + hashlib.sha1(str(repo).encode()).hexdigest()[:10])
    return repo / "var"


BARE_PARTS = ("hook", "dedupe")


def _bare_parts(names: tuple[str, ...]) -> frozenset[str]:
    unknown = sorted(set(names) - set(BARE_PARTS))
    if unknown:
        raise ConfigError(f"BRIDGE_STACK_BARE_WITH: unknown part {unknown[0]!r} (known: {', '.join(BARE_PARTS)})")
    return frozenset(names)


def suite_state_dir(repo: Path) -> Path:
    """The test suite's stack: beside `make run`'s state, in the same reachable place."""
    return default_state_dir(repo) / "test-stack"


@dataclass(frozen=True, slots=True)
class StackSettings:
    """Configuration of the local stack started by `make run` and by the test fixtures."""

    repo_dir: Path
    state_dir: Path
    host: str
    ports: Mapping[str, int]
    ferretdb_bin: Path
    external_mongodb_url: str | None
    base_env: Mapping[str, str] = field(repr=False)
    # Dovecot and Postfix alone, as a mail server was before mail-bridge (no content filter, push
    # hook or dedupe script; no Redis, store or bridge): the benchmark's baseline.
    bare: bool = False
    # Parts of mail-bridge's Dovecot side a bare stack keeps, to price each alone (the benchmark):
    # "hook" (the push hook, with Redis for it to write to), "dedupe" (the dedupe Sieve script).
    bare_with: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, repo_dir: Path | None = None) -> StackSettings:
        source = dict(os.environ if env is None else env)
        e = _Env(source)
        repo = (repo_dir or Path(__file__).resolve().parent.parent).resolve()
        ports = {name: e.port(f"BRIDGE_{name.upper()}_PORT", port) for name, port in DEFAULT_PORTS.items()}
        used: dict[int, str] = {}
        for name, port in ports.items():
            if port == 0:
                raise ConfigError(f"BRIDGE_{name.upper()}_PORT must not be 0 for the local stack")
            if port in used:
                raise ConfigError(f"BRIDGE_{name.upper()}_PORT and BRIDGE_{used[port].upper()}_PORT are both {port}")
            used[port] = name
        cache = Path(e.text("MAIL_BRIDGE_CACHE", str(Path.home() / ".cache" / "mail-bridge")))
        version = e.text("FERRETDB_VERSION", "v1.24.2")
        mongodb_url = e.optional("MONGODB_URL")
        if mongodb_url:
            _check_url("MONGODB_URL", mongodb_url, ("mongodb", "mongodb+srv"))
        return cls(
            repo_dir=repo,
            state_dir=Path(e.text("BRIDGE_STATE_DIR", str(default_state_dir(repo)))).resolve(),
            host=e.text("BRIDGE_HOST", DEFAULT_HOST),
            ports=ports,
            # "-idindex": the build with scripts/install-ferretdb.sh's patch to the `_id` index.
            ferretdb_bin=Path(e.text("FERRETDB_BIN", str(cache / f"ferretdb-{version}-idindex"))),
            external_mongodb_url=mongodb_url,
            base_env=source,
            bare=e.flag("BRIDGE_STACK_BARE", False),
            bare_with=_bare_parts(e.items("BRIDGE_STACK_BARE_WITH")),
        )
