"""The local stack launcher: Redis, the store, Dovecot, the bridge and Postfix, on loopback.

One launcher serves `make run` (foreground until Ctrl-C / SIGTERM) and the test fixtures. It checks
before it starts (binaries, free ports), starts the services in order (each one's command and probes:
`bridge.stack.services`; running them: `bridge.stack.supervise`), waits for a real protocol answer
from each, writes `stack.json`, and stops every process it started, in reverse order, whatever
happens. It also changes the running stack for tests: users added, extra bridge nodes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.settings import StackSettings, default_state_dir
from bridge.stack import services
from bridge.stack.probes import free_ports, http_probe, port_in_use
from bridge.stack.render import load_secrets, render_all, user_line, world_traversable
from bridge.stack.services import POSTFIX_MASTER
from bridge.stack.supervise import Service, StackError, Supervisor

# Importers of the launcher find these here, as before they had modules of their own.
__all__ = ["Service", "Stack", "StackError", "StackInfo", "free_ports", "link_checkout_var"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackInfo:
    web_url: str
    smtp: dict[str, Any]
    submission: dict[str, Any]
    imap: dict[str, Any]
    lmtp: dict[str, Any]
    redis_url: str
    mongodb_url: str
    users: list[dict[str, str]]
    state_dir: str
    spool_dir: str
    log_dir: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def link_checkout_var(repo: Path, state: Path) -> None:
    """A checkout the mail user cannot reach keeps its state under /var/tmp (`default_state_dir`);
    `var` in the checkout then links there, so `var/stack.json` and `var/log/` are where the README
    says. A `var` the user made themselves is left alone."""
    root, link = default_state_dir(repo), repo / "var"
    if root == link or not (state == root or root in state.parents):
        return
    root.mkdir(parents=True, exist_ok=True)
    if not link.exists() and not link.is_symlink():
        link.symlink_to(root, target_is_directory=True)


class Stack(Supervisor):
    """The whole local stack: started in order by `start`, stopped in reverse by `stop`."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings.state_dir / "log")
        self.settings = settings
        self.state = settings.state_dir
        self.info: StackInfo | None = None

    # -- checks

    def _preflight(self) -> None:
        needed = {
            "redis-server": "redis-server",
            "dovecot": "dovecot-core",
            "doveadm": "dovecot-core",
            "postfix": "postfix",
        }
        missing = [f"{binary} (Debian package {pkg})" for binary, pkg in needed.items() if not shutil.which(binary)]
        if not POSTFIX_MASTER.exists():
            missing.append(f"{POSTFIX_MASTER} (Debian package postfix)")
        if self.settings.external_mongodb_url is None and not self.settings.ferretdb_bin.exists():
            missing.append(f"{self.settings.ferretdb_bin} (built by scripts/install-ferretdb.sh)")
        if missing:
            raise StackError("missing: " + ", ".join(missing) + "; run `make setup` (or `make run`) first")
        busy = [
            f"{port} (BRIDGE_{name.upper()}_PORT)"
            for name, port in self.settings.ports.items()
            if not (name == "mongodb" and self.settings.external_mongodb_url) and port_in_use(self.settings.host, port)
        ]
        if busy:
            raise StackError(f"port already in use on {self.settings.host}: " + ", ".join(busy))
        if not world_traversable(self.state.parent):
            raise StackError(
                f"the state directory {self.state} is not reachable by Dovecot's mail user; "
                "set BRIDGE_STATE_DIR to a directory every user can traverse"
            )

    def _prepare(self) -> tuple[int, int]:
        link_checkout_var(self.settings.repo_dir, self.state)
        mail = pwd.getpwnam("mail")
        postfix = pwd.getpwnam("postfix")
        for sub in (
            "log",
            "redis",
            "ferretdb/data",
            "dovecot/run",
            "dovecot/state",
            "mail",
            "spool",
            "postfix/etc",
            "postfix/spool",
            "postfix/data",
        ):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        # Dovecot's lmtp/imap processes (and the hook inside them) run as the mail user.
        for sub in ("mail", "spool"):
            os.chown(self.state / sub, mail.pw_uid, mail.pw_gid)
        os.chown(self.state / "postfix" / "data", postfix.pw_uid, postfix.pw_gid)
        os.chmod(self.state / "postfix" / "spool", 0o755)
        return mail.pw_uid, mail.pw_gid

    def _postfix_check(self, etc: Path) -> None:
        # `postfix check` creates the queue directories with the right owners (post-install).
        # Its messages go to syslog when stderr is no terminal: capture them to show on failure.
        result = subprocess.run(
            ["postfix", "-c", str(etc), "check"], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StackError(
                "postfix check failed" + (f": {detail[-1]}" if detail else f"; see {self.logs}/postfix.log")
            )

    def start(self) -> StackInfo:
        started = time.monotonic()
        self._preflight()
        uid, gid = self._prepare()
        s, host, ports = self.settings, self.settings.host, self.settings.ports
        stack_secrets = load_secrets(self.state / "secrets.json")
        render_all(s, stack_secrets, uid, gid)
        etc = self.state / "postfix" / "etc"
        if not (self.state / "postfix" / "spool" / "pid").exists():
            self._postfix_check(etc)

        mongodb_url = s.external_mongodb_url or f"mongodb://{host}:{ports['mongodb']}/"
        redis_url = f"redis://{host}:{ports['redis']}/0"
        # A bare stack keeps Redis only for a push hook it keeps (BRIDGE_STACK_BARE_WITH=hook).
        first = (
            [services.redis(s), services.dovecot(s)] if not s.bare or "hook" in s.bare_with else [services.dovecot(s)]
        )
        if s.external_mongodb_url is None and not s.bare:
            first.append(services.ferretdb(s, mongodb_url))
        for service in first:
            self._spawn(service)
        self._wait_ready(first)

        if not s.bare:
            env = services.bridge_env(s, stack_secrets, redis_url, mongodb_url)
            content_filter, bridge = services.content_filter(s, env), services.bridge(s, env, stack_secrets)
            self._spawn(content_filter)
            self._spawn(bridge)
            self._wait_ready([content_filter, bridge])

        postfix = services.postfix(s)
        self._spawn(postfix)
        self._wait_ready([postfix])

        self.info = StackInfo(
            web_url=f"http://{host}:{ports['http']}",
            smtp={"host": host, "port": ports["smtp"]},
            submission={"host": host, "port": ports["submission"]},
            imap={"host": host, "port": ports["imap"]},
            lmtp={"host": host, "port": ports["lmtp"]},
            redis_url=redis_url,
            mongodb_url=mongodb_url,
            users=[{"email": u, "password": p} for u, p in stack_secrets.passwords.items()],
            state_dir=str(self.state),
            spool_dir=str(self.state / "spool"),
            log_dir=str(self.logs),
        )
        (self.state / "stack.json").write_text(json.dumps(self.info.as_json(), indent=2) + "\n")
        log.info("stack ready in %.2f s", time.monotonic() - started)
        return self.info

    def add_users(self, accounts: dict[str, str], userdb_fields: Mapping[str, str] = {}) -> None:
        """Add mail accounts to the running stack (with `userdb_fields`: per-user settings, such as
        the hook's plugin settings).

        Dovecot's passwd-file driver re-reads a changed file at most once per second (it skips the
        check when it already looked during the current second), so this returns only once the
        clock has moved past the second of the write: the next login is sure to see the accounts.
        """
        mail = pwd.getpwnam("mail")
        with open(self.state / "dovecot" / "users", "a") as users:
            for email, password in accounts.items():
                users.write(
                    user_line(self.state, email, password, mail.pw_uid, mail.pw_gid, userdb_fields=userdb_fields)
                )
        written = int(time.time())
        while int(time.time()) <= written:
            time.sleep(0.05)

    def add_bridge_node(self, number: int, env: Mapping[str, str] = {}) -> str:
        """Start one more `mail-bridge serve` beside the stack's own, as a second machine would run
        it: the same settings (but `env`), its own HTTP port and consumer name (`bridge-<number>`).
        Returns its URL once it answers. It stops with the stack, or earlier through `remove_service`."""
        base = self.service("bridge")
        assert base.env is not None
        name = f"bridge-{number}"
        if any(s.name == name for s in self.services):
            raise StackError(f"{name} is already running")
        port = free_ports(1)[0]
        host = base.env["BRIDGE_HOST"]
        node = Service(
            name,
            base.argv,
            [http_probe(f"http://{host}:{port}/health")],
            env={**base.env, "BRIDGE_HTTP_PORT": str(port), "BRIDGE_CONSUMER_NAME": name, **env},
            cwd=base.cwd,
        )
        self._spawn(node)
        self._wait_ready([node])
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop every service, last started first, and take `stack.json` away with them."""
        self.stop_all()
        with contextlib.suppress(FileNotFoundError):
            (self.state / "stack.json").unlink()

    @contextlib.contextmanager
    def running(self) -> Iterator[StackInfo]:
        try:
            yield self.start()
        finally:
            self.stop()
