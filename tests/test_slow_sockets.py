"""bridge.slow_sockets: a socket whose client stops reading is dropped once its queue passes the bound;
the others keep every packet. A Socket.IO server of its own in this process, on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from unittest import mock

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from bridge.metrics import Metrics
from bridge.slow_sockets import SEND_BUFFER_BYTES, SlowSocketGuard
from tests.raw_socket import RawSocket
from tests.waiting import wait_until

BOUND = 50  # packets a socket may have waiting
PACKETS = 300
PAD = "x" * (16 << 10)  # 300 x 16 KiB: far more than the kernel and the transport buffer hold


def small_receive_buffer(addr_info: tuple[int, int, int, str, tuple[str, int]]) -> socket.socket:
    """A client socket that can hold almost nothing unread (set before connect, so it stays small)."""
    family, kind, proto, _name, _address = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, socketio.AsyncServer, SlowSocketGuard, Metrics]]:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    metrics = Metrics()
    guard = SlowSocketGuard(sio, BOUND, metrics)
    app = web.Application(middlewares=[guard.track])
    sio.attach(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/")), sio, guard, metrics
    finally:
        await server.close()


def queued(sio: socketio.AsyncServer) -> dict[str, int]:
    return {eio_sid: sock.queue.qsize() for eio_sid, sock in sio.eio.sockets.items()}


async def test_a_socket_that_stops_reading_is_dropped_and_the_reader_keeps_every_packet(
    served: tuple[str, socketio.AsyncServer, SlowSocketGuard, Metrics],
) -> None:
    url, sio, guard, metrics = served
    reader, slow = RawSocket("reader", "-"), RawSocket("slow", "-")
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=small_receive_buffer)) as slow_http,
    ):
        try:
            await reader.connect(http, url)
            await slow.connect(slow_http, url, read=False)
            assert len(sio.eio.sockets) == 2
            assert await guard.sweep() == 0  # nobody is behind yet

            for n in range(PACKETS):
                await sio.emit("mailbox_updated", {"action": "subscribed", "n": n, "pad": PAD})
            await wait_until(lambda: reader.mailbox_actions["subscribed"] == PACKETS, 30, "the reader has every packet")
            await wait_until(lambda: max(queued(sio).values()) > BOUND, 30, "the slow socket's queue passes the bound")
            behind = [eio_sid for eio_sid, count in queued(sio).items() if count > BOUND]
            assert len(behind) == 1
            connection = sio.environ[behind[0]]["aiohttp.request"].transport
            assert not connection.is_closing()

            assert await guard.sweep() == 1
            # At once: its session closed (out of its rooms) and its connection cut, though its writer is stuck.
            assert behind[0] not in sio.eio.sockets or sio.eio.sockets[behind[0]].closed
            assert connection.is_closing()
            assert metrics.registry.get_sample_value("mailbridge_slow_sockets_dropped_total") == 1
            await wait_until(lambda: behind[0] not in sio.eio.sockets, 30, "the slow socket is gone from the server")
            assert len(sio.eio.sockets) == 1
            assert await guard.sweep() == 0  # dropped once, counted once

            # The reader is still served.
            await sio.emit("mailbox_updated", {"action": "created", "n": PACKETS})
            await wait_until(lambda: reader.mailbox_actions["created"] == 1, 30, "the reader has the next packet")
            # And the slow client's connection is closed under it: it finds the end after what was sent.
            assert slow.ws is not None
            async with asyncio.timeout(30):
                while (await slow.ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
        finally:
            await asyncio.gather(reader.close(), slow.close())


async def test_websocket_upgrades_get_a_bounded_send_buffer_and_are_tracked_while_open() -> None:
    guard = SlowSocketGuard(socketio.AsyncServer(async_mode="aiohttp"), BOUND, Metrics())
    with socket.socket() as raw:
        transport = mock.Mock(spec=asyncio.Transport)
        transport.get_extra_info.side_effect = lambda name, default=None: raw if name == "socket" else default
        request = make_mocked_request(
            "GET",
            "/socket.io/?EIO=4&transport=websocket&sid=abc",
            headers={"Upgrade": "websocket"},
            transport=transport,
        )
        seen: list[asyncio.Transport | None] = []

        async def handler(_request: web.Request) -> web.StreamResponse:
            seen.append(guard._transport("abc"))
            return web.Response()

        await guard.track(request, handler)
        # Linux reports twice what was set (its own bookkeeping); either way no longer autotuned.
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) in (SEND_BUFFER_BYTES, 2 * SEND_BUFFER_BYTES)
        assert seen == [transport]  # while the websocket is open, found by its engine.io sid
        assert guard._transport("abc") is None  # and forgotten once it closed


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/socket.io/?EIO=4&transport=polling&sid=abc", {}),  # long-polling: no upgrade
        ("/api/v1/me?sid=abc", {"Upgrade": "websocket"}),  # not the Socket.IO path
    ],
)
async def test_other_requests_pass_untouched(path: str, headers: dict[str, str]) -> None:
    guard = SlowSocketGuard(socketio.AsyncServer(async_mode="aiohttp"), BOUND, Metrics())
    with socket.socket() as raw:
        before = raw.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        transport = mock.Mock(spec=asyncio.Transport)
        transport.get_extra_info.side_effect = lambda name, default=None: raw if name == "socket" else default
        request = make_mocked_request("GET", path, headers=headers, transport=transport)
        seen: list[asyncio.Transport | None] = []

        async def handler(_request: web.Request) -> web.StreamResponse:
            seen.append(guard._transport("abc"))
            return web.Response(text="ok")

        response = await guard.track(request, handler)
        assert isinstance(response, web.Response) and response.text == "ok"
        assert seen == [None]
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
