"""The one place that reaches into python-socketio past its public API, and why.

Checked against python-socketio 5.18.1 (python-engineio 4.15.1); look again on an upgrade:

* `SocketServer._handle_eio_message` overrides a private method: python-socketio has no hook for
  a packet it cannot decode. Left to it, such a packet raised inside this method: an ERROR traceback
  in the log per packet (as many as a client cares to send) and the socket kept open. Here the
  packet is checked first, and its connection closed.
* `room_names` reads `manager.rooms` (the manager's own table, rooms[namespace][room][sid]): there
  is no public call listing the rooms that have sockets on this node, which the fan-out's gap
  recovery needs (bridge.fanout).
* `is_connected` calls the manager's `is_connected`, which the server does not expose: it tells a
  connected socket's *event* named "connect" or "disconnect" from the connection itself.

* `RoomManager.emit` replaces the manager's emit for events without an acknowledgement: the stock
  one encodes the packet once but starts a task per socket to queue it, and a task per delivery
  was most of the relay's cost (bench, relay ceiling). Here the one encoded packet is queued to each
  socket in turn through the server's `_send_eio_packet` (queuing does not wait: engine.io's queues
  are unbounded; bridge.slow_sockets bounds them), in the order the room lists them.

(bridge.slow_sockets reads engine.io's per-socket queues for the same reason: no public API.)
"""

from __future__ import annotations

import logging

import socketio
from engineio import packet as eio_packet
from engineio.exceptions import SocketIsClosedError
from socketio import packet as sio_packet

log = logging.getLogger(__name__)

NAMESPACE = "/"

# What a client may send: a connect, a disconnect, an event and an acknowledgement. Binary packets
# are refused: the API is JSON, attachments travel base64-encoded or as staged uploads.
_CLIENT_PACKETS = (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK)


def packet_problem(data: object) -> str | None:
    """What is wrong with a Socket.IO packet a client sent (None: nothing python-socketio would
    choke on). Pure: decodes the packet the way the server will."""
    if not isinstance(data, str):
        return "binary packets are not supported"
    try:
        pkt = sio_packet.Packet(encoded_packet=data)
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
        return f"undecodable ({type(exc).__name__})"
    if pkt.packet_type not in _CLIENT_PACKETS:
        return f"packet type {pkt.packet_type} is not one a client sends"
    if pkt.packet_type == sio_packet.EVENT and not (
        isinstance(pkt.data, list) and pkt.data and isinstance(pkt.data[0], str)
    ):
        return "an event needs a name"
    return None


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]  # python-socketio has no type hints
    """python-socketio's server, closing the connection of a client that sends a malformed packet."""

    async def _handle_eio_message(self, eio_sid: str, data: object) -> None:
        problem = packet_problem(data)
        if problem is not None:
            log.info("[eio %s] malformed Socket.IO packet (%s); closing the connection", eio_sid, problem)
            await self.eio.disconnect(eio_sid)
            return
        await super()._handle_eio_message(eio_sid, data)


class RoomManager(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager, queuing one encoded packet to each socket of a room without a
    task per socket (see the module's docstring)."""

    async def emit(  # noqa: PLR0917 - python-socketio's signature
        self,
        event: str,
        data: object,
        namespace: str,
        room: object = None,
        skip_sid: object = None,
        callback: object = None,
        to: object = None,
        **kwargs: object,
    ) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs)
            return
        room = to or room
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        packets = [
            eio_packet.Packet(eio_packet.MESSAGE, p) for p in (encoded if isinstance(encoded, list) else [encoded])
        ]
        for sid, eio_sid in list(self.get_participants(namespace, room)):
            if sid in skip:
                continue
            for pkt in packets:
                try:
                    await self.server._send_eio_packet(eio_sid, pkt)
                except SocketIsClosedError:
                    break  # closing: its disconnect is under way, the others still get theirs


async def _not_ready(_sid: str, *_args: object) -> None:
    raise socketio.exceptions.ConnectionRefusedError("starting, try again")


def make_server(cors_origins: tuple[str, ...]) -> SocketServer:
    """The bridge's Socket.IO server. It is attached to the app when the app is made, and its
    handlers are registered once Redis and the rest are open (bridge.realtime); until then a
    connection is refused rather than accepted unauthenticated (python-socketio accepts every
    connection of a server without a connect handler)."""
    server = SocketServer(
        async_mode="aiohttp",
        # None keeps python-socketio's same-origin check; a list allows exactly those origins.
        cors_allowed_origins=list(cors_origins) if cors_origins else None,
        max_http_buffer_size=1 << 20,
        client_manager=RoomManager(),
        logger=False,
        engineio_logger=False,
    )
    server.on("connect", _not_ready)
    return server


def room_names(server: socketio.AsyncServer) -> list[str]:
    """The names of the rooms with a socket on this node (the default namespace's)."""
    rooms = server.manager.rooms.get(NAMESPACE, {})
    return [room for room in list(rooms) if isinstance(room, str)]


def is_connected(server: socketio.AsyncServer, sid: str) -> bool:
    """Whether `sid` is a socket whose connect completed and whose disconnect has not begun."""
    return bool(server.manager.is_connected(sid, NAMESPACE))
