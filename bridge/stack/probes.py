"""Readiness probes and port checks for the local stack.

A service counts as started only once it answers its own protocol (a banner, an HTTP 200, a login,
a MongoDB ping), not when its process exists: every probe here is one such question, asked again
and again by `bridge.stack.supervise` until it says yes. Also: is a port free, and which ports are.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

Probe = Callable[[], bool]


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
