"""bridge.sio_server: the packets a client may send, and a room's events queued to each of its
sockets once, over a real python-socketio server and clients on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from aiohttp import web

from bridge.sio_server import make_server, packet_problem


def test_the_packets_a_client_may_send() -> None:
    assert packet_problem('2["typing",{"emailId":"x"}]') is None
    assert packet_problem("0") is None and packet_problem("1") is None and packet_problem("31[true]") is None
    assert packet_problem(b"\x00") == "binary packets are not supported"
    assert packet_problem("2[]") == "an event needs a name"
    assert packet_problem('2[{"not":"a name"}]') == "an event needs a name"
    assert (packet_problem("4") or "").startswith("packet type 4")  # an error is the server's to send
    assert (packet_problem("2[") or "").startswith("undecodable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served() -> AsyncIterator[tuple[socketio.AsyncServer, str]]:
    """The bridge's Socket.IO server on a port of its own: every socket joins room "r"."""
    server = make_server(())

    async def connect(sid: str, _environ: dict[str, Any], _auth: object) -> None:
        await server.enter_room(sid, "r")

    server.on("connect", connect)
    app = web.Application()
    server.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_room_gets_each_event_once_in_order_but_the_skipped_socket(
    served: tuple[socketio.AsyncServer, str],
) -> None:
    server, url = served
    clients = [socketio.AsyncClient() for _ in range(3)]
    got: list[list[object]] = [[] for _ in clients]
    done = [asyncio.Event() for _ in clients]  # set by the last event, which every socket gets

    def receiver(inbox: list[object], last: asyncio.Event) -> Any:
        def on_n(*args: object) -> None:
            inbox.append(args[0] if len(args) == 1 else list(args))
            if len(args) == 2:
                last.set()

        return on_n

    for client, inbox, last in zip(clients, got, done, strict=True):
        client.on("n", receiver(inbox, last))
        await client.connect(url, transports=["websocket"], auth={})
    try:
        skipped = clients[0].get_sid()
        for i in range(50):
            await server.emit("n", {"i": i}, room="r", skip_sid=skipped if i % 2 else None)
        await server.emit("n", ("two", "args"), room="r")  # a tuple: several arguments, as python-socketio
        async with asyncio.timeout(10):
            for last in done:
                await last.wait()
        want: list[object] = [{"i": i} for i in range(50)]
        assert got[1] == got[2] == [*want, ["two", "args"]]  # every event, once, in order
        # The skipped socket missed only the events it was skipped for.
        assert got[0] == [*(e for i, e in enumerate(want) if i % 2 == 0), ["two", "args"]]
    finally:
        for client in clients:
            await client.disconnect()
