"""Web Push delivery (RFC 8030), encrypted (RFC 8291, aes128gcm) and signed (RFC 8292, VAPID):
one small notice per new mail to each of its account's browsers that has no tab open.

The relay hands each new mail over with `offer`, which never waits: a bounded queue, and a notice
that finds it full is dropped and counted. WORKERS workers take notices from it, read the account's
subscriptions (the store) and which have a tab open (bridge.push_presence), and post to the others
at once, each request bounded by REQUEST_TIMEOUT_S. The push service's answer decides: 201 sent;
404 or 410 the subscription is gone (RFC 8030 7.3) and dropped; 429, a 5xx or no answer are tried
again later, at most MAX_ATTEMPTS times (a timer puts the notice back in the queue, so no worker
waits out a backoff); any other status is a failure. Logs name a subscription by its id and its push
service by origin only: the endpoint's path is the browser's secret.

Requests go only to push services on public addresses (PublicResolver), or to the origins
BRIDGE_PUSH_ALLOWED_ORIGINS names; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher

from bridge.errors import InvalidInput, Unavailable
from bridge.metrics import Metrics
from bridge.push_presence import PushPresence
from bridge.store import Store
from bridge.webpush import (
    Subscription,
    application_server_key,
    check_endpoint,
    load_vapid_key,
    new_vapid_pem,
    notice,
    origin_of,
    wants_push,
)

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
WORKERS = 4
REQUEST_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3
BACKOFF_S = (2.0, 10.0)  # before the second and third attempts
MAX_RETRY_AFTER_S = 60.0
# RFC 8030 5.2: how long the push service keeps a notice for a browser that is offline. New mail
# a day later is still worth a notification; older, the inbox says it.
PUSH_TTL_S = 86400
# RFC 8030 5.3: new mail is "normal" (not "high", which is for calls and chat messages).
URGENCY = "normal"
VAPID_LIFETIME_S = 12 * 3600  # RFC 8292 2: at most 24 hours
GONE = (404, 410)
RETRIED = (429, 500, 502, 503, 504)


class PublicResolver(AbstractResolver):
    """DNS as usual, but only public addresses come back (none of loopback, private networks,
    link-local): an endpoint cannot name a host of the bridge's own network. The host and port of an
    allowed origin resolve as they are."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._inner = ThreadedResolver()
        self._allowed = set()
        for origin in allowed:
            parts = urlsplit(origin)
            self._allowed.add(((parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)))

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if (host.lower(), port) in self._allowed:
            return found
        # A scoped IPv6 address ("fe80::1%eth0") is link-local: never public.
        public = [r for r in found if "%" not in r["host"] and ipaddress.ip_address(r["host"]).is_global]
        if not public:
            raise OSError(f"{host} has no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class Job:
    account: str
    body: bytes  # the notice, before encryption
    target: tuple[str, Subscription] | None = None  # a retry: one subscription; else all of the account's
    attempt: int = 1


class VapidKey:
    """The bridge's VAPID key, read once it is first needed: from BRIDGE_VAPID_PRIVATE_KEY_FILE, or
    the one kept in the store (made by the first node that asked), so a store down at start delays
    Web Push without stopping the bridge."""

    def __init__(self, store: Store, file: Path | None) -> None:
        self.store = store
        self.file = file
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ec.EllipticCurvePrivateKey:
        async with self._lock:
            if self._key is None:
                if self.file is not None:
                    pem = self.file.read_bytes()  # Settings.validate read it already: small and local
                else:
                    pem = (await self.store.vapid_key(new_vapid_pem().decode())).encode()
                self._key = load_vapid_key(pem)
            return self._key

    async def public(self) -> str:
        return application_server_key(await self.get())


class PushSender:
    def __init__(
        self,
        store: Store,
        presence: PushPresence,
        vapid_key: VapidKey,
        *,
        subject: str,
        allowed_origins: tuple[str, ...],
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.presence = presence
        self.vapid_key = vapid_key
        self.subject = subject
        self.allowed = allowed_origins
        self.metrics = metrics
        self.queue: asyncio.Queue[Job] = asyncio.Queue(QUEUE_SIZE)
        self._timers: set[asyncio.TimerHandle] = set()
        self._headers: dict[str, tuple[float, str]] = {}  # audience -> (valid until, Authorization)
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ the relay's side

    def offer(self, account: str, payload: dict[str, Any]) -> None:
        """A new_email the relay published: queued for its account's closed browsers; never waits."""
        if not wants_push(payload):
            return
        try:
            self.queue.put_nowait(Job(account, notice(payload)))
        except asyncio.QueueFull:
            self.metrics.pushes.labels("dropped").inc()
            log.warning("[push %s] queue full: a notice dropped", account)

    # ------------------------------------------------------------------ workers

    async def run(self) -> None:
        """Send until cancelled (then the timers of pending retries are cancelled too)."""
        connector = aiohttp.TCPConnector(resolver=PublicResolver(self.allowed), limit=32)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        ) as session:
            self._session = session
            workers = [asyncio.create_task(self._work(), name=f"push-{n}") for n in range(WORKERS)]
            try:
                await asyncio.gather(*workers)
            finally:
                for timer in self._timers:
                    timer.cancel()
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._handle(job)
            except Unavailable as exc:  # the store or Redis: this notice is lost, the next may go
                self.metrics.pushes.labels("failed").inc()
                log.warning("[push %s] not sent: %s", job.account, exc)
            except Exception:
                self.metrics.pushes.labels("failed").inc()
                log.exception("[push %s] not sent", job.account)

    async def _handle(self, job: Job) -> None:
        if job.target is not None:
            await self._send(job, *job.target)
            return
        subscriptions = await self.store.push_subscriptions_of(job.account)
        if not subscriptions:
            return
        try:
            open_ids = await self.presence.open_ids(job.account, [sub_id for sub_id, _ in subscriptions])
        except Exception as exc:  # RedisError and its kin: better a push too many than none
            log.warning("[push %s] tabs open unknown (%s): pushing to every browser", job.account, exc)
            open_ids = set()
        closed = [(sub_id, sub) for sub_id, sub in subscriptions if sub_id not in open_ids]
        await asyncio.gather(*(self._send(job, sub_id, sub) for sub_id, sub in closed))

    async def _authorization(self, audience: str) -> str:
        now = time.time()
        cached = self._headers.get(audience)
        if cached is not None and cached[0] > now:
            return cached[1]
        claims = {"aud": audience, "exp": int(now) + VAPID_LIFETIME_S, "sub": self.subject}
        vapid = Vapid02(private_key=await self.vapid_key.get())
        header: str = vapid.sign(claims)["Authorization"]
        self._headers[audience] = (now + VAPID_LIFETIME_S / 2, header)
        return header

    async def _send(self, job: Job, sub_id: str, sub: Subscription) -> None:
        tag = f"[push {sub_id[:8]} {origin_of(sub.endpoint)}]"
        try:
            check_endpoint(sub.endpoint, self.allowed)
        except InvalidInput as exc:
            self.metrics.pushes.labels("failed").inc()
            log.warning("%s not sent: %s", tag, exc)
            return
        encrypted = WebPusher(sub.info()).encode(job.body, "aes128gcm")["body"]
        headers = {
            "Authorization": await self._authorization(origin_of(sub.endpoint)),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(PUSH_TTL_S),
            "Urgency": URGENCY,
        }
        assert self._session is not None
        retry_after: float | None = None
        try:
            async with self._session.post(sub.endpoint, data=encrypted, headers=headers, allow_redirects=False) as r:
                status = r.status
                retry_after = _seconds(r.headers.get("Retry-After"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status, problem = 0, f"no answer ({type(exc).__name__}: {exc})"
        else:
            problem = f"status {status}"
        if status in (200, 201, 202):
            self.metrics.pushes.labels("sent").inc()
            log.info("%s sent (attempt %d)", tag, job.attempt)
        elif status in GONE:
            self.metrics.pushes.labels("gone").inc()
            log.info("%s gone (%s): subscription dropped", tag, problem)
            await self.store.remove_push_subscription(sub_id, (job.account,))
        elif (status == 0 or status in RETRIED) and job.attempt < MAX_ATTEMPTS:
            delay = min(retry_after or BACKOFF_S[job.attempt - 1], MAX_RETRY_AFTER_S)
            self.metrics.pushes.labels("retried").inc()
            log.warning("%s %s; trying again in %.0f s", tag, problem, delay)
            self._later(delay, replace(job, target=(sub_id, sub), attempt=job.attempt + 1))
        else:
            self.metrics.pushes.labels("failed").inc()
            log.warning("%s failed: %s (attempt %d)", tag, problem, job.attempt)

    def _later(self, delay: float, job: Job) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            try:
                self.queue.put_nowait(job)
            except asyncio.QueueFull:
                self.metrics.pushes.labels("dropped").inc()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the delay form, RFC 9110 10.2.3); None for a date or nothing."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
