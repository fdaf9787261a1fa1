"""Publishing browser events: one Redis script appends each to its account's resume log and
publishes it on the account's channel, which only the nodes with a socket of that account hear.

A logged browser event is appended, by one script (atomic in Redis), to its account's resume log (a
capped stream, bridge.redis_keys.resume_log), whose new id is the event's `eventId`, and published
with that id and the log's id before it on the account's channel (bridge.redis_keys.room_channel,
sharded PUB/SUB: SPUBLISH). A node that watches the account (bridge.fanout) emits it to the
account's room of its own sockets, and replays from the log whatever the two ids say it missed. An
ephemeral event (user_typing) is published without ids and logged nowhere.

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

# A publish call's own marker only has to outlive redis-py repeating the call after a lost reply.
PUBLISHED_TTL_S = 300

# KEYS: the n events' resume logs, then the call's m markers. ARGV: the logs' MAXLEN, n, m, the m
# markers' TTLs, then six per event: its account's channel, name, payload, a sid to skip ("" for
# none), "1" to log it ("0" for an ephemeral event such as user_typing), and its marker's number
# (1..m, or 0 for none).
# Returns {ids, fresh}: each event's id ("" for an ephemeral one), and 1 if this call wrote it, 0 if
# its marker was already set (the id is then the one its first publication stored in the marker).
#
# The message published is "<id>\n<previous id>\n<name>\n<sid to skip>\n<payload>": the previous
# id is the log's newest before this event ("0-0" for a new log), so a node that had `previous` as
# its last knows it missed nothing, and one that had less replays the rest from the log.
# Everything that could fail is checked before the first write: Redis does not undo a script's
# writes when it fails half-way, and a log entry without its marker, or a marker without its
# events, would each outlive the error.
_PUBLISH_SCRIPT = """
local n, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local function kind(key) return redis.call('TYPE', key)['ok'] end
for i = 1, n do
  local t = kind(KEYS[i])
  if t ~= 'none' and t ~= 'stream' then
    return redis.error_reply('WRONGTYPE resume log ' .. KEYS[i] .. ' is not a stream')
  end
end
local kept = {}  -- marker number -> the ids its first publication stored, or false when not set
for j = 1, m do
  local key = KEYS[n + j]
  local t = kind(key)
  if t == 'none' then
    kept[j] = false
  else
    local ids = {}
    if t == 'string' then
      for id in string.gmatch(redis.call('GET', key), '[^,]+') do ids[#ids + 1] = (id == '-') and '' or id end
    end
    kept[j] = ids
  end
end
local base = 3 + m
local newest = {}  -- log key -> its newest id, as this call goes
local ids, fresh, made, used = {}, {}, {}, {}
for i = 1, n do
  local at = base + (i - 1) * 6
  local marker = tonumber(ARGV[at + 6])
  if marker > 0 and kept[marker] then
    used[marker] = (used[marker] or 0) + 1
    ids[i] = kept[marker][used[marker]] or ''
    fresh[i] = 0
  else
    local id, previous = '', ''
    if ARGV[at + 5] == '1' then
      previous = newest[KEYS[i]]
      if previous == nil then
        local top = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
        previous = top[1] and top[1][1] or '0-0'
      end
      id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*', 'n', ARGV[at + 2], 'p', ARGV[at + 3])
      newest[KEYS[i]] = id
    end
    redis.call('SPUBLISH', ARGV[at + 1],
      id .. '\\n' .. previous .. '\\n' .. ARGV[at + 2] .. '\\n' .. ARGV[at + 4] .. '\\n' .. ARGV[at + 3])
    ids[i] = id
    fresh[i] = 1
    if marker > 0 then
      local stored = (id == '') and '-' or id
      made[marker] = made[marker] and (made[marker] .. ',' .. stored) or stored
    end
  end
end
for j = 1, m do
  if made[j] then redis.call('SET', KEYS[n + j], made[j], 'EX', ARGV[3 + j]) end
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
        keys = [redis_keys.resume_log(self.prefix, e.account) for e in events]
        keys += [key for key, _ttl in markers]
        args: list[str | bytes | int] = [self.resume_log_len, len(events), len(markers)]
        args += [ttl for _key, ttl in markers]
        for e in events:
            channel = redis_keys.room_channel(self.prefix, e.account)
            args += [channel, e.name, msgpack.packb(e.payload), e.skip, "1" if e.logged else "0", e.marker]
        reply: Any = await self._script(keys=keys, args=args)
        ids, fresh = reply
        return [text(raw) for raw in ids], [bool(flag) for flag in fresh]
