"""Which browsers have a tab open, across every bridge node: a browser with one gets its new mail
live and no Web Push.

A socket that connects with `auth.push` (the id the bridge gave its browser's subscription,
bridge.webpush.subscription_id) leaves a mark in Redis for each account its token grants
(bridge.redis_keys.push_open): a sorted set member "<node> <sid>" scored by when it lapses. Its
node refreshes the marks of its sockets every REFRESH_S, and removes a socket's mark when it
disconnects; a node that dies leaves marks that lapse within TTL_S. The marks are scoped to the
token's accounts: a client can keep only its own accounts' pushes away.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.webpush import is_subscription_id

log = logging.getLogger(__name__)

TTL_S = 60.0
REFRESH_S = 20.0


class PushPresence:
    def __init__(self, redis: aioredis.Redis, prefix: str, node: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.node = node
        self._marks: dict[str, list[str]] = {}  # sid -> its keys

    def _member(self, sid: str) -> str:
        return f"{self.node} {sid}"

    async def _mark(self, sid: str, keys: list[str]) -> None:
        until = int((time.time() + TTL_S) * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zadd(key, {self._member(sid): until})
                pipe.pexpire(key, int(TTL_S * 1000))
            await pipe.execute()

    async def opened(self, sid: str, accounts: tuple[str, ...], push_id: object) -> None:
        """A socket connected with `auth.push` = push_id (ignored unless it is an id)."""
        if not is_subscription_id(push_id):
            return
        assert isinstance(push_id, str)
        keys = [redis_keys.push_open(self.prefix, account, push_id) for account in accounts]
        self._marks[sid] = keys
        try:
            await self._mark(sid, keys)
        except RedisError as exc:  # the refresh tries again; meanwhile a push may go to an open tab
            log.warning("[sid %s] push presence not marked: %s", sid, exc)

    async def closed(self, sid: str) -> None:
        keys = self._marks.pop(sid, None)
        if not keys:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, self._member(sid))
                await pipe.execute()
        except RedisError as exc:  # it lapses within TTL_S
            log.warning("[sid %s] push presence not cleared: %s", sid, exc)

    async def run(self) -> None:
        """Refresh this node's marks until cancelled."""
        while True:
            await asyncio.sleep(REFRESH_S)
            for sid, keys in list(self._marks.items()):
                try:
                    await self._mark(sid, keys)
                except RedisError as exc:
                    log.warning("[sid %s] push presence not refreshed: %s", sid, exc)
                    break

    async def open_ids(self, account: str, ids: list[str]) -> set[str]:
        """Which of the account's subscription ids have a tab open now."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_id in ids:
                pipe.zcount(redis_keys.push_open(self.prefix, account, sub_id), now, "+inf")
            counts = await pipe.execute()
        return {sub_id for sub_id, count in zip(ids, counts, strict=True) if count}
