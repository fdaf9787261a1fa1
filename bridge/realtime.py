"""Socket.IO edge: authenticated sockets, one room per mail account, and the resume protocol.

Connecting: a socket must present a valid JWT (`auth.token`, or an `Authorization: Bearer` header)
or it is refused; it joins the rooms of exactly the accounts its token grants, and lives no longer
than its token. Origins are checked against the configured allow-list during the handshake, and a
user has at most `max_sockets_per_user` sockets.

Resume, across any number of bridge nodes (bridge.fanout emits each published event of an account
with a socket here to its room, with its id as `eventId`): a socket that connects with
`auth.lastEventId` (one id per account; one id for all is read as each account's) is replayed, per
account, the logged events after that id up to how far the room has had them, then joins the
room, under the lock the reader takes to emit to it: everything past that reaches it live, and
nothing is missed or sent twice across the seam. If the log no longer reaches back to that id, the
socket gets `resync` instead. A socket that connects without a `lastEventId` for an account gets
`resume_point` (the newest id it will not get live, or "0-0"), taken under the same lock as its
join, so it can resume even if no event reached it before it dropped.

A socket that connects with `auth.push` (its browser's Web Push subscription id) marks that
browser as having a tab open while it stays (bridge.push_presence): its new mail comes live, not pushed.

Client actions (bridge.socket_actions) are registered on the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from redis.exceptions import RedisError

from bridge.auth import Identity, TokenIssuer
from bridge.errors import AuthError
from bridge.fanout import FanoutReader, account_room
from bridge.metrics import Metrics
from bridge.push_presence import PushPresence
from bridge.sio_server import is_connected

log = logging.getLogger(__name__)

# How often a join watches its account again when the sweep let go of it in between (an empty room).
WATCH_TRIES = 3

Ack = dict[str, Any]


def _bearer(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if isinstance(header, str) and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


class Realtime:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        issuer: TokenIssuer,
        fanout: FanoutReader,
        *,
        max_sockets_per_user: int,
        metrics: Metrics,
        on_accounts: Callable[[tuple[str, ...]], None],
        presence: PushPresence | None = None,
    ) -> None:
        """Registers the connect and disconnect handlers on `sio`. `on_accounts` is called with the
        accounts of every new connection (the app starts their backfill); `presence` learns which
        browsers (`auth.push`) have a tab open, to keep Web Push away from them."""
        self.sio = sio
        self.issuer = issuer
        self.fanout = fanout
        self.max_sockets_per_user = max_sockets_per_user
        self.metrics = metrics
        self.on_accounts = on_accounts
        self.presence = presence
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets_by_user: dict[str, set[str]] = {}
        self._user_of: dict[str, str] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        sio.on("connect", self._connect)
        sio.on("disconnect", self._disconnect)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ connection

    def _client_sent(self, sid: str, name: str) -> Ack | None:
        """python-socketio hands a client's *event* named "connect" or "disconnect" to the same
        handler as the connection itself. Sent by a connected socket, a "disconnect" event dropped
        its expiry timer and its place in the per-user count while it stayed connected (outliving
        its token, past the socket limit). Such an event gets an error ack and changes nothing."""
        if not is_connected(self.sio, sid):
            return None  # the real thing: during a connect or a disconnect, the socket is neither
        log.info("[sid %s] refused an event named %r (reserved)", sid, name)
        return {"ok": False, "error": f"{name!r} is a reserved event name"}

    async def _connect(self, sid: str, environ: Any = None, auth: object = None, *_extra: object) -> Ack | None:
        refused = self._client_sent(sid, "connect")
        if refused is not None or not isinstance(environ, dict):
            return refused or {"ok": False, "error": "'connect' is a reserved event name"}
        if not isinstance(environ.get("aiohttp.request"), web.BaseRequest):
            # Only the server's own handshake carries the request object; JSON cannot forge one.
            return {"ok": False, "error": "'connect' is a reserved event name"}
        token = auth.get("token") if isinstance(auth, dict) else None
        token = token or _bearer(environ)
        try:
            identity = self.issuer.verify(token)
        except AuthError as exc:
            log.info("[sid %s] connection refused: %s", sid, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        sockets = self._sockets_by_user.get(identity.subject, set())
        if len(sockets) >= self.max_sockets_per_user:
            log.info("[sid %s] connection refused: %s has %d sockets", sid, identity.subject, len(sockets))
            raise socketio.exceptions.ConnectionRefusedError("too many connections for this user")
        # Counted before the awaits below, so that concurrent connects of one user cannot pass the
        # limit together; undone if the connect does not complete. python-socketio calls the
        # disconnect handler only for a socket whose connect handler returned, so nothing else would
        # give the slot back: a few Redis errors during connects would lock the user out for good.
        self._register(sid, identity)
        last_event_id = auth.get("lastEventId") if isinstance(auth, dict) else None
        points: dict[str, str] = {}
        try:
            await self.sio.save_session(sid, {"identity": identity})
            if last_event_id is None:
                for account in identity.accounts:
                    async with self._joined(account):
                        points[account] = self.fanout.emitted_through(account)
                        await self.sio.enter_room(sid, account_room(account))
            if sid not in self._expiry:
                # The token expired during the awaits above. Its timer could not disconnect a socket
                # whose connect had not completed (python-socketio ignores it): completing the
                # connect now would keep the socket past its token, for good.
                log.info("[sid %s] connection refused: the token expired during the connect", sid)
                raise socketio.exceptions.ConnectionRefusedError("token expired")
        except BaseException as exc:
            # Refused, failed or cancelled (shutdown): the slot is given back all the same.
            self._unregister(sid)
            if not isinstance(exc, Exception) or isinstance(exc, socketio.exceptions.ConnectionRefusedError):
                raise
            if isinstance(exc, RedisError | OSError):
                log.warning("[sid %s] connection refused: Redis did not answer: %s", sid, exc)
            else:
                log.exception("[sid %s] connection refused: the connect failed", sid)
            # A refusal rather than the exception: python-socketio then answers the client and
            # forgets the half-made connection (and its rooms) instead of leaving both hanging.
            raise socketio.exceptions.ConnectionRefusedError("temporarily unavailable, try again") from None
        self.on_accounts(identity.accounts)
        if self.presence is not None and isinstance(auth, dict):
            await self.presence.opened(sid, identity.accounts, auth.get("push"))
        log.info("[sid %s] connected as %s (%d account(s))", sid, identity.subject, len(identity.accounts))
        if last_event_id is None:
            self._spawn(self._send_resume_points(sid, points), f"points-{sid}")
            return None
        # Replay after the CONNECT packet went out (the handler returns first), then join.
        self._spawn(self._resume(sid, identity, last_event_id), f"resume-{sid}")
        return None

    def _register(self, sid: str, identity: Identity) -> None:
        self._sockets_by_user.setdefault(identity.subject, set()).add(sid)
        self._user_of[sid] = identity.subject
        # A socket lives no longer than its token: at expiry it is disconnected (the client logs in
        # again and resumes with lastEventId).
        delay = max(0.0, identity.expires_at - time.time())
        self._expiry[sid] = asyncio.get_running_loop().call_later(delay, self._expire, sid)
        self.metrics.sockets.inc()

    def _unregister(self, sid: str) -> None:
        timer = self._expiry.pop(sid, None)
        if timer is not None:
            timer.cancel()
        subject = self._user_of.pop(sid, None)
        if subject is not None:
            self.metrics.sockets.dec()
            sockets = self._sockets_by_user.get(subject, set())
            sockets.discard(sid)
            if not sockets:
                self._sockets_by_user.pop(subject, None)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _expire(self, sid: str) -> None:
        self._expiry.pop(sid, None)
        log.info("[sid %s] token expired; disconnecting", sid)
        task = asyncio.create_task(self.sio.disconnect(sid), name=f"expire-{sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect(self, sid: str, reason: object = None, *_extra: object) -> Ack | None:
        refused = self._client_sent(sid, "disconnect")
        if refused is not None:
            return refused
        self._unregister(sid)
        if self.presence is not None:
            await self.presence.closed(sid)
        log.debug("[sid %s] disconnected (%s)", sid, reason)
        return None

    async def identity(self, sid: str) -> Identity:
        """The identity a connected socket authenticated as (AuthError if none)."""
        session = await self.sio.get_session(sid)
        identity = session.get("identity")
        if not isinstance(identity, Identity):
            raise AuthError("not authenticated")
        return identity

    # ------------------------------------------------------------------ resume

    @contextlib.asynccontextmanager
    async def _joined(self, account: str) -> AsyncIterator[None]:
        """The account watched on this node and its lock held: a socket joins its room here, with
        `emitted_through` as the seam between what it is replayed and what reaches it live."""
        for _ in range(WATCH_TRIES):
            await self.fanout.watch(account)
            async with self.fanout.lock(account):
                if self.fanout.watching(account):  # not let go of since (an empty room is)
                    yield
                    return
        raise RedisError(f"{account}: its channel was let go of {WATCH_TRIES} times while joining")

    async def _send_resume_points(self, sid: str, points: dict[str, str]) -> None:
        """A socket that came without lastEventId (or without one for an account) learns where its
        view of each account begins, so a reconnect can resume from there even if no event came
        before it dropped: without this, what happened while it was away would be replayed to no one."""
        await asyncio.sleep(0)  # after the CONNECT packet
        for account, event_id in points.items():
            await self.sio.emit("resume_point", {"account": account, "eventId": event_id}, to=sid)

    async def _resume(self, sid: str, identity: Identity, last_event_id: object) -> None:
        await asyncio.sleep(0)  # let the CONNECT packet be queued before any replayed event
        try:
            fresh: dict[str, str] = {}
            for account in identity.accounts:
                since = last_event_id.get(account) if isinstance(last_event_id, dict) else last_event_id
                async with self._joined(account):
                    if since is None:  # an account this client has no position for yet
                        fresh[account] = self.fanout.emitted_through(account)
                        replayed = 0
                    else:
                        replayed = await self.fanout.replay(sid, account, since, self.fanout.emitted_through(account))
                    await self.sio.enter_room(sid, account_room(account))
                log.info("[sid %s] resumed %s: %d event(s) replayed", sid, account, replayed)
            await self._send_resume_points(sid, fresh)
        except Exception:
            # Dropped rather than kept half-resumed: its client connects again and resumes from the
            # last event it has (a room this node does not watch would bring it nothing).
            log.exception("[sid %s] resume failed; disconnecting it to resume again", sid)
            await self.sio.disconnect(sid)
