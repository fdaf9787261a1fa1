"""The stack the benchmark runs on: the same launcher as `make run`, in its own state dir and ports.

`BenchStack` starts Redis, the store, Dovecot, Postfix and the bridge's process(es), creates benchmark
users in batches, and mints tokens with the stack's own secret (so thousands of sockets need no
thousands of logins). Limits meant for browsers (sockets per user, requests per second) are raised
here: the benchmark measures the relay, not the rate limiter.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import BRIDGE, service_group, stack_roots
from bridge.auth import TokenIssuer
from bridge.settings import DEFAULT_PORTS, StackSettings, default_state_dir
from bridge.stack.launcher import Stack, StackInfo, free_ports

REPO = Path(__file__).resolve().parent.parent
STATE = default_state_dir(REPO) / "bench-stack"

BENCH_ENV = {
    "BRIDGE_MAX_SOCKETS_PER_USER": "100000",
    "BRIDGE_REQUESTS_PER_SECOND": "100000",
    "BRIDGE_SEND_PER_MINUTE": "100000",
    "BRIDGE_LOG_LEVEL": "WARNING",  # a log line per event would measure the logger
}


@dataclass(frozen=True)
class User:
    email: str
    password: str


@dataclass(frozen=True)
class Node:
    """One `mail-bridge serve` process: the stack's own ("bridge") or one added ("bridge-<n>")."""

    name: str
    url: str
    pid: int


class BenchStack:
    def __init__(self, launcher: Stack, info: StackInfo, state: Path) -> None:
        self.launcher = launcher
        self.info = info
        self.state = state
        data = json.loads((state / "secrets.json").read_text())
        self.secrets = data
        self.issuer = TokenIssuer(
            secret=data["jwt_secret"], issuer="mail-bridge", audience="mail-bridge", ttl_s=6 * 3600
        )

    def add_users(self, count: int, prefix: str) -> list[User]:
        """`count` fresh accounts, added to Dovecot's passwd-file in one write."""
        users = [User(f"{prefix}{n:05d}@example.test", secrets.token_urlsafe(12)) for n in range(count)]
        self.launcher.add_users({u.email: u.password for u in users})
        return users

    def token(self, email: str) -> str:
        token, _expires = self.issuer.issue(email, (email,))
        return token

    def pid(self, service: str) -> int:
        process = self.launcher.service(service).process
        assert process is not None
        return process.pid

    def services(self) -> dict[str, int]:
        """{name: pid} of every service the launcher started that is still running, read at call
        time (the set of services is the launcher's, not a list kept here)."""
        return {
            s.name: s.process.pid for s in self.launcher.services if s.process is not None and s.process.poll() is None
        }

    def bridge_services(self) -> dict[str, int]:
        """The bridge's own processes: every service that is not Redis, the store, Dovecot or Postfix."""
        return {name: pid for name, pid in self.services().items() if service_group(name) == BRIDGE}

    def nodes(self) -> list[Node]:
        """The running bridge nodes, the stack's own first."""
        out = []
        for s in self.launcher.services:
            is_node = s.name == "bridge" or s.name.startswith("bridge-")
            if is_node and s.process is not None and s.process.poll() is None and s.env is not None:
                url = f"http://{s.env['BRIDGE_HOST']}:{s.env['BRIDGE_HTTP_PORT']}"
                out.append(Node(s.name, url, s.process.pid))
        return out

    def scale_to(self, count: int) -> list[Node]:
        """Exactly `count` bridge nodes (adding `bridge-2`, `bridge-3`, ... or stopping the last added)."""
        nodes = self.nodes()
        while len(nodes) > max(1, count):
            self.launcher.remove_service(nodes.pop().name)
        while len(nodes) < count:
            self.launcher.add_bridge_node(len(nodes) + 1)
            nodes = self.nodes()
        return nodes

    def cpu_roots(self) -> dict[str, list[int]]:
        """The CPU groups' root pids: each service's, and this process's as the load."""
        return stack_roots(self.services(), [os.getpid()])


@contextmanager
def running_stack(state: Path = STATE, *, bare: bool = False, bare_with: tuple[str, ...] = ()) -> Iterator[BenchStack]:
    """The stack in `state`; `bare`: Dovecot and Postfix alone (bench.baseline), keeping the parts
    of ours named in `bare_with` (StackSettings.bare_with)."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)  # a dying service may have re-created a subfolder
    ports = free_ports(len(DEFAULT_PORTS))
    env = {f"BRIDGE_{name.upper()}_PORT": str(port) for name, port in zip(DEFAULT_PORTS, ports, strict=True)}
    env["BRIDGE_STATE_DIR"] = str(state)
    if bare:
        env["BRIDGE_STACK_BARE"] = "1"
        env["BRIDGE_STACK_BARE_WITH"] = ",".join(bare_with)
    settings = StackSettings.from_env({**os.environ, **BENCH_ENV, **env}, repo_dir=REPO)
    launcher = Stack(settings)
    started = time.monotonic()
    info = launcher.start()
    print(f"stack up in {time.monotonic() - started:.1f} s: {info.web_url}", flush=True)
    try:
        yield BenchStack(launcher, info, state)
    finally:
        launcher.stop()
