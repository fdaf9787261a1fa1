"""A Socket.IO test client that records every event it receives, for waiting on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import socketio


class RecordingClient:
    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

        @self.sio.on("*")
        async def any_event(name: str, data: Any) -> None:
            self.events.append((name, data))
            self._changed.set()

    async def connect(self, url: str, token: str | None, **kwargs: Any) -> None:
        auth = {"token": token} if token is not None else None
        await self.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=5, **kwargs)

    async def wait_for(
        self, name: str, predicate: Callable[[Any], bool] = lambda _: True, timeout: float = 15.0
    ) -> Any:
        async def scan() -> Any:
            seen = 0
            while True:
                for event_name, data in self.events[seen:]:
                    if event_name == name and predicate(data):
                        return data
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def close(self) -> None:
        await self.sio.disconnect()
