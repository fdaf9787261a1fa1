"""A local RFC 8030 push service for the Web Push tests, and a browser's side of a subscription.

`BrowserKeys` is what a browser makes when it subscribes (RFC 8291 3.2): a P-256 key pair and a
16-byte auth secret; `subscription(endpoint)` is the PushSubscription JSON the client posts.
`PushReceiver` is an aiohttp server on a loopback socket that is bound when the suite starts
(`listening_socket`), so the stack's bridge can be told its origin (BRIDGE_PUSH_ALLOWED_ORIGINS) before
the server runs. It keeps every message posted to `/push/<name>` and answers with `status[name]`
(201 by default). `open_message` checks a kept message as a browser's push service and browser
would: the VAPID Authorization (RFC 8292: a JWT signed by the key the bridge's API gave, `aud` this
origin), the headers of RFC 8030, and the aes128gcm payload decrypted with the subscription's keys.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.cache
def listening_socket() -> socket.socket:
    """One loopback socket for the session, bound and listening from the start."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def receiver_origin() -> str:
    return f"http://127.0.0.1:{listening_socket().getsockname()[1]}"


@dataclass
class BrowserKeys:
    private: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def p256dh(self) -> str:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        return {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh(), "auth": b64url(self.auth)},
        }


@dataclass
class Received:
    name: str
    headers: dict[str, str]
    body: bytes


class PushReceiver:
    def __init__(self) -> None:
        self.origin = receiver_origin()
        self.messages: list[Received] = []
        self.status: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def endpoint(self, name: str) -> str:
        return f"{self.origin}/push/{name}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push/{name}", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, listening_socket()).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _take(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.messages.append(Received(name, dict(request.headers), await request.read()))
        self._changed.set()
        return web.Response(status=self.status.get(name, 201))

    def to(self, name: str) -> list[Received]:
        return [m for m in self.messages if m.name == name]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 30.0) -> list[Received]:
        """The first `count` messages posted to `name`, once there are that many."""

        async def enough() -> list[Received]:
            while len(self.to(name)) < count:
                self._changed.clear()
                await self._changed.wait()
            return self.to(name)[:count]

        return await asyncio.wait_for(enough(), timeout)


def open_message(message: Received, keys: BrowserKeys, vapid_public_key: str, origin: str) -> dict[str, Any]:
    """The notice in `message`, after checking it as a push service and a browser would."""
    headers = {k.lower(): v for k, v in message.headers.items()}
    scheme, _, params = headers["authorization"].partition(" ")
    assert scheme == "vapid", headers["authorization"]  # RFC 8292 3
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    assert parts["k"] == vapid_public_key, "signed with another key than the API gives browsers"
    point = unb64url(parts["k"])
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    claims = jwt.decode(parts["t"], public, algorithms=["ES256"], audience=origin)
    assert claims["sub"].startswith(("mailto:", "https:")), claims
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600  # RFC 8292 2
    assert headers["content-encoding"] == "aes128gcm"
    assert int(headers["ttl"]) > 0  # RFC 8030 5.2
    assert headers["urgency"] in ("very-low", "low", "normal", "high")  # RFC 8030 5.3
    plain = http_ece.decrypt(message.body, private_key=keys.private, auth_secret=keys.auth, version="aes128gcm")
    notice: dict[str, Any] = json.loads(plain)
    return notice
