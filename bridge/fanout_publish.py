"""Publishing browser events: one Redis script appends them to the fan-out that every bridge node
reads and, under the same ids, to their accounts' resume logs.

A browser event is appended, by one script (atomic in Redis), to the fan-out stream
(bridge.redis_keys.fanout) and, with the same id, to its account's resume log (a capped stream,
bridge.redis_keys.resume_log); that id is the event's `eventId`. Every node's reader (bridge.fanout)
then emits it, in order, to the account's room of its own sockets, so every socket gets it once
whichever node published it.

Markers: a call may name markers (keys), each standing for some of its events having been
published. A marker is set by the same script that writes its events, so there is never one
without the other: a publish that failed (a Redis error, a dropped connection, a node killed) leaves
no marker and a retry publishes, and one that succeeded unheard (a lost reply) is not published
again, its first ids being returned instead. The relay marks each ingest event's key
(bridge.relay); `publish_many` marks the call itself, since redis-py sends a command again when the
connection drops before the reply came.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import redis.asyncio as aioredis

from bridge import redis_keys
from bridge.browser_events import BrowserEvent
from bridge.metrics import Metrics
from bridge.redis_text import text

# Entries kept in the fan-out: how far a node may fall behind before it misses events (minutes of
# mail at hundreds of events a second), at a few hundred bytes each.
FANOUT_MAXLEN = 50_000
# A publish call's own marker only has to outlive redis-py repeating the call after a lost reply.
PUBLISHED_TTL_S = 300

# KEYS: the fan-out stream, its sequence counter, the n events' resume logs, then the call's m
# markers. ARGV: the fan-out's and the logs' MAXLEN, n, m, the m markers' TTLs, then six per event:
# account, name, payload, a sid to skip ("" for none), "1" to log it ("0" for an ephemeral event
# such as user_typing), and its marker's number (1..m, or 0 for none).
# Returns {ids, fresh}: each event's id, and 1 if this call wrote it, 0 if its marker was already
# set (the id is then the one its first publication stored in the marker).
#
# Each fan-out entry carries the next number of the counter ('q'): a reader that finds a number
# skipped knows the stream was trimmed past entries it had not read (it fell more than
# FANOUT_MAXLEN behind). A log entry takes its fan-out entry's id, so both streams order events
# alike; a log whose last id is not older (one written before this scheme, or a clock step) gets a
# fresh id instead.
# Everything that could fail is checked before the first write: Redis does not undo a script's
# writes when it fails half-way, and a counter bumped (a false gap on every node), a fan-out entry
# without its log entry, or a marker without its events would each outlive the error.
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


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event for the publish script."""

    account: str
    name: str
    payload: dict[str, Any]
    skip: str = ""  # a sid not to emit it to
    logged: bool = True  # into the account's resume log (False: ephemeral, e.g. user_typing)
    marker: int = 0  # the number (from 1) of the call's marker that stands for it; 0 for none


class FanoutPublisher:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, resume_log_len: int, metrics: Metrics) -> None:
        self.prefix = prefix
        self.resume_log_len = resume_log_len
        self.metrics = metrics
        self._script = redis.register_script(_PUBLISH_SCRIPT)

    async def publish(self, browser_event: BrowserEvent) -> str:
        """Publish one event (as `publish_many`); its id."""
        (event_id,) = await self.publish_many([browser_event])
        return event_id

    async def publish_many(self, browser_events: Sequence[BrowserEvent]) -> list[str]:
        """Publish events the bridge makes itself (not relayed from an ingest stream), logged, in
        one round trip, under one marker of the call's own; their ids."""
        if not browser_events:
            return []
        marker = (redis_keys.published(self.prefix, uuid.uuid4().hex), PUBLISHED_TTL_S)
        event_ids, fresh = await self.send(
            [Outgoing(e.account, e.name, e.payload, marker=1) for e in browser_events], [marker]
        )
        for browser_event, new in zip(browser_events, fresh, strict=True):
            if new:
                self.metrics.events_relayed.labels(browser_event.name).inc()
        return event_ids

    async def send(
        self, events: Sequence[Outgoing], markers: Sequence[tuple[str, int]] = ()
    ) -> tuple[list[str], list[bool]]:
        """Run the publish script with these events and (key, TTL) markers: each event's id, and
        whether this call wrote it (False: its marker was already set)."""
        keys = [redis_keys.fanout(self.prefix), redis_keys.fanout_sequence(self.prefix)]
        keys += [redis_keys.resume_log(self.prefix, e.account) for e in events]
        keys += [key for key, _ttl in markers]
        args: list[str | bytes | int] = [FANOUT_MAXLEN, self.resume_log_len, len(events), len(markers)]
        args += [ttl for _key, ttl in markers]
        for e in events:
            args += [e.account, e.name, msgpack.packb(e.payload), e.skip, "1" if e.logged else "0", e.marker]
        reply: Any = await self._script(keys=keys, args=args)
        ids, fresh = reply
        return [text(raw) for raw in ids], [bool(flag) for flag in fresh]
