"""What each service of the local stack runs, and how it proves it is ready.

One function per service (Redis, Dovecot, FerretDB, the content filter, the bridge, Postfix): its
command line, environment and readiness probes, from the stack's settings and the state directory
`bridge.stack.render` filled. Starting them, in order, is `bridge.stack.launcher`'s job.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bridge.settings import StackSettings
from bridge.stack.probes import banner_probe, http_probe, login_probe, mongo_probe
from bridge.stack.render import MASTER_USER, StackSecrets
from bridge.stack.supervise import Service

POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")


def redis(s: StackSettings) -> Service:
    host, port = s.host, s.ports["redis"]
    # Nothing kept on disk by default: a fault test that wants AOF restarts it with its own flags
    # (`Stack.start_service`'s extra arguments).
    argv = ["redis-server", "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(s.state_dir / "redis"), "--daemonize", "no"]
    return Service("redis", argv, [banner_probe(host, port, b"+PONG", send=b"PING\r\n")])


def dovecot(s: StackSettings) -> Service:
    return Service(
        "dovecot",
        ["dovecot", "-F", "-c", str(s.state_dir / "dovecot" / "dovecot.conf")],
        [
            banner_probe(s.host, s.ports["imap"], b"* OK", goodbye=b"a LOGOUT\r\n"),
            banner_probe(s.host, s.ports["lmtp"], b"220", goodbye=b"QUIT\r\n"),
        ],
    )


def ferretdb(s: StackSettings, mongodb_url: str) -> Service:
    """The embedded store: FerretDB on SQLite, used unless MONGODB_URL names another."""
    state = s.state_dir / "ferretdb"
    return Service(
        "ferretdb",
        [
            str(s.ferretdb_bin),
            "--handler=sqlite",
            f"--sqlite-url=file:{state / 'data'}/",
            f"--listen-addr={s.host}:{s.ports['mongodb']}",
            "--telemetry=disable",
            "--debug-addr=-",
            f"--state-dir={state}",
            "--log-level=warn",
        ],
        [mongo_probe(mongodb_url)],
    )


def bridge_env(s: StackSettings, secrets: StackSecrets, redis_url: str, mongodb_url: str) -> dict[str, str]:
    """The bridge's settings (README, Configuration) for this stack, over the launcher's own env."""
    host, ports = s.host, s.ports
    env = dict(s.base_env)
    env.update(
        {
            "BRIDGE_HOST": host,
            "BRIDGE_HTTP_PORT": str(ports["http"]),
            "REDIS_URL": redis_url,
            "MONGODB_URL": mongodb_url,
            "BRIDGE_IMAP_HOST": host,
            "BRIDGE_IMAP_PORT": str(ports["imap"]),
            "BRIDGE_IMAP_MASTER_USER": MASTER_USER,
            "BRIDGE_IMAP_MASTER_PASSWORD": secrets.master_password,
            "BRIDGE_FILTER_PORT": "0",  # the filter runs as its own process (`content_filter`)
            "BRIDGE_REINJECT_HOST": host,
            "BRIDGE_REINJECT_PORT": str(ports["reinject"]),
            "BRIDGE_SUBMISSION_HOST": host,
            "BRIDGE_SUBMISSION_PORT": str(ports["submission"]),
            "BRIDGE_JWT_SECRET": secrets.jwt_secret,
            "BRIDGE_SPOOL_DIR": str(s.state_dir / "spool"),
            "BRIDGE_DOVECOT_METRICS_URL": f"http://{host}:{ports['dovecot_metrics']}/metrics",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def content_filter(s: StackSettings, env: dict[str, str]) -> Service:
    """`mail-bridge filter`. The content filter and the bridge are two processes, as in production:
    a mail's MIME scan and re-injection never share an event loop (or a core) with the relay."""
    return Service(
        "filter",
        [sys.executable, "-m", "bridge", "filter"],
        [banner_probe(s.host, s.ports["filter"], b"220", goodbye=b"QUIT\r\n")],
        env={**env, "BRIDGE_FILTER_PORT": str(s.ports["filter"])},
        cwd=s.repo_dir,
    )


def bridge(s: StackSettings, env: dict[str, str], secrets: StackSecrets) -> Service:
    """`mail-bridge serve`, ready once it serves a demo login (Dovecot's passdb and it agree)."""
    web = f"http://{s.host}:{s.ports['http']}"
    return Service(
        "bridge",
        [sys.executable, "-m", "bridge", "serve"],
        [
            http_probe(f"{web}/health"),
            login_probe(f"{web}/api/v1/auth/login", *next(iter(secrets.passwords.items()))),
        ],
        env=env,
        cwd=s.repo_dir,
    )


def postfix(s: StackSettings) -> Service:
    """Postfix's master in the foreground (`-s`), with the stack's own config directory."""
    etc = s.state_dir / "postfix" / "etc"
    # reinject: where the content filter hands mail back (master.cf.snippet), absent from a bare stack.
    listeners = ("smtp", "submission") if s.bare else ("smtp", "submission", "reinject")
    return Service(
        "postfix",
        [str(POSTFIX_MASTER), "-c", str(etc), "-s"],
        [banner_probe(s.host, s.ports[name], b"220", goodbye=b"QUIT\r\n") for name in listeners],
    )
