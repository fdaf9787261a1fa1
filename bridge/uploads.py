"""Staged attachment uploads (Redis edge): a file sent once, ahead of the mail that attaches it.

A browser uploads each file as it is picked (`POST /api/v1/uploads`), then names it in any number of
draft saves and one send as `{"uploadId": id}`, instead of carrying it base64-encoded in every JSON
body. An upload belongs to one account: it is stored under a key that names the account and a
random id (`secrets.token_urlsafe`), so another account's id is simply not found. Each one lives
UPLOAD_TTL_S or until a sent mail has carried it, and an account may hold at most MAX_PENDING_BYTES
of them at once (beyond: RateLimited, retry once the oldest expires), so uploads cannot fill Redis'
memory.

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

from bridge.compose import MAX_ATTACHMENT_BYTES, UPLOAD_ID, Attachment
from bridge.errors import RateLimited, TooLarge, Unavailable

log = logging.getLogger(__name__)

UPLOAD_TTL_S = 24 * 3600
MAX_UPLOAD_BYTES = MAX_ATTACHMENT_BYTES  # one upload can never be more than a mail may carry
MAX_PENDING_BYTES = 10 * MAX_UPLOAD_BYTES


@dataclass(frozen=True, slots=True)
class StagedUpload:
    id: str
    filename: str
    content_type: str
    size: int


class Uploads:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_pending_bytes = max_pending_bytes

    def _key(self, account: str, upload_id: str) -> str:
        return f"{self.prefix}:upload:{account.lower()}:{upload_id}"

    def _index(self, account: str) -> str:
        return f"{self.prefix}:uploads:{account.lower()}"

    async def stage(self, account: str, attachment: Attachment) -> StagedUpload:
        """Keep `attachment` (already checked) for UPLOAD_TTL_S; returns its new id."""
        size = len(attachment.data)
        if size > MAX_UPLOAD_BYTES:
            raise TooLarge(f"upload larger than {MAX_UPLOAD_BYTES} bytes")
        upload_id = secrets.token_urlsafe(18)
        now = time.time()
        index = self._index(account)
        try:
            await self.redis.zremrangebyscore(index, "-inf", now)
            live = _entries(await self.redis.zrange(index, 0, -1, withscores=True))
            pending = sum(bytes_ for _id, bytes_, _expiry in live)
            if pending + size > self.max_pending_bytes:
                oldest = min((expiry for _id, _size, expiry in live), default=now + 1)
                raise RateLimited(
                    f"more than {self.max_pending_bytes} bytes of uploads waiting to be sent", max(1.0, oldest - now)
                )
            value = msgpack.packb(
                {"filename": attachment.filename, "contentType": attachment.content_type, "data": attachment.data}
            )
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key(account, upload_id), value, ex=UPLOAD_TTL_S)
                pipe.zadd(index, {f"{upload_id} {size}": now + UPLOAD_TTL_S})
                pipe.expire(index, UPLOAD_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from None
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
        text = member.decode() if isinstance(member, bytes) else str(member)
        upload_id, _, size = text.partition(" ")
        out.append((upload_id, int(size) if size.isdigit() else 0, float(score)))
    return out
