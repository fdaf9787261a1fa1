"""Helpers of the hostile-input scenarios (tests/test_reliability_*.py): forged tokens, refusals
counted case by case, raw Engine.IO/Socket.IO websockets, and the bridge's own log.

A `Cases` tally records every hostile case a test tried and what was wrong with the answer, so
one run reports every failing case at once (and the scenario's `cases` is what was really tried).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bridge.stack.launcher import StackInfo
from tests.raw_socket import ws_url

# Generous ceilings: a refusal that takes longer than this is a hang, not a slow machine.
ANSWER_CEILING_S = 10.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}.{b64url(signature)}"


def hs256_by_hand(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed with any bytes as the key (PyJWT refuses a PEM key as HMAC secret;
    an attacker's own code does not)."""
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


@dataclass
class Cases:
    """Every hostile case tried, and the ones whose answer was wrong."""

    tried: int = 0
    wrong: list[str] = field(default_factory=list)

    def check(self, case: str, ok: bool, answer: object) -> None:
        self.tried += 1
        if not ok:
            self.wrong.append(f"{case}: {str(answer)[:300]}")

    def assert_all_refused(self) -> None:
        assert not self.wrong, f"{len(self.wrong)} of {self.tried} cases answered wrongly:\n" + "\n".join(self.wrong)


@dataclass
class Answer:
    status: int
    body: Any  # the JSON body, or None when it was not JSON
    text: str
    content_type: str
    seconds: float
    retry_after: str | None = None


async def request(
    http: aiohttp.ClientSession, method: str, url: str, *, retry_429: bool = True, **kwargs: Any
) -> Answer:
    """One REST call; a 429 from the per-user request limit is waited out and the call repeated
    (the limit is not what these cases test), unless `retry_429` is False."""
    for _ in range(20):
        started = time.monotonic()
        async with http.request(method, url, **kwargs) as r:
            text = await r.text(errors="replace")
            seconds = time.monotonic() - started
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            answer = Answer(r.status, body, text, r.content_type, seconds, r.headers.get("Retry-After"))
        if answer.status == 429 and retry_429 and answer.body == {"error": "too many requests"}:
            await asyncio.sleep(float(answer.retry_after or 1))
            continue
        return answer
    raise AssertionError(f"{method} {url}: still 429 after 20 tries")


def clear_error(answer: Answer, *statuses: int) -> bool:
    """A refusal with one of `statuses` and a JSON `{"error": "<something>"}`, answered in time."""
    return (
        answer.status in statuses
        and isinstance(answer.body, dict)
        and isinstance(answer.body.get("error"), str)
        and bool(answer.body["error"].strip())
        and answer.body["error"] != "internal error"
        and answer.seconds < ANSWER_CEILING_S
    )


def refused_ack(ack: object) -> bool:
    """A Socket.IO acknowledgement that refuses, saying why (never an internal error)."""
    return (
        isinstance(ack, dict)
        and ack.get("ok") is False
        and isinstance(ack.get("error"), str)
        and bool(ack["error"].strip())
        and ack["error"] != "internal error"
    )


async def call(sio: socketio.AsyncClient, event: str, data: object = None, timeout: float = ANSWER_CEILING_S) -> Any:
    """A Socket.IO action's acknowledgement; a "too many requests" answer from the per-socket
    action limit is waited out and the action repeated (the limit is not what these cases test)."""
    for _ in range(50):
        ack = await sio.call(event, data, timeout=timeout)
        if isinstance(ack, dict) and ack.get("error") == "too many requests":
            await asyncio.sleep(float(ack.get("retryAfter") or 0.1) + 0.05)
            continue
        return ack
    raise AssertionError(f"{event}: still rate-limited after 50 tries")


async def socket_refusal(url: str, auth: object, headers: dict[str, str] | None = None) -> tuple[str | None, float]:
    """Try a Socket.IO connection: (None, seconds) when it was accepted (then closed), else (the
    refusal's message, seconds). A refusal in the handshake's HTTP answer (Origin) has no
    connect_error; its message is the client's."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []

    @sio.event  # type: ignore[untyped-decorator]
    async def connect_error(data: Any) -> None:
        errors.append(data)

    started = time.monotonic()
    try:
        await sio.connect(
            url, auth=auth, headers=headers or {}, transports=["websocket"], wait_timeout=ANSWER_CEILING_S
        )
    except socketio.exceptions.ConnectionError as exc:
        seconds = time.monotonic() - started
        message = errors[0].get("message") if errors and isinstance(errors[0], dict) else str(exc)
        return str(message or exc), seconds
    seconds = time.monotonic() - started
    await sio.disconnect()
    return None, seconds


def socket_url(stack: StackInfo) -> str:
    return ws_url(stack.web_url)


class RawSocket:
    """A websocket speaking Engine.IO v4 / Socket.IO v5 by hand (bench/socket_load.py), for packets
    no well-behaved client library would send."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, stack: StackInfo, token: str | None) -> RawSocket:
        ws = await http.ws_connect(socket_url(stack), max_msg_size=0)
        raw = cls(ws)
        opening = await raw.receive(5)
        assert opening is not None and opening.startswith("0{"), opening
        if token is not None:
            await ws.send_str("40" + json.dumps({"token": token}))
            connected = await raw.receive(5)
            assert connected is not None and connected.startswith("40{"), connected
        return raw

    async def receive(self, timeout: float) -> str | None:
        """The next text packet (pings answered on the way); None once the connection is closed."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            message = await self.ws.receive(timeout=left)
            if message.type != aiohttp.WSMsgType.TEXT:
                return None if message.type in _CLOSED else ""
            if message.data == "2":
                await self.ws.send_str("3")
                continue
            return str(message.data)

    async def dropped(self, timeout: float = 5.0) -> bool:
        """True if the server ends the connection (an Engine.IO close packet, or the websocket
        closing) within `timeout`; packets before that are skipped."""
        try:
            while True:
                packet = await self.receive(timeout)
                if packet is None or packet == "1":
                    return True
        except TimeoutError:
            return False

    async def ack(self, packet: str, timeout: float = 5.0) -> str | None:
        """Send `packet` (an event with an ack id) and return the ack packet that answers it."""
        await self.ws.send_str(packet)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = await self.receive(deadline - time.monotonic())
            if got is None:
                return None
            if got.startswith("43"):
                return got
        return None

    async def close(self) -> None:
        await self.ws.close()


_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


class BridgeLog:
    """The bridge's log (var/.../log/bridge.out) from the point this was made: what a test caused."""

    def __init__(self, stack: StackInfo) -> None:
        self.path = Path(stack.log_dir) / "bridge.out"
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def since(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    def errors(self) -> list[str]:
        """ERROR lines and tracebacks logged since: a client's bad input must cause neither."""
        return [line for line in self.since().splitlines() if " ERROR " in line or line.startswith("Traceback")]


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


async def health_ok(http: aiohttp.ClientSession) -> bool:
    async with http.get("/health") as r:
        return r.status == 200 and (await r.json()).get("status") == "ok"
