"""Rate limits.

`RateLimiter`: token buckets, a steady rate with a burst allowance, per key, bounded in memory; pure,
no I/O. Used for socket events (typing, mark_read, send) and, by the HTTP edge, for requests.
`retry_after` says how long until one more action is allowed, for a 429's Retry-After or an error ack.

`LoginLimits`: failed logins per client address and per account, in Redis (shared by every node,
each key expiring once its bucket is full again), checked before Dovecot is asked.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.errors import RateLimited

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, rate_per_s: float, burst: int, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        # Least recently used first: the oldest idle buckets are forgotten past max_keys (a forgotten
        # bucket is a full one, which is what an idle key would have refilled to anyway).
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket

    def allow(self, key: str) -> bool:
        bucket = self._bucket(key, self.clock())
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False

    def retry_after(self, key: str) -> float:
        bucket = self._bucket(key, self.clock())
        return max(0.0, (1 - bucket.tokens) / self.rate)


# One bucket per key (GCRA, the "generic cell rate algorithm"): the key holds the time, in Redis's
# milliseconds, at which the bucket is full again; each attempt moves it on by one interval, and an
# attempt is refused while that time is more than (burst - 1) intervals ahead. Every attempt is
# charged before Dovecot is asked (so parallel guesses cannot all slip through before the first
# fails), and a success, or an attempt Dovecot could not judge, is given back.
_BEGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local buckets = {{KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])}}
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  buckets[2] = {KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5])}
end
local full = {}
for i, b in ipairs(buckets) do
  local at = math.max(tonumber(redis.call('GET', b[1]) or 0), now)
  local over = at - now - (b[3] - 1) * b[2]
  if over > 0 then return {i, over} end
  full[i] = at + b[2]
end
for i, b in ipairs(buckets) do
  redis.call('SET', b[1], full[i], 'PX', full[i] - now)
end
return {0, #buckets}
"""

_GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function give_back(key, interval)
  local at = tonumber(redis.call('GET', key))
  if at == nil then return end
  at = at - interval
  if at <= now then redis.call('DEL', key) else redis.call('SET', key, at, 'PX', at - now) end
end
if tonumber(ARGV[2]) > 0 then give_back(KEYS[1], tonumber(ARGV[2])) end
if tonumber(ARGV[3]) > 0 then give_back(KEYS[2], tonumber(ARGV[3])) end
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, now - tonumber(ARGV[6]))
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return 0
"""

ADDRESS_WINDOW_S = 600  # BRIDGE_LOGIN_FAILURES_PER_ADDRESS counts failures in this window
ACCOUNT_WINDOW_S = 3600  # and BRIDGE_LOGIN_FAILURES_PER_ACCOUNT in this one
KNOWN_ADDRESSES = 20  # an account's most recent addresses it signed in from...
KNOWN_FOR_S = 30 * 86400  # ...for this long: exempt from its own account's limit


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """One login being checked: what `LoginLimits.begin` charged, for `succeeded` or `undecided`."""

    address: str
    account: str
    charged: int  # buckets charged: 0 (Redis did not answer), 1 (the address) or 2 (and the account)


class LoginLimits:
    """Failed logins per client address and per account, in Redis.

    The address limit is the strict one: one client guessing passwords, for one account or many.
    The account limit catches guessing spread over many addresses; an attacker could use it to hold
    an account, so it is generous and does not apply to the addresses the account last signed in
    from: its owner's devices get in whatever a guesser does. Successes never count. If Redis does
    not answer, logins go on unlimited here (Dovecot's own auth penalty, per client address, still
    slows guessing), with a warning in the log."""

    def __init__(self, redis: aioredis.Redis, prefix: str, per_address: int, per_account: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.address_rule = (ADDRESS_WINDOW_S * 1000 // per_address, per_address)
        self.account_rule = (ACCOUNT_WINDOW_S * 1000 // per_account, per_account)

    def _keys(self, attempt: LoginAttempt) -> list[str]:
        return [
            redis_keys.login_address(self.prefix, attempt.address),
            redis_keys.login_account(self.prefix, attempt.account),
            redis_keys.login_known(self.prefix, attempt.account),
        ]

    async def begin(self, address: str, account: str) -> LoginAttempt:
        """Charge one attempt to `address` (a client's limit key) and `account` (canonical), or raise
        RateLimited, before Dovecot is asked."""
        attempt = LoginAttempt(address, account, 0)
        try:
            which, value = await self.redis.eval(
                _BEGIN, 3, *self._keys(attempt), address, *self.address_rule, *self.account_rule
            )
        except RedisError as exc:
            log.warning("login limits unavailable (Redis: %s); this login is not limited", exc)
            return attempt
        if int(which) == 1:
            raise RateLimited("too many failed logins from this address; try again later", int(value) / 1000)
        if int(which) == 2:
            raise RateLimited("too many failed logins for this account; try again later", int(value) / 1000)
        return LoginAttempt(address, account, int(value))

    async def succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: the attempt is given back and the address remembered as the account's."""
        await self._give_back(attempt, remember=True)

    async def undecided(self, attempt: LoginAttempt) -> None:
        """Dovecot could not say (down, or too slow): not a failure, given back."""
        await self._give_back(attempt, remember=False)

    async def _give_back(self, attempt: LoginAttempt, *, remember: bool) -> None:
        if attempt.charged == 0 and not remember:
            return
        account_interval = self.account_rule[0] if attempt.charged == 2 else 0
        address_interval = self.address_rule[0] if attempt.charged else 0
        try:
            await self.redis.eval(
                _GIVE_BACK,
                3,
                *self._keys(attempt),
                attempt.address,
                address_interval,
                account_interval,
                1 if remember else 0,
                KNOWN_ADDRESSES,
                KNOWN_FOR_S * 1000,
            )
        except RedisError as exc:
            log.warning("login limits unavailable (Redis: %s); an attempt was not given back", exc)
