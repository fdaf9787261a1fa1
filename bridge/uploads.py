"""Staged attachment uploads (Redis edge): a file sent once, ahead of the mail that attaches it.

A browser uploads each file as it is picked (`POST /api/v1/uploads`), then names it in any number of
draft saves and one send as `{"uploadId": id}`, instead of carrying it base64-encoded in every JSON
body. An upload belongs to one account: it is stored under a key that names the account and a
random id (`secrets.token_urlsafe`), so another account's id is simply not found. Each one lives
UPLOAD_TTL_S or until a sent mail has carried it, and an account may hold at most MAX_PENDING_BYTES
and MAX_PENDING_UPLOADS of them at once (beyond: RateLimited, retry once the oldest expires), so
uploads cannot fill Redis' memory. The bound is checked and the upload stored in one Redis script:
uploads that arrive together cannot all pass a check made before any of them was stored.

Values are msgpack maps `{filename, contentType, data}`; the account's index of live uploads is a
sorted set of "<id> <size>" scored by expiry time.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.compose import MAX_ATTACHMENT_BYTES, UPLOAD_ID, Attachment
from bridge.errors import RateLimited, TooLarge, Unavailable
from bridge.redis_text import text

log = logging.getLogger(__name__)

UPLOAD_TTL_S = 24 * 3600
MAX_UPLOAD_BYTES = MAX_ATTACHMENT_BYTES  # one upload can never be more than a mail may carry
MAX_PENDING_BYTES = 10 * MAX_UPLOAD_BYTES
# Empty files cost no bytes but a key each, and every upload sums the account's index: bounded too.
MAX_PENDING_UPLOADS = 200

# KEYS: the account's index, the new upload's key. ARGV: now, TTL (s), the byte and count bounds,
# the index member ("<id> <size>"), the size, the value. Drops expired entries, then stores the
# upload if it fits: {1}; else {0, the earliest expiry} (a string: Lua numbers reply as integers).
_STAGE = """
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local pending = tonumber(ARGV[6])
for i = 1, #live, 2 do
  pending = pending + (tonumber(string.match(live[i], ' (%d+)$')) or 0)
end
if pending > tonumber(ARGV[3]) or #live / 2 >= tonumber(ARGV[4]) then
  return {0, live[2] or tostring(now + 1)}
end
redis.call('SET', KEYS[2], ARGV[7], 'EX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
redis.call('EXPIRE', KEYS[1], ttl)
return {1}
"""


@dataclass(frozen=True, slots=True)
class StagedUpload:
    id: str
    filename: str
    content_type: str
    size: int


class Uploads:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_pending_uploads: int = MAX_PENDING_UPLOADS,
        ttl_s: int = UPLOAD_TTL_S,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_uploads = max_pending_uploads
        self.ttl_s = ttl_s
        self._stage = redis.register_script(_STAGE)

    def _key(self, account: str, upload_id: str) -> str:
        return redis_keys.upload(self.prefix, account, upload_id)

    def _index(self, account: str) -> str:
        return redis_keys.uploads_pending(self.prefix, account)

    async def stage(self, account: str, attachment: Attachment) -> StagedUpload:
        """Keep `attachment` (already checked) for UPLOAD_TTL_S; returns its new id."""
        size = len(attachment.data)
        if size > MAX_UPLOAD_BYTES:
            raise TooLarge(f"upload larger than {MAX_UPLOAD_BYTES} bytes")
        upload_id = secrets.token_urlsafe(18)
        now = time.time()
        value = msgpack.packb(
            {"filename": attachment.filename, "contentType": attachment.content_type, "data": attachment.data}
        )
        keys = [self._index(account), self._key(account, upload_id)]
        args: list[str | int | float | bytes] = [
            repr(now), self.ttl_s, self.max_pending_bytes, self.max_pending_uploads, f"{upload_id} {size}", size, value
        ]  # fmt: skip
        try:
            reply: Any = await self._stage(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from None
        if int(reply[0]) != 1:
            oldest = float(reply[1])
            raise RateLimited(
                f"more than {self.max_pending_bytes} bytes or {self.max_pending_uploads} uploads waiting to be sent",
                min(max(1.0, oldest - now), float(self.ttl_s)),  # another upload's clock may be ahead
            )
        log.info("[upload %s] staged %d bytes", upload_id, size)
        return StagedUpload(upload_id, attachment.filename, attachment.content_type, size)

    async def resolve(self, account: str, upload_ids: Iterable[str]) -> dict[str, Attachment]:
        """The account's live uploads among `upload_ids`; ids unknown, expired or not the account's
        are left out (compose.build refuses them). Stops reading once more than a mail may carry."""
        found: dict[str, Attachment] = {}
        total = 0
        for upload_id in upload_ids:
            if not UPLOAD_ID.match(upload_id):
                continue
            try:
                raw = await self.redis.get(self._key(account, upload_id))
            except RedisError as exc:
                raise Unavailable(f"redis: {exc}") from None
            if not isinstance(raw, bytes):
                continue
            value = msgpack.unpackb(raw, raw=False)
            attachment = Attachment(str(value["filename"]), str(value["contentType"]), bytes(value["data"]))
            total += len(attachment.data)
            if total > MAX_ATTACHMENT_BYTES:
                # Each upload is within the limit, so this bounds what is held to twice the limit.
                # 413, as compose answers for the same total reached by inline attachments.
                raise TooLarge(f"attachments larger than {MAX_ATTACHMENT_BYTES} bytes")
            found[upload_id] = attachment
        return found

    async def discard(self, account: str, upload_ids: Iterable[str]) -> None:
        """Forget these uploads (once the mail that carried them is sent); best effort."""
        ids = set(upload_ids)
        if not ids:
            return
        index = self._index(account)
        try:
            entries = _entries(await self.redis.zrange(index, 0, -1, withscores=True))
            members = [f"{i} {size}" for i, size, _expiry in entries if i in ids]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(self._key(account, i) for i in ids))
                if members:
                    pipe.zrem(index, *members)
                await pipe.execute()
        except RedisError as exc:
            log.warning("[uploads %s] not discarded: %s", ",".join(sorted(ids)), exc)


def _entries(reply: Any) -> list[tuple[str, int, float]]:
    """(id, size, expiry) of each "<id> <size>" member of a ZRANGE ... WITHSCORES reply."""
    out: list[tuple[str, int, float]] = []
    for member, score in reply:
        upload_id, _, size = text(member).partition(" ")
        out.append((upload_id, int(size) if size.isdigit() else 0, float(score)))
    return out
