"""Socket.IO edge: authenticated sockets, one room per mail account, gap-free resume, client actions.

Connecting: a socket must present a valid JWT (`auth.token`, or an `Authorization: Bearer` header)
or it is refused; it joins the rooms of exactly the accounts its token grants. Origins are checked
against the configured allow-list during the handshake.

Relay and resume, across any number of bridge nodes: a browser event is appended, by one script
(atomic in Redis), to the fan-out stream every node reads (`<prefix>:browser-fanout`) and, with the
same id, to its account's resume log (a capped stream, `<prefix>:browser:<account>`); that id is the
event's `eventId`. Each node reads the fan-out in order and emits each event to the account's room
of its own sockets, so every socket gets it once, whichever node published it. A socket that
connects with `auth.lastEventId` is replayed the logged events after that id up to the node's
fan-out position, then joins the room; the reader takes the same per-account lock to emit, so
everything past that position reaches it live and nothing is missed or sent twice across the seam.
If the log no longer reaches back to that id, the socket gets `resync` instead. A node that falls
further behind than the fan-out keeps (FANOUT_MAXLEN entries) sees a number skipped in the entries'
sequence and replays the missed range from the resume logs of its accounts before going on (to the
rooms of sockets that join meanwhile too). A socket that
connects without a `lastEventId` for an account gets `resume_point` (the newest id it will not get
live, or "0-0"), taken under the same lock as its join, so it can resume even if no event reached it
before it dropped.
Ingest events are relayed once per key: a stream entry delivered twice is emitted once. The key's
marker is written by the same script as the events it stands for, so a publish that failed (a Redis
error, a dropped connection, a node killed) leaves no marker and the entry's retry publishes it, and
one that succeeded unheard (a lost reply) is not published again.

Client actions answer through the Socket.IO acknowledgement: `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import redis.asyncio as aioredis
import socketio
from aiohttp import web
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from socketio import packet as sio_packet

from bridge.auth import Identity, TokenIssuer
from bridge.browser_events import BrowserEvent, MtaFacts, parse_email_id, to_browser
from bridge.errors import AuthError, BridgeError, Forbidden, InvalidInput, NotFound, RateLimited
from bridge.events import Event, MessageAdded, MtaAccepted
from bridge.imap import ImapGateway
from bridge.mail_service import MailService, owned_account
from bridge.metrics import Metrics
from bridge.rate_limit import RateLimiter
from bridge.streams import Delivery

log = logging.getLogger(__name__)

LOCK_STRIPES = 256
# Entries kept in the fan-out: how far a node may fall behind before it misses events (minutes of
# mail at hundreds of events a second), at a few hundred bytes each.
FANOUT_MAXLEN = 50_000
FANOUT_BATCH = 500
REPLAY_PAGE = 500  # resume-log entries read at a time

# One script, atomic in Redis, publishes a call's events. KEYS: the fan-out stream, its sequence
# counter, the n events' resume logs, then the call's m markers. ARGV: the fan-out's and the logs'
# MAXLEN, n, m, the m markers' TTLs, then six per event: account, name, payload, a sid to skip (""
# for none), "1" to log it ("0" for an ephemeral event such as user_typing), and its marker's number
# (1..m, or 0 for none).
# A marker stands for its events having been published: set by the same script that writes them, so
# there is never one without the other. Events whose marker is already set (an ingest entry relayed
# before, retried after a lost reply or claimed from a dead node; a call redis-py repeated after a
# lost reply) are not written again; the ids the marker kept are returned for them instead.
# Each fan-out entry carries the next number of the counter ('q'): a reader that finds a number
# skipped knows the stream was trimmed past entries it had not read (it fell more than FANOUT_MAXLEN
# behind). A log entry takes its fan-out entry's id, so both streams order events alike; a log whose
# last id is not older (one written before this scheme, or a clock step) gets a fresh id instead.
# Everything that could fail is checked before the first write: Redis does not undo a script's writes
# when it fails half-way, and a counter bumped (a false gap on every node), a fan-out entry without
# its log entry, or a marker without its events would each outlive the error.
# Returns {ids, fresh}: each event's id, and 1 if this call wrote it (0 if its marker was set).
_PUBLISH_SCRIPT = """
local n, m = tonumber(ARGV[3]), tonumber(ARGV[4])
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function wrong(key, want)
  local t = kind(key)
  return t ~= 'none' and t ~= want
