"""Routed delivery, read on this node: the events of the accounts with a socket here, emitted in
order to each account's room; what this node missed on a channel replayed from the account's log.

The publish script (bridge.fanout_publish) appends each logged browser event to its account's
resume log and publishes it, with its id and the log's id before it, on the account's channel
(sharded PUB/SUB, so on Redis Cluster it stays on the shard that holds the account's keys). This
node subscribes to the channel of each account it has a socket of (`watch`, under the account's
lock, before the socket joins the room) and lets go once the room is empty (`_sweep`): a node hears
only its own accounts' events, so adding nodes does not add work to each.

Per watched account this node keeps `through`: the id of the newest logged event its room has had
(at `watch`, the log's newest). PUB/SUB keeps nothing for a subscriber that is not there, so:
- a message whose previous id is not `through` means this node missed some (its PUB/SUB connection
  dropped, or a failover): the range is replayed from the log before the message is emitted;
- each time a subscription is confirmed (the first, and redis-py subscribing again after a
  reconnect or a failover), the room is caught up from the log: what was published before it
  took effect;
- a message at or below `through` was replayed already, and is dropped.
So every logged event reaches each room once, in order. A log trimmed past `through` gets the room
a `resync`. Ephemeral events (user_typing) are not logged: one missed is lost.

A socket resuming with `lastEventId` (bridge.realtime) takes the account's lock, watches it, is
replayed the log after that id up to `through` (`emitted_through`), and joins the room before it
lets go: the reader emits everything after `through` to the room, so nothing is missed or sent
twice across the seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

import msgpack
import redis.asyncio as aioredis
import socketio
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.metrics import Metrics
from bridge.redis_text import text
from bridge.sio_server import room_names

log = logging.getLogger(__name__)

LOCK_STRIPES = 256
REPLAY_PAGE = 500  # resume-log entries read at a time
# How long a connect waits for the reader to start before it is refused.
READER_WAIT_S = 5.0
SWEEP_EVERY_S = 5.0  # how often channels of accounts without a socket here are let go
STRIPE_QUEUE = 1000  # messages waiting for one stripe's worker
SUBSCRIBE_TURN_S = 0.02  # the longest the reader waits for a message before it sends subscriptions asked for
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
        # redis-py's Cluster client gives a pubsub that follows each shard channel to its node.
        self._pubsub: PubSub = redis.pubsub()
        self._channel_prefix = redis_keys.room_channel(prefix, "")
        self._through: dict[str, str] = {}  # watched account (lower case) -> newest id its room had
        self._subscribed: set[str] = set()  # channels subscribed to, watched or not
        self._pending: set[str] = set()  # channels a `watch` asked for, not subscribed to yet
        self._sent: dict[str, asyncio.Future[None]] = {}  # each pending channel: done once asked of Redis
        self._wake = asyncio.Event()  # a `watch` asked for one
        self._reading = asyncio.Event()
        # Per lock stripe, what the reader handed over (bounded: a stripe that cannot keep up
        # holds the reader back rather than grow), and its worker.
        self._queues: list[asyncio.Queue[tuple[str, bytes | None]]] = [
            asyncio.Queue(STRIPE_QUEUE) for _ in range(LOCK_STRIPES)
        ]
        self._workers: list[asyncio.Task[None]] = []

    def lock(self, account: str) -> asyncio.Lock:
        """The lock the reader holds to emit an account's events, and a socket to join its room."""
        return self._locks[lock_stripe(account)]

    # ------------------------------------------------------------------ watching

    async def watch(self, account: str) -> None:
        """Hear the account's channel from now on, its room caught up to the log's newest event;
        returns once the reader has sent the subscription (it alone speaks to the PUB/SUB
        connection), so every event published after that reaches the room live. A logged one
        published before the subscription took effect reaches it by the catch-up that follows the
        confirmation. Called without the account's lock (the reader may need it to get to the
        subscription); the caller then takes the lock and checks `watching`, as the sweep may have
        let go of an account whose room was still empty."""
        account = account.lower()
        await self.reader_started()
        channel = redis_keys.room_channel(self.prefix, account)
        async with self.lock(account):
            if account not in self._through:
                newest: Any = await self.redis.xrevrange(redis_keys.resume_log(self.prefix, account), count=1)
                self._through[account] = text(newest[0][0]) if newest else "0-0"
                self._pending.add(channel)
                self._wake.set()
                self.metrics.fanout_watched.set(len(self._through))
                if channel not in self._sent or self._sent[channel].done():
                    self._sent[channel] = asyncio.get_running_loop().create_future()
            sent = self._sent.get(channel)
        if sent is not None:
            # Bounded: while Redis is away the reader cannot send it, and a connect waiting for it
            # would hang (the account stays asked for; the sweep lets go of it if no socket comes).
            try:
                await asyncio.wait_for(asyncio.shield(sent), READER_WAIT_S)
            except TimeoutError:
                raise RedisError(f"[{account}] its channel's subscription was not sent in time") from None

    def watching(self, account: str) -> bool:
        """Whether the account's channel is heard here (checked under its lock, after `watch`)."""
        return account.lower() in self._through

    def emitted_through(self, account: str) -> str:
        """How far this node has emitted the watched account's events to its room (the newest
        id its room had, "0-0" if none), as an XRANGE bound. Under the account's lock, the room
        then gets every later event live."""
        return self._through[account.lower()]

    async def reader_started(self) -> None:
        # Bounded: a connect must not wait (and keep its socket slot) for a reader that never starts.
        await asyncio.wait_for(self._reading.wait(), READER_WAIT_S)

    async def sweep(self) -> None:
        """Every SWEEP_EVERY_S, let go of the accounts with no socket here any more (each under its
        lock, as a join watches it: a socket joining meanwhile finds the account either still
        watched or not at all); the reader then unsubscribes their channels."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            rooms = set(room_names(self.sio))
            for account in [a for a in self._through if account_room(a) not in rooms]:
                async with self.lock(account):
                    if account_room(account) not in set(room_names(self.sio)):
                        self._through.pop(account, None)
            self._wake.set()
            self.metrics.fanout_watched.set(len(self._through))

    async def aclose(self) -> None:
        """Close the PUB/SUB connection (once `run` and `sweep` were cancelled)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._pubsub.aclose()

    # ------------------------------------------------------------------ reading

    async def run(self) -> None:
        """Keep the PUB/SUB subscriptions what the watched accounts need, and hand what their
        channels bring to the stripes' workers, in order. The only task that uses the PUB/SUB
        connection (redis-py's PubSub is not safe for two at once: two first commands open two
        connections), and it never waits for an account's lock: a join waiting for its
        subscription is never held up by another account's slow catch-up."""
        self._workers = [asyncio.create_task(self._work(q), name=f"fanout-{n}") for n, q in enumerate(self._queues)]
        self._reading.set()
        failing = False
        while True:
            try:
                await self._subscribe_pending()
                message = await self._next_message()
                if failing:
                    log.info("room channels' reader recovered")
                    failing = False
                if message is not None:
                    await self._handle(message)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("room channels' reader paused, retrying: %s", exc)
                failing = True
                await asyncio.sleep(0.5)

    async def _subscribe_pending(self) -> None:
        """Send the subscriptions asked for and let go of the channels no account needs now."""
        self._wake.clear()
        watched = {redis_keys.room_channel(self.prefix, a) for a in self._through}
        idle = sorted(self._subscribed - watched)
        if idle:
            await self._pubsub.sunsubscribe(*idle)
            self._subscribed.difference_update(idle)
        asked, self._pending = self._pending, set()
        channels = sorted(asked & watched)
        try:
            if channels:
                await self._pubsub.ssubscribe(*channels)
        except BaseException:
            self._pending.update(channels)  # asked again on the next turn
            raise
        self._subscribed.update(channels)
        for channel in asked:  # sent, or let go of meanwhile (its join finds it so)
            if (sent := self._sent.pop(channel, None)) is not None and not sent.done():
                sent.set_result(None)

    async def _next_message(self) -> dict[str, Any] | None:
        if not self._pubsub.subscribed:
            # Nothing to read yet (redis-py has no connection before a first subscribe).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            return None
        # A short wait: a subscription asked for meanwhile (a socket's connect waits for it) is
        # sent on the next turn.
        if isinstance(self._pubsub, ClusterPubSub):
            found: Any = await self._pubsub.get_sharded_message(
                ignore_subscribe_messages=False, timeout=SUBSCRIBE_TURN_S
            )
        else:
            found = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=SUBSCRIBE_TURN_S)
        return found if isinstance(found, dict) else None

    async def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), text(message.get("channel") or b"")
        if not channel.startswith(self._channel_prefix):
            return
        account = channel[len(self._channel_prefix) :]
        data = message.get("data")
        if kind == "ssubscribe":
            await self._queues[lock_stripe(account)].put((account, None))
        elif kind == "smessage" and isinstance(data, bytes):
            await self._queues[lock_stripe(account)].put((account, data))

    async def _work(self, queue: asyncio.Queue[tuple[str, bytes | None]]) -> None:
        """One stripe's messages, in the order they came, each under its account's lock."""
        while True:
            account, data = await queue.get()
            try:
                if data is None:
                    await self._confirmed(account)
                else:
                    await self._deliver(account, data)
            except (RedisError, OSError) as exc:
                # The room missed what this was to bring: the next message's ids show it, and
                # the range is replayed then.
                log.warning("[%s] room channel's message not handled: %s", account, exc)
            except Exception:
                log.exception("[%s] room channel's message not handled", account)

    async def _confirmed(self, account: str) -> None:
        """A subscription took effect (again): what came before it is read from the log."""
        async with self.lock(account):
            if account in self._through:
                await self._catch_up(account, "+")

    async def _deliver(self, account: str, data: bytes) -> None:
        parts = data.split(b"\n", 4)
        if len(parts) != 5:
            log.error("[%s] undecodable message skipped", account)
            return
        try:
            event_id, previous, name, skip = (part.decode() for part in parts[:4])
            payload = msgpack.unpackb(parts[4], raw=False)
        except (ValueError, UnicodeDecodeError, msgpack.UnpackException):
            log.error("[%s] undecodable message skipped", account)
            return
        async with self.lock(account):
            through = self._through.get(account)
            if through is None:
                return  # not watched (any more): no socket of it here
            self.metrics.fanout_messages.inc()
            if event_id:
                if not _older(through, event_id):
                    return  # replayed from the log already
                if previous != through:
                    await self._catch_up(account, f"({event_id}")
                payload["eventId"] = event_id
            await self.sio.emit(name, payload, room=account_room(account), skip_sid=skip or None)
            if event_id:
                self._through[account] = event_id

    async def _catch_up(self, account: str, upto: str) -> None:
        """Emit to the room the account's logged events after `through`, up to `upto`; under its lock."""
        since = self._through[account]

        def emitted(event_id: str) -> None:
            self._through[account] = event_id

        def resynced(newest: str) -> None:
            # The log no longer reaches back to `since`: the room was told to resync (its clients
            # fetch the state anew), and goes on from the newest id the log had when that was
            # decided, or every later message would be taken for a gap again. Not from a newer
            # read: an event logged in between would be skipped unsent.
            self._through[account] = newest

        replayed = await self.replay(
            account_room(account), account, since, upto, new_log_is_reset=False, emitted=emitted, resynced=resynced
        )
        if replayed:
            self.metrics.fanout_gaps.inc()
            log.warning(
                "[%s] %d event(s) missed on its channel after %s: replayed from its log", account, replayed, since
            )

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
        resynced: Callable[[str], None] = lambda _newest: None,
    ) -> int:
        """Emit to `to` (a socket or a room) the account's logged events after `since`, up to
        `upto` (an id, or "(id" to stop before it): for a resuming socket, how far this node's
        room has had them (the reader emits the later ones to the room). Called under the account's
        lock. A log that starts after `since` with nothing trimmed is, for a client's `since`, one
        that Redis lost and began again (`resync` is sent too); for a room it is the account's
        first events. `emitted` is told each id as it is sent, and `resynced` the log's newest id
        when `to` was told to resync because the log no longer reaches back to `since`. Returns how
        many were sent."""
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
                resynced(text(info.get("last-generated-id", b"0-0")))
                return 0
        elif info:
            first = info.get("first-entry")
            oldest = text(first[0]) if first else text(info.get("last-generated-id", b"0-0"))
            if _older(since, oldest):
                if int(info.get("entries-added", 0)) > int(info.get("length", 0)):
                    await self.sio.emit("resync", {"account": account, "reason": "gap older than the log"}, to=to)
                    resynced(text(info.get("last-generated-id", b"0-0")))
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
