"""An account's staged uploads are bounded (bridge.uploads) however many arrive at once: the check
and the store are one step in Redis, so concurrent uploads cannot all pass a check made before any
of them was stored."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from bridge.compose import Attachment
from bridge.errors import RateLimited
from bridge.stack.launcher import StackInfo
from bridge.uploads import MAX_PENDING_BYTES, MAX_PENDING_UPLOADS, MAX_UPLOAD_BYTES, StagedUpload, Uploads
from tests.common import Account
from tests.mailtools import wait_for_messages
from tests.test_http_mail import authed
from tests.test_http_uploads import upload

CONCURRENT = 40
BOUND = 10  # uploads of SIZE that fit
SIZE = 1000


async def stage_all(uploads: Uploads, account: str, count: int) -> tuple[list[StagedUpload], list[RateLimited]]:
    results = await asyncio.gather(
        *(
            uploads.stage(account, Attachment(f"f{i}.bin", "application/octet-stream", b"x" * SIZE))
            for i in range(count)
        ),
        return_exceptions=True,
    )
    staged = [r for r in results if isinstance(r, StagedUpload)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(staged) + len(refused) == count, [r for r in results if not isinstance(r, StagedUpload | RateLimited)]
    return staged, refused


async def test_concurrent_uploads_are_bounded_and_the_budget_frees(redis_client: aioredis.Redis) -> None:
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    uploads = Uploads(redis_client, f"test-{uuid.uuid4().hex[:8]}", max_pending_bytes=BOUND * SIZE)
    staged, refused = await stage_all(uploads, account, CONCURRENT)
    assert (len(staged), len(refused)) == (BOUND, CONCURRENT - BOUND)
    assert all(1 <= r.retry_after_s <= 24 * 3600 for r in refused), [r.retry_after_s for r in refused][:3]
    assert len(await uploads.resolve(account, [s.id for s in staged])) == BOUND

    # A sent mail consumes its uploads: exactly their room comes free, even to a crowd.
    await uploads.discard(account, [s.id for s in staged[:3]])
    again, _refused = await stage_all(uploads, account, CONCURRENT)
    assert len(again) == 3


async def test_expired_uploads_free_the_budget(redis_client: aioredis.Redis) -> None:
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    uploads = Uploads(redis_client, f"test-{uuid.uuid4().hex[:8]}", max_pending_bytes=BOUND * SIZE, ttl_s=1)
    staged, _refused = await stage_all(uploads, account, CONCURRENT)
    assert len(staged) == BOUND
    await asyncio.sleep(1.2)
    assert await uploads.resolve(account, [s.id for s in staged]) == {}  # gone with their time
    again, _refused = await stage_all(uploads, account, CONCURRENT)
    assert len(again) == BOUND


async def test_empty_uploads_are_bounded_too(redis_client: aioredis.Redis) -> None:
    """An empty file costs no bytes of the budget, but a key in Redis: their number is bounded."""
    account = f"{uuid.uuid4().hex[:8]}@example.test"
    uploads = Uploads(redis_client, f"test-{uuid.uuid4().hex[:8]}")
    results: list[StagedUpload | BaseException] = []
    for _wave in range(MAX_PENDING_UPLOADS // CONCURRENT + 2):  # a client's pool holds 100 connections
        results += await asyncio.gather(
            *(uploads.stage(account, Attachment("empty.txt", "text/plain", b"")) for _ in range(CONCURRENT)),
            return_exceptions=True,
        )
    assert sum(isinstance(r, StagedUpload) for r in results) == MAX_PENDING_UPLOADS
    assert sum(isinstance(r, RateLimited) for r in results) == len(results) - MAX_PENDING_UPLOADS


@pytest.mark.e2e
async def test_concurrent_http_uploads_stop_at_the_accounts_bound(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    """40 uploads at once through the bridge: as many as the bound holds are taken (201), the
    rest refused with 429 and a Retry-After; a sent mail that carried one frees its room."""
    headers = await authed(http, account)
    # Most of the budget first (so the 40 at once can be small), one upload at a time.
    full = MAX_PENDING_BYTES // MAX_UPLOAD_BYTES - 1
    for _ in range(full):
        status, _body = await upload(http, headers, b"\x00" * MAX_UPLOAD_BYTES)
        assert status == 201
    size = (MAX_PENDING_BYTES - full * MAX_UPLOAD_BYTES) // BOUND

    async def one(i: int) -> tuple[int, str | None, dict[str, str]]:
        async with http.post(
            "/api/v1/uploads",
            headers={**headers, "Content-Type": "application/octet-stream"},
            params={"filename": f"part{i}.bin"},
            data=bytes([i]) * size,
        ) as r:
            body = await r.json()
            return r.status, r.headers.get("Retry-After"), body

    results = await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
    statuses = sorted(status for status, _retry, _body in results)
    assert statuses == [201] * BOUND + [429] * (CONCURRENT - BOUND), statuses
    assert all(retry is not None and int(retry) >= 1 for status, retry, _body in results if status == 429)
    taken = [body["id"] for status, _retry, body in results if status == 201]

    # The send consumes the upload it carried: room for exactly one more.
    payload = {"to": [other_account.email], "subject": "carries one", "attachments": [{"uploadId": taken[0]}]}
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 200, await r.text()
    await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1)
    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert sorted(status for status, _retry, _body in results) == [201, 429, 429, 429]
