"""A TCP proxy between a bridge (or a client in the test) and the stack's real Redis, that a test
makes misbehave at an exact point: a connection dropped before a command reaches Redis, a reply lost
after Redis ran the command, a command or a reply held back until the test lets it go (a slow or
paused Redis, or the moment to kill the client), or Redis gone altogether.

Rules look at the raw RESP bytes: `command_rule(chunk)` for what the client sends, `reply_rule(command,
reply)` for what Redis answers (with the chunk the client sent last on that connection). Threads, not
the test's event loop, so a rule may block its connection without blocking the test.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from bridge.stack.launcher import Stack

Then = Literal["forward", "drop", "lose_reply"]


@dataclass
class Verdict:
    """What to do with a chunk: wait for `hold` first (if given), then forward it, drop the
    connection without sending it, or send it and drop the connection when the reply comes."""

    then: Then = "forward"
    hold: threading.Event | None = None


FORWARD = Verdict()
CommandRule = Callable[[bytes], Verdict]
ReplyRule = Callable[[bytes, bytes], Verdict]


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    server: socket.socket
    last_command: bytes = b""
    lose_reply: bool = False
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class RedisProxy:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url  # Redis itself, not through the proxy
        parts = urlsplit(redis_url)
        assert parts.hostname is not None and parts.port is not None, redis_url
        self._target = (parts.hostname, parts.port)
        self._parts = parts
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.command_rule: CommandRule = lambda _chunk: FORWARD
        self.reply_rule: ReplyRule = lambda _command, _reply: FORWARD
        self._down = False
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name="redis-proxy", daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        """The Redis URL with this proxy in place of Redis."""
        netloc = f"127.0.0.1:{self.port}"
        if "@" in self._parts.netloc:
            netloc = self._parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        return urlunsplit(self._parts._replace(netloc=netloc))

    def reset(self) -> None:
        self.command_rule = lambda _chunk: FORWARD
        self.reply_rule = lambda _command, _reply: FORWARD

    def set_down(self, down: bool) -> None:
        """Redis unreachable through the proxy (every connection closed as soon as it is made,
        those open cut now), or reachable again."""
        self._down = down
        if down:
            with self._lock:
                pairs = list(self._pairs)
            for pair in pairs:
                pair.close()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            if self._down:
                client.close()
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._commands, args=(pair,), daemon=True).start()
            threading.Thread(target=self._replies, args=(pair,), daemon=True).start()

    def _forget(self, pair: _Pair) -> None:
        pair.close()
        with self._lock:
            self._pairs.discard(pair)

    def _commands(self, pair: _Pair) -> None:
        try:
            while chunk := pair.client.recv(65536):
                verdict = self.command_rule(chunk)
                if verdict.hold is not None:
                    verdict.hold.wait(60)
                if verdict.then == "drop" or pair.closed.is_set():
                    break
                # A chunk that starts a command (`*<n>`) replaces the last one; one that goes on
                # with a long command is added to it, so a reply rule sees the command's head.
                pair.last_command = chunk if chunk.startswith(b"*") else (pair.last_command + chunk)[: 1 << 20]
                if verdict.then == "lose_reply":
                    pair.lose_reply = True
                pair.server.sendall(chunk)
        except OSError:
            pass
        self._forget(pair)

    def _replies(self, pair: _Pair) -> None:
        try:
            while chunk := pair.server.recv(65536):
                verdict = self.reply_rule(pair.last_command, chunk)
                if verdict.hold is not None:
                    verdict.hold.wait(60)
                if verdict.then != "forward" or pair.lose_reply or pair.closed.is_set():
                    break  # Redis ran the command; its client never learns the answer
                pair.client.sendall(chunk)
        except OSError:
            pass
        self._forget(pair)


class Once:
    """A rule's trigger that fires for the first `times` chunks it matches, then never again, and
    lets a test wait for that (`fired`) and release a held chunk (`release`)."""

    def __init__(self, times: int = 1) -> None:
        self.left = times
        self.fired = threading.Event()
        self.hold = threading.Event()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
        self.fired.set()
        return True

    def release(self) -> None:
        self.hold.set()


@dataclass
class ProxiedNode:
    """One more `mail-bridge serve` of the stack, whose Redis is reached through `proxy`."""

    name: str
    url: str
    proxy: RedisProxy

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def proxied_node(launcher: Stack, redis_url: str, number: int, **env: str) -> Iterator[ProxiedNode]:
    """A bridge node (`bridge-<number>`, in the stack's consumer groups) with its own Redis proxy;
    `env` overrides its settings. Stopped, and the proxy closed, on the way out."""
    proxy = RedisProxy(redis_url)
    name = f"bridge-{number}"
    try:
        url = launcher.add_bridge_node(number, {"REDIS_URL": proxy.url, **env})
        try:
            yield ProxiedNode(name, url, proxy)
        finally:
            proxy.reset()
            proxy.set_down(False)
            launcher.remove_service(name)
    finally:
        proxy.close()