end
if wrong(KEYS[1], 'stream') then return redis.error_reply('WRONGTYPE fan-out ' .. KEYS[1] .. ' is not a stream') end
if wrong(KEYS[2], 'string') or not string.match(redis.call('GET', KEYS[2]) or '0', '^%d+$') then
  return redis.error_reply('WRONGTYPE fan-out counter ' .. KEYS[2] .. ' is not a number')
end
for i = 3, n + 2 do
  if wrong(KEYS[i], 'stream') then
    return redis.error_reply('WRONGTYPE resume log ' .. KEYS[i] .. ' is not a stream')
  end
end
local kept = {}  -- marker number -> the ids its first publication stored, or false when not set
for j = 1, m do
  local key = KEYS[n + 2 + j]
  local t = kind(key)
  if t == 'none' then
    kept[j] = false
  else
    local ids = {}
    if t == 'string' then
      for id in string.gmatch(redis.call('GET', key), '[^,]+') do ids[#ids + 1] = id end
    end
    kept[j] = ids
  end
end
local base = 4 + m
local count = 0
for i = 1, n do
  local marker = tonumber(ARGV[base + i * 6])
  if marker == 0 or not kept[marker] then count = count + 1 end
end
local seq = 0
if count > 0 then seq = redis.call('INCRBY', KEYS[2], count) - count end
local ids, fresh, made, used = {}, {}, {}, {}
for i = 1, n do
  local at = base + (i - 1) * 6
  local marker = tonumber(ARGV[at + 6])
  if marker > 0 and kept[marker] then
    used[marker] = (used[marker] or 0) + 1
    ids[i] = kept[marker][used[marker]] or ''
    fresh[i] = 0
  else
    seq = seq + 1
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      'a', ARGV[at + 1], 'n', ARGV[at + 2], 'p', ARGV[at + 3], 's', ARGV[at + 4], 'l', ARGV[at + 5], 'q', seq)
    if ARGV[at + 5] == '1' then
      local logged = redis.pcall('XADD', KEYS[i + 2], 'MAXLEN', '~', ARGV[2], id, 'n', ARGV[at + 2], 'p', ARGV[at + 3])
      if type(logged) == 'table' and logged.err then
        redis.call('XADD', KEYS[i + 2], 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[at + 2], 'p', ARGV[at + 3])
      end
    end
    ids[i] = id
    fresh[i] = 1
    if marker > 0 then made[marker] = made[marker] and (made[marker] .. ',' .. id) or id end
  end
end
for j = 1, m do
  if made[j] then redis.call('SET', KEYS[n + 2 + j], made[j], 'EX', ARGV[4 + j]) end
end
return {ids, fresh}
"""
RELAYED_TTL_S = 86400
# A publish call's own marker only has to outlive redis-py repeating the call after a lost reply.
PUBLISHED_TTL_S = 300
# How long a connect waits for the fan-out reader's first position before refusing.
READER_WAIT_S = 5.0
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

Ack = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One event for the publish script."""

    account: str
    name: str
    payload: dict[str, Any]
    skip: str = ""  # a sid not to emit it to
    logged: bool = True  # into the account's resume log (False: ephemeral, e.g. user_typing)
    marker: int = 0  # the number (from 1) of the call's marker that stands for it; 0 for none


def account_room(account: str) -> str:
    return f"account:{account.lower()}"


