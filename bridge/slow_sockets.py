"""Bounded per-socket send buffers: a socket that cannot keep up is dropped, never buffered forever.

python-engineio gives every socket an unbounded queue of packets, drained into its websocket by
that socket's own writer task. A client that stops reading (a frozen tab, a dead network path, a
hostile client) never delays anyone else, since each socket has its own writer, but its queue, and
the bridge's memory, would grow with every event for its account. `SlowSocketGuard` sweeps the
queues a few times a second and drops any socket holding more than `max_queued` packets: the
engine.io session is closed (it leaves its rooms at once), its queue is emptied, and its TCP
connection is aborted so the writer blocked on it ends too. The client reconnects and resumes by
lastEventId from the resume log, so it misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web

from bridge.metrics import Metrics

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.25
# The kernel's send buffer of each websocket, set explicitly (which also turns off its growth by
# autotuning, up to net.ipv4.tcp_wmem's 4 MiB): a client that stops reading then costs at most this
# in the kernel, plus the queue's bound here, instead of megabytes before the queue even grows.
SEND_BUFFER_BYTES = 128 << 10


class SlowSocketGuard:
    def __init__(self, sio: socketio.AsyncServer, max_queued: int, metrics: Metrics) -> None:
        self.sio = sio
        self.max_queued = max_queued
        self.metrics = metrics
        # The transport of each websocket upgraded from long-polling, by engine.io sid (a socket
        # that opened as a websocket is found through its connect request instead).
        self._upgraded: dict[str, asyncio.Transport] = {}

    @web.middleware
    async def track(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        if (
            not request.path.startswith("/socket.io/")
            or request.headers.get("Upgrade", "").lower() != "websocket"
            or transport is None
        ):
            return await handler(request)
        raw = transport.get_extra_info("socket")
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sid = request.query.get("sid")
        if sid is None:
            return await handler(request)
        self._upgraded[sid] = transport
        try:
            return await handler(request)
        finally:
            if self._upgraded.get(sid) is transport:
                del self._upgraded[sid]

    def _transport(self, eio_sid: str) -> asyncio.Transport | None:
        if eio_sid in self._upgraded:
            return self._upgraded[eio_sid]
        environ: Any = self.sio.environ.get(eio_sid)
        request = environ.get("aiohttp.request") if isinstance(environ, dict) else None
        return request.transport if isinstance(request, web.BaseRequest) else None

    async def sweep(self) -> int:
        """Drop every socket over the bound; returns how many were dropped."""
        dropped = 0
        for eio_sid, sock in list(self.sio.eio.sockets.items()):
            queued = sock.queue.qsize()
            if queued <= self.max_queued or sock.closed:
                continue
            dropped += 1
            self.metrics.slow_sockets_dropped.inc()
            log.warning(
                "[eio %s] %d packets waiting (bound %d): the client is not reading; dropping it (it resumes by"
                " lastEventId)",
                eio_sid,
                queued,
                self.max_queued,
            )
            transport = self._transport(eio_sid)
            await sock.close(wait=False, abort=True)  # leaves its rooms: no more packets for it
            with contextlib.suppress(asyncio.QueueEmpty, ValueError):
                while True:
                    sock.queue.get_nowait()
                    sock.queue.task_done()
            sock.queue.put_nowait(None)  # ends its writer once the transport is gone
            if transport is not None:
                transport.abort()
        return dropped

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            await self.sweep()
