"""The ordered fan-out, read on this node: every published browser event emitted, in order, to the
account's room of this node's sockets; the resume logs replayed where a room or a socket missed
some; the gap of a node that fell too far behind recovered.

Each node reads the fan-out stream (bridge.redis_keys.fanout, written by bridge.fanout_publish) in
order and emits each entry to its account's room, under a per-account lock. A socket resuming with
`lastEventId` (bridge.realtime) takes the same lock, is replayed the account's logged events after
that id up to this node's position (`emitted_through`), and joins the room before it lets go: the
reader emits everything past that position to the room, so nothing is missed or sent twice across
the seam. If the log no longer reaches back to that id, the socket gets `resync` instead.

A node that falls further behind than the fan-out keeps (FANOUT_MAXLEN entries) sees a number
skipped in the entries' sequence, and replays the missed range from the resume logs of its accounts
before going on (to the rooms of sockets that join meanwhile too: `_recover_gap`). Only unlogged
events (typing) are lost that way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

import msgpack
import redis.asyncio as aioredis
import socketio
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.metrics import Metrics
from bridge.redis_text import text
from bridge.sio_server import room_names

log = logging.getLogger(__name__)

LOCK_STRIPES = 256
FANOUT_BATCH = 500  # fan-out entries read at a time
REPLAY_PAGE = 500  # resume-log entries read at a time
# How long a connect waits for the reader's first position before it is refused.
READER_WAIT_S = 5.0
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_ROOM_PREFIX = "account:"


def account_room(account: str) -> str:
    """The room of an account's sockets on this node."""
    return f"{_ROOM_PREFIX}{account.lower()}"


def lock_stripe(account: str) -> int:
    """Which of the LOCK_STRIPES locks the account's emits and joins take."""
    digest = hashlib.blake2b(account.lower().encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % LOCK_STRIPES


def _older(a: str, b: str) -> bool:
    """Stream ids compare as (milliseconds, sequence)."""
    a_ms, a_seq = (int(x) for x in a.split("-"))
    b_ms, b_seq = (int(x) for x in b.split("-"))
    return (a_ms, a_seq) < (b_ms, b_seq)


class FanoutReader:
    def __init__(self, redis: aioredis.Redis, sio: socketio.AsyncServer, prefix: str, metrics: Metrics) -> None:
        self.redis = redis
        self.sio = sio
        self.prefix = prefix
        self.metrics = metrics
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
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

    def lock(self, account: str) -> asyncio.Lock:
        """The lock the reader holds to emit an account's entry, and a socket to join its room."""
        return self._locks[lock_stripe(account)]

    # ------------------------------------------------------------------ reading

    async def run(self) -> None:
        """Emit every fan-out entry, in order, to this node's sockets in the account's room."""
        fanout = redis_keys.fanout(self.prefix)
        failing = False
        while True:
            try:
                if not self._reading.is_set():
                    newest: Any = await self.redis.xrevrange(fanout, count=1)
                    self.position = text(newest[0][0]) if newest else "0-0"
                    self._reading.set()
                response: Any = await self.redis.xread({fanout: self.position}, count=FANOUT_BATCH, block=1000)
                if failing:
                    log.info("fan-out reader recovered at %s", self.position)
                    failing = False
                for _stream, entries in response or []:
                    for entry_id, fields in entries:
                        await self._emit_entry(text(entry_id), fields)
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
        # persistence); the resume logs went with it, and resuming sockets are told (`replay`).
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
        async with self.lock(account):
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

    # ------------------------------------------------------------------ where a room stands

    async def log_position(self, account: str) -> str:
        """The id of the newest event in the account's log that this node has emitted ("0-0" if
        none). Called under the account's lock, with the join: every later event reaches the socket
        live."""
        await self.reader_started()
        newest: Any = await self.redis.xrevrange(
            redis_keys.resume_log(self.prefix, account), max=self.emitted_through(account), count=1
        )
        return text(newest[0][0]) if newest else "0-0"

    async def reader_started(self) -> None:
        # Bounded: while Redis is down at start the reader has no position, and a connect waiting
        # for it would hang (and keep its socket slot) rather than be refused.
        await asyncio.wait_for(self._reading.wait(), READER_WAIT_S)

    def emitted_through(self, account: str) -> str:
        """How far this node has emitted the account's events to its room, as an XRANGE bound: its
        fan-out position, or, for a room a gap's replay has caught up, up to the entry after the gap
        (the reader, still at the gap's start, emits that entry next)."""
        through = self._gap_through.get(account.lower())
        return f"({through}" if through is not None else self.position

    # ------------------------------------------------------------------ gaps

    def _account_rooms(self) -> list[str]:
        """The accounts with a room (a socket) on this node, by their lower-case room name."""
        return [r[len(_ROOM_PREFIX) :] for r in room_names(self.sio) if r.startswith(_ROOM_PREFIX)]

    async def _recover_gap(self, after: str, before: str, missed: int) -> None:
        """The fan-out was trimmed past `missed` entries between `after` (the last one this node
        emitted) and `before` (the next it can read): this node fell that far behind. The logged
        ones are still in the accounts' resume logs, under the same ids: replay that range to the
        room of every account that has sockets here, in order, before the reader goes on. Only
        unlogged events (typing) are lost, and a log itself trimmed past `after` gets `resync`.

        The rooms are listed again until none is left: a socket joining an account's room during
        the replay either joins it before that room's turn (and gets the replay with the room) or
        after it (and starts from the end of the gap: `emitted_through`). A replay cut short by a
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
                async with self.lock(account):
                    since = self._gap_last.get(account, after)

                    def emitted(event_id: str, account: str = account) -> None:
                        self._gap_last[account] = event_id

                    replayed += await self.replay(
                        account_room(account), account, since, f"({before}", new_log_is_reset=False, emitted=emitted
                    )
                    self._gap_through[account] = before
                rooms += 1
        log.warning("[fan-out %s] %d event(s) replayed to %d account room(s)", before, replayed, rooms)

    # ------------------------------------------------------------------ replay

    async def replay(
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
        as it is sent. Returns how many were."""
        key = redis_keys.resume_log(self.prefix, account)
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
            oldest = text(first[0]) if first else text(info.get("last-generated-id", b"0-0"))
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
                payload["eventId"] = text(entry_id)
                await self.sio.emit(fields[b"n"].decode(), payload, to=to)
                emitted(payload["eventId"])
                count += 1
            if len(entries) < REPLAY_PAGE:
                break
            entries = await self.redis.xrange(key, min=f"({text(entries[-1][0])}", max=upto, count=REPLAY_PAGE)
        return count
