"""A lightweight Socket.IO client over one raw websocket, for tests that need hundreds of sockets
(python-socketio's client costs a task set and an HTTP session each) or a socket that misbehaves.

Engine.IO v4 / Socket.IO v5 framing: `0{...}` open, `40{auth}` connect, `42[name, payload]` event,
`2`/`3` ping/pong (the server pings; the client answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ENGINE_PATH = "/socket.io/?EIO=4&transport=websocket"


class Refused(Exception):
    pass


def ws_url(web_url: str) -> str:
    return web_url.rstrip("/").replace("http://", "ws://", 1) + ENGINE_PATH


@dataclass
class RawSocket:
    account: str
    token: str
    last_event_id: str | None = None
    subjects: Counter[str] = field(default_factory=Counter)  # new_email subjects seen
    names: Counter[str] = field(default_factory=Counter)  # every event name seen
    mailbox_actions: Counter[str] = field(default_factory=Counter)  # mailbox_updated, by action
    resyncs: int = 0
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, session: aiohttp.ClientSession, web_url: str, *, read: bool = True) -> None:
        ws = await session.ws_connect(ws_url(web_url), autoping=True, heartbeat=None, max_msg_size=0)
        try:
            async with asyncio.timeout(15):
                opening = await ws.receive()
                if opening.type is not aiohttp.WSMsgType.TEXT or not str(opening.data).startswith("0"):
                    raise Refused(f"no Engine.IO open packet ({opening.type.name})")
                auth: dict[str, Any] = {"token": self.token}
                if self.last_event_id is not None:
                    auth["lastEventId"] = {self.account: self.last_event_id}
                await ws.send_str("40" + json.dumps(auth))
                while True:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise Refused(f"closed during the handshake ({msg.type.name})")
                    data = str(msg.data)
                    if data == "2":
                        await ws.send_str("3")
                    elif data.startswith("40"):
                        break
                    elif data.startswith("44"):
                        raise Refused(data[2:200])
                    else:
                        self._packet(data)  # an event that raced the CONNECT ack
        except BaseException:
            await ws.close()
            raise
        self.ws = ws
        if read:
            self.reader = asyncio.create_task(self._read(ws))

    def _packet(self, data: str) -> None:
        if not data.startswith("42"):
            return
        packet = json.loads(data[2:])
        name = str(packet[0])
        payload = packet[1] if len(packet) > 1 else None
        self.names[name] += 1
        if isinstance(payload, dict):
            if name == "new_email":
                self.subjects[str(payload.get("subject"))] += 1
            if name == "resync":
                self.resyncs += 1
            if name == "mailbox_updated":
                self.mailbox_actions[str(payload.get("action"))] += 1
            if isinstance(payload.get("eventId"), str):
                self.last_event_id = payload["eventId"]
        self.changed.set()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return
                data = str(msg.data)
                if data == "2":
                    await ws.send_str("3")
                else:
                    self._packet(data)

    def drop(self) -> None:
        """Cut the connection as a network failure would: no close handshake."""
        if self.ws is not None:
            transport = self.ws.get_extra_info("socket")
            if isinstance(transport, socket.socket):
                with contextlib.suppress(OSError):
                    transport.shutdown(socket.SHUT_RDWR)
        if self.reader is not None:
            self.reader.cancel()
        self.ws = None

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.ws = None