def _bearer(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if isinstance(header, str) and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _entry_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _older(a: str, b: str) -> bool:
    """Stream ids compare as (milliseconds, sequence)."""
    a_ms, a_seq = (int(x) for x in a.split("-"))
    b_ms, b_seq = (int(x) for x in b.split("-"))
    return (a_ms, a_seq) < (b_ms, b_seq)


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


class _Server(socketio.AsyncServer):  # type: ignore[misc]  # python-socketio has no type hints
    """python-socketio's server, closing the connection of a client that sends a malformed packet.

    Left to python-socketio, such a packet raised inside its message handler: an ERROR traceback
    in the log per packet (as many as a client cares to send) and the socket kept open."""

    async def _handle_eio_message(self, eio_sid: str, data: object) -> None:
        problem = packet_problem(data)
        if problem is not None:
            log.info("[eio %s] malformed Socket.IO packet (%s); closing the connection", eio_sid, problem)
            await self.eio.disconnect(eio_sid)
            return
        await super()._handle_eio_message(eio_sid, data)


class Realtime:
    def __init__(
        self,
        issuer: TokenIssuer,
        cors_origins: tuple[str, ...],
        *,
        stream_prefix: str,
        resume_log_len: int,
        max_sockets_per_user: int,
        metrics: Metrics,
    ) -> None:
        self.issuer = issuer
        self.stream_prefix = stream_prefix
        self.resume_log_len = resume_log_len
        self.max_sockets_per_user = max_sockets_per_user
        self.sio = _Server(
            async_mode="aiohttp",
            # None keeps python-socketio's same-origin check; a list allows exactly those origins.
            cors_allowed_origins=list(cors_origins) if cors_origins else None,
            max_http_buffer_size=1 << 20,
            logger=False,
            engineio_logger=False,
        )
        self.metrics = metrics
        self.redis: aioredis.Redis | None = None
        self.imap: ImapGateway | None = None
        self.mail: MailService | None = None
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets_by_user: dict[str, set[str]] = {}
        self._user_of: dict[str, str] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        # The id of the last fan-out entry this node emitted (set once the reader started).
        self.position = "0-0"
        self._sequence: int | None = None  # the 'q' of that entry, when it had one
        self._reading = asyncio.Event()
        # While a fan-out gap is replayed (`_recover_gap`), until the reader emits the entry after
        # it: by account, how far its room has been caught up: the `before` of the gap its replay
        # finished (so a socket joining it now starts there), and the last id replayed to it (so a
        # replay retried after a Redis error goes on from there rather than send anything twice).
        self._in_gap = False
        self._gap_through: dict[str, str] = {}
        self._gap_last: dict[str, str] = {}
        self._publish_script: AsyncScript | None = None
        # Called with the accounts of every new connection (the app starts their backfill).
        self.on_accounts: Callable[[tuple[str, ...]], None] = lambda _accounts: None
        self.typing_limit = RateLimiter(2.0, 5)
        self.action_limit = RateLimiter(10.0, 30)
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self._action("join_email", self._join_email)
        self._action("typing", self._typing)
        self._action("mark_read", self._mark_read)
        self._action("send_email", self._send_email)
        self.sio.on("*", self._unknown_event)

    def bind(self, redis: aioredis.Redis, imap: ImapGateway, mail: MailService) -> None:
        self.bind_redis(redis)
        self.imap = imap
        self.mail = mail

    def bind_redis(self, redis: aioredis.Redis) -> None:
        """Redis alone: all the relay, the fan-out reader and resuming need."""
        self.redis = redis
        self._publish_script = redis.register_script(_PUBLISH_SCRIPT)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ connection

    @staticmethod
    def _stripe(account: str) -> int:
        digest = hashlib.blake2b(account.lower().encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % LOCK_STRIPES

    def _lock(self, account: str) -> asyncio.Lock:
        return self._locks[self._stripe(account)]

    def log_key(self, account: str) -> str:
        return f"{self.stream_prefix}:browser:{account.lower()}"

    @property
    def fanout_key(self) -> str:
        return f"{self.stream_prefix}:browser-fanout"

    def _client_sent(self, sid: str, name: str) -> Ack | None:
        """python-socketio hands a client's *event* named "connect" or "disconnect" to the same
        handler as the connection itself. Sent by a connected socket, a "disconnect" event dropped
        its expiry timer and its place in the per-user count while it stayed connected (outliving
        its token, past the socket limit). Such an event gets an error ack and changes nothing."""
        if not self.sio.manager.is_connected(sid, "/"):
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
                    async with self._lock(account):
                        points[account] = await self._log_position(account)
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
        log.debug("[sid %s] disconnected (%s)", sid, reason)
        return None

    async def identity(self, sid: str) -> Identity:
        session = await self.sio.get_session(sid)
        identity = session.get("identity")
        if not isinstance(identity, Identity):
            raise AuthError("not authenticated")
        return identity

    # ------------------------------------------------------------------ resume

    async def _log_position(self, account: str) -> str:
        """The id of the newest event in the account's log that this node has emitted ("0-0" if
        none). Called under the account's lock, with the join: every later event reaches the socket
        live."""
        assert self.redis is not None
        await self._reader_started()
        newest: Any = await self.redis.xrevrange(self.log_key(account), max=self._emitted_through(account), count=1)
        return _entry_id(newest[0][0]) if newest else "0-0"

    async def _reader_started(self) -> None:
        # Bounded: while Redis is down at start the reader has no position, and a connect waiting
        # for it would hang (and keep its socket slot) rather than be refused.
        await asyncio.wait_for(self._reading.wait(), READER_WAIT_S)

    def _emitted_through(self, account: str) -> str:
        """How far this node has emitted the account's events to its room, as an XRANGE bound: its
        fan-out position, or, for a room a gap's replay has caught up, up to the entry after the gap
        (the reader, still at the gap's start, emits that entry next)."""
        through = self._gap_through.get(account.lower())
        return f"({through}" if through is not None else self.position

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
                async with self._lock(account):
                    if since is None:  # an account this client has no position for yet
                        fresh[account] = await self._log_position(account)
                        replayed = 0
                    else:
                        await self._reader_started()
                        replayed = await self._replay(sid, account, since, self._emitted_through(account))
                    await self.sio.enter_room(sid, account_room(account))
                log.info("[sid %s] resumed %s: %d event(s) replayed", sid, account, replayed)
            await self._send_resume_points(sid, fresh)
        except Exception:
            log.exception("[sid %s] resume failed; asking the client to resync", sid)
            await self.sio.emit("resync", {"reason": "resume failed"}, to=sid)
            for account in identity.accounts:
                await self.sio.enter_room(sid, account_room(account))

    def _account_rooms(self) -> list[str]:
        """The accounts with a room (a socket) on this node, by their lower-case room name."""
        prefix = account_room("")
        rooms = list(self.sio.manager.rooms.get("/", {}))
        return [r[len(prefix) :] for r in rooms if isinstance(r, str) and r.startswith(prefix)]

    async def _recover_gap(self, after: str, before: str, missed: int) -> None:
        """The fan-out was trimmed past `missed` entries between `after` (the last one this node
        emitted) and `before` (the next it can read): this node fell that far behind. The logged
        ones are still in the accounts' resume logs, under the same ids: replay that range to the
        room of every account that has sockets here, in order, before the reader goes on. Only
        unlogged events (typing) are lost, and a log itself trimmed past `after` gets `resync`.

        The rooms are listed again until none is left: a socket joining an account's room during
        the replay either joins it before that room's turn (and gets the replay with the room) or
        after it (and starts from the end of the gap: `_emitted_through`). A replay cut short by a
        Redis error is retried by the reader, and goes on from where each room got to."""
        if not self._in_gap:  # not a retry of the same gap's replay
            self.metrics.fanout_gaps.inc()
            log.warning(
                "[fan-out %s] this node fell behind the stream's length: %d entries after %s trimmed unread;"
                " replaying its accounts' resume logs",
                before,
                missed,
                after,
            )
        self._in_gap = True
        replayed = rooms = 0
        while pending := [a for a in self._account_rooms() if self._gap_through.get(a) != before]:
            for account in pending:
                async with self._lock(account):
                    since = self._gap_last.get(account, after)

                    def emitted(event_id: str, account: str = account) -> None:
                        self._gap_last[account] = event_id

                    replayed += await self._replay(
                        account_room(account), account, since, f"({before}", new_log_is_reset=False, emitted=emitted
                    )
                    self._gap_through[account] = before
                rooms += 1
        log.warning("[fan-out %s] %d event(s) replayed to %d account room(s)", before, replayed, rooms)

    async def _replay(
        self,
        to: str,
        account: str,
        since: object,
        upto: str,
        *,
        new_log_is_reset: bool = True,
        emitted: Callable[[str], None] = lambda _event_id: None,
    ) -> int:
        """Emit to `to` (a socket or a room) the account's logged events after `since`, up to
        `upto` (an id, or "(id" to stop before it): for a resuming socket, this node's fan-out
        position (the reader emits the later ones to the room). Called under the account's lock.
        A log that starts after `since` with nothing trimmed is, for a client's `since`, one that
        Redis lost and began again (`resync` is sent too); after a fan-out gap (the sequence went
        on, so Redis kept its data) it is an account's first events. `emitted` is told each id
        as it is sent."""
        assert self.redis is not None
        key = self.log_key(account)
        if not isinstance(since, str) or not _EVENT_ID.match(since):
            await self.sio.emit("resync", {"account": account, "reason": "unknown lastEventId"}, to=to)
            return 0
        # The first page is read before the log is looked at, not after: the log is trimmed from
        # the front as events are added, and a check made first could pass for a log trimmed past
        # `since` by the time of the read (events lost without a resync). Made after the read, a
        # check that passes held at the read too.
        entries: Any = await self.redis.xrange(key, min=f"({since}", max=upto, count=REPLAY_PAGE)
        info: Any = {}
        try:
            info = await self.redis.xinfo_stream(key)
        except aioredis.ResponseError:
            info = {}  # no log yet: nothing was ever sent for this account
        # Once `since` is older than the log's first entry, events after it may be gone (Redis 7.0
        # keeps no count of trimmed entries), so ask for a resync.
        if info and since == "0-0":
            # From the log's very beginning: a gap only if entries were trimmed (Redis >= 7.0 counts
            # every entry ever added; XINFO STREAM).
            if int(info.get("entries-added", 0)) > int(info.get("length", 0)):
                await self.sio.emit("resync", {"account": account, "reason": "gap older than the log"}, to=to)
                return 0
        elif info:
            first = info.get("first-entry")
            oldest = _entry_id(first[0]) if first else _entry_id(info.get("last-generated-id", b"0-0"))
            if _older(since, oldest):
                if int(info.get("entries-added", 0)) > int(info.get("length", 0)):
                    await self.sio.emit("resync", {"account": account, "reason": "gap older than the log"}, to=to)
                    return 0
                # Nothing was ever trimmed from this log, yet it starts after `since`: it is a new log
                # (Redis restarted without persistence and lost the old one). Every event in it came
                # after `since`, so replay it all; what the old log held past `since` may be gone, so
                # the client is told to refresh as well.
                if new_log_is_reset:
                    log.warning("[%s] %s: resume log was reset; replaying all of it", to, account)
                    await self.sio.emit("resync", {"account": account, "reason": "resume log was reset"}, to=to)
        count = 0
        while entries:
            for entry_id, fields in entries:
                payload = msgpack.unpackb(fields[b"p"], raw=False)
                payload["eventId"] = _entry_id(entry_id)
                await self.sio.emit(fields[b"n"].decode(), payload, to=to)
                emitted(payload["eventId"])
                count += 1
            if len(entries) < REPLAY_PAGE:
                break
            entries = await self.redis.xrange(key, min=f"({_entry_id(entries[-1][0])}", max=upto, count=REPLAY_PAGE)
        return count

    # ------------------------------------------------------------------ relay

    async def _facts(self, events: Sequence[Event]) -> list[MtaFacts | None]:
        """The filter's summary of each delivered mail, remembered by recipient and Message-ID when
        it passed (the filter publishes as soon as Postfix has the mail back, before Dovecot
        delivers it). One pipeline for the whole read, in event order: a summary set earlier in the
        read is seen by a delivery later in it."""
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        asked: list[tuple[int, int]] = []  # (event index, its GET's place in the pipeline)
        for index, event in enumerate(events):
            if isinstance(event, MtaAccepted) and event.message_id:
                facts = msgpack.packb([int(bool(event.attachments)), event.size, event.category])
                for recipient in dict.fromkeys(r.lower() for r in event.rcpt_to):
                    pipe.set(self._facts_key(recipient, event.message_id), facts, ex=RELAYED_TTL_S)
            elif isinstance(event, MessageAdded) and event.message_id:
                asked.append((index, len(pipe)))
                pipe.get(self._facts_key(event.account, event.message_id))
        found: list[MtaFacts | None] = [None] * len(events)
        if not len(pipe):
            return found
        replies = await pipe.execute()
        for index, place in asked:
            raw = replies[place]
            if isinstance(raw, bytes):
                has_attachments, size, category = msgpack.unpackb(raw)
                found[index] = MtaFacts(bool(has_attachments), int(size), str(category))
        return found

    def _facts_key(self, account: str, message_id: str) -> str:
        """One mail's summary for one recipient. By Message-ID alone, anyone who knew (or guessed)
        the Message-ID of another user's mail could send a mail with the same one and change how
        that mail is shown (its attachment flag, its category): scoped to the account, a sender
        reaches only the mailboxes they send to."""
        scoped = f"{account.lower()}\0{message_id}".encode("utf-8", "surrogateescape")
        return f"{self.stream_prefix}:mta:{hashlib.sha256(scoped).hexdigest()[:32]}"

    def _relayed_key(self, event_key: str) -> str:
        return f"{self.stream_prefix}:relayed:{event_key}"

    async def relay(self, deliveries: Sequence[Delivery]) -> None:
        """Relay one read of ingest events, once per key: a re-delivered ingest entry (a crash or a
        lost reply before XACK, an entry claimed from a dead node, the spool drained twice) is not
        shown twice. Each key's marker is set by the script that publishes its events, never
        before: a publish that failed leaves no marker, and the retry publishes. Two round trips to
        Redis for the whole read: the facts, then the script."""
        assert self.redis is not None
        events = [d.event for d in deliveries]
        outgoing: list[_Outgoing] = []
        relayed: list[Delivery] = []  # by marker number - 1
        keys: set[str] = set()
        for delivery, facts in zip(deliveries, await self._facts(events), strict=True):
            browser_events = to_browser(delivery.event, facts)
            if not browser_events:
                continue
            if delivery.event.key in keys:  # twice in one read: the script would see neither marker
                log.info("[%s %s] duplicate of %s skipped", delivery.stream, delivery.entry_id, delivery.event.key)
                continue
            keys.add(delivery.event.key)
            relayed.append(delivery)
            outgoing += [_Outgoing(e.account, e.name, e.payload, marker=len(relayed)) for e in browser_events]
        if not outgoing:
            return
        markers = [(self._relayed_key(d.event.key), RELAYED_TTL_S) for d in relayed]
        _ids, fresh = await self._fan_out(outgoing, markers)
        repeated = {item.marker for item, new in zip(outgoing, fresh, strict=True) if not new}
        now = time.time()
        for number, delivery in enumerate(relayed, start=1):
            if number in repeated:
                log.info("[%s %s] duplicate of %s skipped", delivery.stream, delivery.entry_id, delivery.event.key)
            else:
                self.metrics.relay_latency.observe(max(0.0, now - delivery.event.ts / 1000))
        for item, new in zip(outgoing, fresh, strict=True):
            if new:
                self.metrics.events_relayed.labels(item.name).inc()

    async def publish(self, browser_event: BrowserEvent) -> str:
        """Log the event in its account's resume log, then emit it to the account's room."""
        (event_id,) = await self.publish_many([browser_event])
        return event_id

    async def publish_many(self, browser_events: Sequence[BrowserEvent]) -> list[str]:
        """Log the events in their accounts' resume logs and append them to the fan-out (one script,
        one round trip); every node's reader then emits each, in order, with its id as `eventId`.
        The call has a marker of its own: redis-py sends a command again when the connection drops
        before the reply came, and a script that ran the first time must not publish twice."""
        if not browser_events:
            return []
        marker = (f"{self.stream_prefix}:published:{uuid.uuid4().hex}", PUBLISHED_TTL_S)
        event_ids, fresh = await self._fan_out(
            [_Outgoing(e.account, e.name, e.payload, marker=1) for e in browser_events], [marker]
        )
        for browser_event, new in zip(browser_events, fresh, strict=True):
            if new:
                self.metrics.events_relayed.labels(browser_event.name).inc()
        return event_ids

    async def _fan_out(
        self, events: Sequence[_Outgoing], markers: Sequence[tuple[str, int]] = ()
    ) -> tuple[list[str], list[bool]]:
        """Run the publish script: each event's id, and whether this call wrote it (False: its
        marker was already set, and the id is the one its first publication got)."""
        assert self.redis is not None and self._publish_script is not None
        keys = [self.fanout_key, self.fanout_key + ":seq"] + [self.log_key(e.account) for e in events]
        keys += [key for key, _ttl in markers]
        args: list[str | bytes | int] = [FANOUT_MAXLEN, self.resume_log_len, len(events), len(markers)]
        args += [ttl for _key, ttl in markers]
        for e in events:
            args += [e.account, e.name, msgpack.packb(e.payload), e.skip, "1" if e.logged else "0", e.marker]
        reply: Any = await self._publish_script(keys=keys, args=args)
        ids, fresh = reply
        return [_entry_id(raw) for raw in ids], [bool(flag) for flag in fresh]

    async def run_fanout(self) -> None:
        """Emit every fan-out entry, in order, to this node's sockets in the account's room."""
        assert self.redis is not None
        failing = False
        while True:
            try:
                if not self._reading.is_set():
                    newest: Any = await self.redis.xrevrange(self.fanout_key, count=1)
                    self.position = _entry_id(newest[0][0]) if newest else "0-0"
                    self._reading.set()
                response: Any = await self.redis.xread({self.fanout_key: self.position}, count=FANOUT_BATCH, block=1000)
                if failing:
                    log.info("fan-out reader recovered at %s", self.position)
                    failing = False
                for _stream, entries in response or []:
                    for entry_id, fields in entries:
                        await self._emit_entry(_entry_id(entry_id), fields)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("fan-out reader paused, retrying: %s", exc)
                failing = True
                await asyncio.sleep(0.5)

    async def _emit_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        sequence = int(fields[b"q"]) if fields.get(b"q", b"").isdigit() else None
        if sequence is not None and self._sequence is not None and sequence > self._sequence + 1:
            await self._recover_gap(self.position, entry_id, sequence - self._sequence - 1)
        # A number at or below the last one: the counter started again (Redis restarted without
        # persistence); the resume logs went with it, and resuming sockets are told (`_replay`).
        self._sequence = sequence
        account = fields[b"a"].decode()
        name = fields[b"n"].decode()
        try:
            payload = msgpack.unpackb(fields[b"p"], raw=False)
        except (ValueError, msgpack.UnpackException):
            log.error("[fan-out %s] undecodable entry skipped", entry_id)
            self._advance(entry_id)
            return
        skip = fields.get(b"s", b"").decode() or None
        async with self._lock(account):
            if fields.get(b"l") == b"1":
                payload["eventId"] = entry_id
            await self.sio.emit(name, payload, room=account_room(account), skip_sid=skip)
            self._advance(entry_id)

    def _advance(self, entry_id: str) -> None:
        """The reader emitted `entry_id`: past a gap's end, the position says it all again."""
        self.position = entry_id
        if self._in_gap:
            self._in_gap = False
            self._gap_through.clear()
            self._gap_last.clear()

    # ------------------------------------------------------------------ client actions

    def _action(self, name: str, handler: Callable[[str, Identity, Any], Awaitable[Ack]]) -> None:
        # *args: an event with two arguments or more raised TypeError before this code ran, and the
        # client waited for an acknowledgement that never came.
        async def wrapped(sid: str, *args: Any) -> Ack:
            try:
                identity = await self.identity(sid)
                if not self.action_limit.allow(sid):
                    raise RateLimited("too many requests", self.action_limit.retry_after(sid))
                if len(args) > 1:
                    raise InvalidInput(f"{name} takes one argument, got {len(args)}")
                return await handler(sid, identity, args[0] if args else None)
            except RateLimited as exc:
                return {"ok": False, "error": str(exc), "retryAfter": round(exc.retry_after_s, 2)}
            except BridgeError as exc:
                log.info("[sid %s] %s refused: %s", sid, name, exc)
                return {"ok": False, "error": str(exc)}
            except Exception:
                log.exception("[sid %s] %s failed", sid, name)
                return {"ok": False, "error": "internal error"}

        self.sio.on(name, wrapped)

    async def _unknown_event(self, event: str, sid: str, *_args: Any) -> Ack:
        """Any event no handler takes: an error ack (python-socketio would leave the client waiting
        for one), counted against the socket's action allowance like any other."""
        if not self.action_limit.allow(sid):
            return {
                "ok": False,
                "error": "too many requests",
                "retryAfter": round(self.action_limit.retry_after(sid), 2),
            }
        log.info("[sid %s] unknown event %r", sid, event[:64])
        return {"ok": False, "error": f"unknown event {event[:64]!r}"}

    @staticmethod
    def _owned(identity: Identity, account: str) -> str:
        for granted in identity.accounts:
            if granted.lower() == account.lower():
                return granted
        # Someone else's id looks exactly like one that does not exist.
        raise NotFound("no such email")

    async def _join_email(self, sid: str, identity: Identity, data: Any) -> Ack:
        address = data.get("address") if isinstance(data, dict) else data
        if not isinstance(address, str) or len(address) > 320:
            raise InvalidInput("join_email takes an address")
        granted = [a for a in identity.accounts if a.lower() == address.lower()]
        if not granted:
            raise Forbidden("this token does not grant that address")
        await self.sio.enter_room(sid, account_room(granted[0]))
        return {"ok": True, "address": granted[0]}

    async def _typing(self, sid: str, identity: Identity, data: Any) -> Ack:
        if not isinstance(data, dict):
            raise InvalidInput("typing takes {emailId}")
        ref = parse_email_id(data.get("emailId"))
        account = self._owned(identity, ref.account)
        if not self.typing_limit.allow(sid):
            raise RateLimited("typing too fast", self.typing_limit.retry_after(sid))
        # Only the sessions that can see this email: the account's room on every node, not this
        # socket itself. Ephemeral: through the fan-out, not into the resume log.
        payload = {"user": identity.subject, "emailId": data["emailId"], "typing": bool(data.get("typing", True))}
        await self._fan_out([_Outgoing(account, "user_typing", payload, skip=sid, logged=False)])
        return {"ok": True}

    async def _mark_read(self, sid: str, identity: Identity, data: Any) -> Ack:
        assert self.imap is not None
        if not isinstance(data, dict):
            raise InvalidInput("mark_read takes {emailId, read?}")
        ref = parse_email_id(data.get("emailId"))
        account = self._owned(identity, ref.account)
        read = data.get("read", True)
        if not isinstance(read, bool):
            raise InvalidInput("read must be true or false")
        await self.imap.store_flags(replace(ref, account=account), ("\\Seen",), add=read)
        log.info("[sid %s] marked %s/%s %s", sid, ref.mailbox, ref.uid, "read" if read else "unread")
        return {"ok": True}

    async def _send_email(self, sid: str, identity: Identity, data: Any) -> Ack:
        assert self.mail is not None
        account = owned_account(identity, data.get("account") if isinstance(data, dict) else None)
        result = await self.mail.send(identity, account, data)
        return {"ok": True, **result}
