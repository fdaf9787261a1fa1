"""The local stack launcher: Redis, the store, Dovecot, the bridge and Postfix, on loopback.

One launcher serves `make run` (foreground until Ctrl-C / SIGTERM) and the test fixtures. It checks
before it starts (binaries, free ports), starts each service in the foreground as its own child,
waits for a real protocol answer from each, writes `stack.json`, and stops every process it started,
in reverse order, whatever happens. Children also get SIGTERM if the launcher itself dies
(PR_SET_PDEATHSIG), so nothing is orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError
from bridge.settings import StackSettings, default_state_dir
from bridge.stack.render import MASTER_USER, load_secrets, render_all, user_line, world_traversable

log = logging.getLogger(__name__)

POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


class StackError(BridgeError):
    """A service could not be started; the message is one line naming it and its log."""


Probe = Callable[[], bool]


@dataclass
class Service:
    name: str
    argv: list[str]
    probes: list[Probe]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the launcher dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# ---------------------------------------------------------------------------- probes


def banner_probe(host: str, port: int, prefix: bytes, *, send: bytes = b"", goodbye: bytes = b"") -> Probe:
    """True once the port answers with `prefix` (after sending `send`, if any)."""

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                if send:
                    sock.sendall(send)
                data = sock.recv(256)
                if goodbye:
                    with contextlib.suppress(OSError):
                        sock.sendall(goodbye)
                return data.startswith(prefix)
        except OSError:
            return False

    return probe


def http_probe(url: str) -> Probe:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return probe


def login_probe(url: str, email: str, password: str) -> Probe:
    """True once the bridge accepts a demo login: proves Dovecot's passdb and the bridge agree."""

    def probe() -> bool:
        body = json.dumps({"email": email, "password": password}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return probe


def mongo_probe(url: str) -> Probe:
    def probe() -> bool:
        from pymongo import MongoClient  # noqa: PLC0415 - only the launcher needs the sync client
        from pymongo.errors import PyMongoError  # noqa: PLC0415

        client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=500)
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    return probe


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------------- the stack


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


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.state = settings.state_dir
        self.logs = self.state / "log"
        self.services: list[Service] = []
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

    # -- services

    def _spawn(self, service: Service, extra_args: tuple[str, ...] = ()) -> None:
        out = open(self.logs / f"{service.name}.out", "ab")  # noqa: SIM115 - the child owns it
        try:
            service.process = subprocess.Popen(
                [*service.argv, *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=service.env,
                cwd=service.cwd,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, which stops in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded launcher
            )
        except OSError as exc:
            raise StackError(f"{service.name} could not be started: {exc}") from None
        finally:
            out.close()
        if service not in self.services:
            self.services.append(service)
        log.debug("started %s pid %s", service.name, service.process.pid)

    def _wait_ready(self, services: list[Service]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = {s.name: list(s.probes) for s in services}
        while waiting:
            for service in services:
                probes = waiting.get(service.name)
                if probes is None:
                    continue
                assert service.process is not None
                code = service.process.poll()
                if code is not None:
                    raise StackError(
                        f"{service.name} exited with code {code} while starting; {self._log_hint(service)}"
                    )
                while probes and probes[0]():
                    probes.pop(0)
                if not probes:
                    del waiting[service.name]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(waiting)
                raise StackError(f"{names} did not answer within {READY_TIMEOUT_S:.0f} s; see {self.logs}")
            if waiting:
                time.sleep(0.02)

    def _log_hint(self, service: Service) -> str:
        out = self.logs / f"{service.name}.out"
        last = ""
        with contextlib.suppress(OSError):
            lines = [line for line in out.read_text(errors="replace").splitlines() if line.strip()]
            last = lines[-1].strip()[:300] if lines else ""
        where = f"see {out}"
        if service.name in ("dovecot", "postfix"):
            where += f" and {self.logs / (service.name + '.log')}"
        return f"{where}" + (f" (last line: {last})" if last else "")

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
        first = [
            Service(
                "redis",
                [
                    "redis-server",
                    "--port",
                    str(ports["redis"]),
                    "--bind",
                    host,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.state / "redis"),
                    "--daemonize",
                    "no",
                ],
                [banner_probe(host, ports["redis"], b"+PONG", send=b"PING\r\n")],
            ),
            Service(
                "dovecot",
                ["dovecot", "-F", "-c", str(self.state / "dovecot" / "dovecot.conf")],
                [
                    banner_probe(host, ports["imap"], b"* OK", goodbye=b"a LOGOUT\r\n"),
                    banner_probe(host, ports["lmtp"], b"220", goodbye=b"QUIT\r\n"),
                ],
            ),
        ]
        if s.external_mongodb_url is None:
            first.append(
                Service(
                    "ferretdb",
                    [
                        str(s.ferretdb_bin),
                        "--handler=sqlite",
                        f"--sqlite-url=file:{self.state / 'ferretdb' / 'data'}/",
                        f"--listen-addr={host}:{ports['mongodb']}",
                        "--telemetry=disable",
                        "--debug-addr=-",
                        f"--state-dir={self.state / 'ferretdb'}",
                        "--log-level=warn",
                    ],
                    [mongo_probe(mongodb_url)],
                )
            )
        for service in first:
            self._spawn(service)
        self._wait_ready(first)

        bridge_env = dict(s.base_env)
        bridge_env.update(
            {
                "BRIDGE_HOST": host,
                "BRIDGE_HTTP_PORT": str(ports["http"]),
                "REDIS_URL": redis_url,
                "MONGODB_URL": mongodb_url,
                "BRIDGE_IMAP_HOST": host,
                "BRIDGE_IMAP_PORT": str(ports["imap"]),
                "BRIDGE_IMAP_MASTER_USER": MASTER_USER,
                "BRIDGE_IMAP_MASTER_PASSWORD": stack_secrets.master_password,
                "BRIDGE_FILTER_PORT": "0",  # the filter runs as its own process (below)
                "BRIDGE_REINJECT_HOST": host,
                "BRIDGE_REINJECT_PORT": str(ports["reinject"]),
                "BRIDGE_SUBMISSION_HOST": host,
                "BRIDGE_SUBMISSION_PORT": str(ports["submission"]),
                "BRIDGE_JWT_SECRET": stack_secrets.jwt_secret,
                "BRIDGE_SPOOL_DIR": str(self.state / "spool"),
                "BRIDGE_DOVECOT_METRICS_URL": f"http://{host}:{ports['dovecot_metrics']}/metrics",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The content filter and the bridge are two processes, as in production: a mail's MIME
        # scan and re-injection never share an event loop (or a core) with the relay.
        content_filter = Service(
            "filter",
            [sys.executable, "-m", "bridge", "filter"],
            [banner_probe(host, ports["filter"], b"220", goodbye=b"QUIT\r\n")],
            env={**bridge_env, "BRIDGE_FILTER_PORT": str(ports["filter"])},
            cwd=s.repo_dir,
        )
        bridge = Service(
            "bridge",
            [sys.executable, "-m", "bridge", "serve"],
            [
                http_probe(f"http://{host}:{ports['http']}/health"),
                login_probe(
                    f"http://{host}:{ports['http']}/api/v1/auth/login",
                    *next(iter(stack_secrets.passwords.items())),
                ),
            ],
            env=bridge_env,
            cwd=s.repo_dir,
        )
        self._spawn(content_filter)
        self._spawn(bridge)
        self._wait_ready([content_filter, bridge])

        postfix = Service(
            "postfix",
            [str(POSTFIX_MASTER), "-c", str(etc), "-s"],
            [
                banner_probe(host, ports["smtp"], b"220", goodbye=b"QUIT\r\n"),
                banner_probe(host, ports["submission"], b"220", goodbye=b"QUIT\r\n"),
                banner_probe(host, ports["reinject"], b"220", goodbye=b"QUIT\r\n"),
            ],
        )
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

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def stop_service(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one service (for fault tests): SIGTERM, or SIGKILL to simulate a crash."""
        service = self.service(name)
        assert service.process is not None
        if service.process.poll() is None:
            service.process.send_signal(sig)
            try:
                service.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()

    def start_service(self, name: str, *extra_args: str) -> None:
        """Start a stopped service again with the same command (plus `extra_args`, for this start
        only) and wait until it answers."""
        service = self.service(name)
        assert service.process is not None and service.process.poll() is not None, f"{name} is running"
        self._spawn(service, extra_args)
        self._wait_ready([service])

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

    def remove_service(self, name: str) -> None:
        """Stop a service and forget it (a node added by `add_bridge_node`)."""
        self.stop_service(name)
        self.services.remove(self.service(name))

    def dead(self) -> list[Service]:
        return [s for s in self.services if s.process is not None and s.process.poll() is not None]

    def stop(self) -> None:
        """Stop every service, last started first, so each stops while what it uses still runs."""
        for service in reversed(self.services):
            assert service.process is not None
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    service.process.send_signal(signal.SIGTERM)
            try:
                service.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", service.name, STOP_TIMEOUT_S)
                service.process.kill()
                service.process.wait()
        self.services.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.state / "stack.json").unlink()

    @contextlib.contextmanager
    def running(self) -> Iterator[StackInfo]:
        try:
            yield self.start()
        finally:
            self.stop()


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all held open at once, so the kernel cannot hand out one twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
