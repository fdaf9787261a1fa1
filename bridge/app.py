"""The app factory: where the protocol edges meet.

`create_app(settings)` owns the bridge process's long-lived resources. Each is opened and closed in
an aiohttp cleanup context, in order (Redis, store, IMAP gateway, the mail service with the index
cache and the fan-out publisher, Web Push, the Socket.IO edge with the fan-out reader, consumers and spool
drainer, SMTP filter), each object made whole once what it needs is open, and reached by handlers
through the typed keys in bridge.keys. Only the Socket.IO server itself is made with the app (its
routes must be added before the app starts); its handlers are registered by the edge's context.
`create_filter_app(settings)` is the content filter alone (Redis and the SMTP listener), for
running it as its own process; the bridge then runs with BRIDGE_FILTER_PORT=0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bridge import keys
from bridge.auth import SHARED_SECRET_ALGORITHMS, TokenIssuer, TrustedIssuer
from bridge.backfill import Backfill
from bridge.browser_events import BrowserEvent
from bridge.events import StreamNames
from bridge.fanout import FanoutReader
from bridge.fanout_publish import FanoutPublisher
from bridge.http_api import add_routes, add_web_client, cors_middleware, errors_middleware
from bridge.http_mail import add_routes as add_mail_routes
from bridge.http_push import add_routes as add_push_routes
from bridge.imap import ImapGateway
from bridge.index_cache import IndexCache
from bridge.mail_facts import MailFacts
from bridge.mail_service import MailService
from bridge.metrics import Metrics
from bridge.push_presence import PushPresence
from bridge.push_sender import PushSender, VapidKey
from bridge.rate_limit import RateLimiter
from bridge.realtime import Realtime
from bridge.redis_text import text
from bridge.redis_url import CLUSTER_SCHEME, SENTINEL_SCHEME, parse_cluster_url, parse_sentinel_url
from bridge.relay import Relay
from bridge.settings import Settings
from bridge.sio_server import make_server
from bridge.slow_sockets import SlowSocketGuard
from bridge.smtp_filter import FilterHandler, FilterServer
from bridge.socket_actions import SocketActions
from bridge.spool import SpoolDrainer
from bridge.store import MailboxCounts, Store
from bridge.streams import Consumer, Delivery, Publisher, lost_key
from bridge.submission import Submission

log = logging.getLogger(__name__)

REDIS_POOL_SIZE = 256


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        # Cancel again until it ends: on Python 3.11 a library's asyncio.wait_for can drop a
        # cancellation that lands as its reply arrives (CPython gh-86296).
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _supervised(name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.create_task(coro, name=name)

    def done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %s died: %r", name, t.exception())

    task.add_done_callback(done)
    return task


def unread_count_event(counts: MailboxCounts) -> BrowserEvent:
    payload = {
        "account": counts.account,
        "mailbox": counts.mailbox,
        "unread": counts.unread,
        "total": counts.total,
        "countsVersion": counts.version,  # the highest seen wins (bridge.index_cache)
    }
    return BrowserEvent("unread_count", counts.account, payload)


def _own_keys(settings: Settings) -> tuple[str, str]:
    """(signing key, verifying key) of the bridge's own tokens; a shared secret is both."""
    private, public = settings.jwt_private_key_file, settings.jwt_public_key_file
    if settings.jwt_algorithm in SHARED_SECRET_ALGORITHMS or private is None or public is None:
        return settings.jwt_secret, ""
    return private.read_text(), public.read_text()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    client = redis_client(settings.redis_url)
    app[keys.REDIS] = client
    app[keys.PUBLISHER] = Publisher(
        client, settings.spool_dir, settings.stream_maxlen, lost_key=lost_key(settings.stream_prefix)
    )
    yield
    await client.aclose()


def redis_client(url: str) -> aioredis.Redis:
    """A client for REDIS_URL: one Redis (redis://, rediss://, unix://), the master that Redis
    Sentinel names (redis+sentinel://), found again after a failover, or a Redis Cluster
    (redis+cluster://), whose MOVED and failovers redis-py follows."""
    # A socket timeout above the consumers' XREADGROUP block time: a Redis that stops answering
    # (paused, partitioned) raises instead of hanging a consumer forever. After a Redis restart
    # every pooled connection is dead: retry on a fresh one rather than fail the first command.
    # A blocking pool: past REDIS_POOL_SIZE connections a command waits for a free one instead
    # of raising MaxConnectionsError (a connect storm of 1,000 sockets hit redis-py's default
    # non-blocking limit of 100, and each refused CONNECT left a browser hanging for 30 s).
    common: dict[str, Any] = {
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "health_check_interval": 10,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
        "retry_on_error": [RedisConnectionError],
    }
    if url.startswith(SENTINEL_SCHEME + "://"):
        target = parse_sentinel_url(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8.2
            list(target.sentinels), sentinel_kwargs={"socket_timeout": 2, "socket_connect_timeout": 2}
        )
        # redis-py's Sentinel pool does not block when full: a larger ceiling than the plain pool's.
        master: aioredis.Redis = sentinel.master_for(
            target.service, db=target.db, password=target.password, max_connections=4 * REDIS_POOL_SIZE, **common
        )
        return master
    if url.startswith(CLUSTER_SCHEME + "://"):
        cluster = parse_cluster_url(url)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
            password=cluster.password,
            max_connections=4 * REDIS_POOL_SIZE,  # per node; the cluster pool does not block when full
            **common,
        )
        # RedisCluster serves the same commands with the same replies for keys of one slot, which is
        # all the bridge uses (Settings.validate makes every key share the prefix's hash tag); it is
        # not a subclass of Redis, hence the cast.
        return cast(aioredis.Redis, client)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE, timeout=5, **common)
    return aioredis.Redis.from_pool(pool)


async def filter_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Postfix content filter's SMTP listener (none when BRIDGE_FILTER_PORT is 0)."""
    settings = app[keys.SETTINGS]
    if settings.filter_port == 0:
        yield
        return
    handler = FilterHandler(
        app[keys.PUBLISHER],
        app[keys.REDIS],
        StreamNames(settings.stream_prefix),
        settings.reinject_host,
        settings.reinject_port,
    )
    server = FilterServer(handler, settings.host, settings.filter_port)
    await server.start()
    yield
    await server.stop()


def create_filter_app(settings: Settings) -> web.Application:
    """The content filter alone (`mail-bridge filter`): Redis and the SMTP listener, no HTTP. Run
    apart from the bridge, a mail's MIME scan and re-injection never share an event loop (or a
    core) with the relay that pushes events to browsers."""
    app = web.Application()
    app[keys.SETTINGS] = settings
    app.cleanup_ctx.extend([redis_ctx, filter_ctx])
    return app


DOVECOT_LOST = re.compile(rb"^dovecot_mail_bridge_events_lost_total\s+([0-9.eE+]+)", re.M)


async def count_lost_events(app: web.Application, metrics: Metrics) -> None:
    """Lost events for /metrics: the Python producers' Redis hash, plus the hook's count kept by
    Dovecot's statistics (dovecot-conf/90-mail-bridge.conf), read from its OpenMetrics page."""
    settings = app[keys.SETTINGS]
    counts: dict[str, float] = {}
    try:
        raw: Any = await app[keys.REDIS].hgetall(lost_key(settings.stream_prefix))
        counts = {text(k): float(v) for k, v in raw.items()}
    except RedisError:
        counts = dict(metrics.events_lost.by_stream)  # keep the last known values
    if settings.dovecot_metrics_url:
        stream = StreamNames(settings.stream_prefix).dovecot
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
                http.get(settings.dovecot_metrics_url) as r,
            ):
                found = DOVECOT_LOST.search(await r.read()) if r.status == 200 else None
            metrics.dovecot_metrics_up.set(1 if r.status == 200 else 0)
            counts[stream] = counts.get(stream, 0.0) + (float(found.group(1)) if found else 0.0)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("Dovecot statistics at %s did not answer: %s", settings.dovecot_metrics_url, exc)
            metrics.dovecot_metrics_up.set(0)
    metrics.events_lost.by_stream = counts


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[cors_middleware(settings.cors_origins), errors_middleware],
        client_max_size=48 << 20,
    )
    app[keys.METRICS] = metrics = Metrics()
    app[keys.REQUEST_LIMIT] = RateLimiter(settings.requests_per_second, settings.requests_per_second * 3)
    app[keys.SETTINGS] = settings
    signing_key, verify_key = _own_keys(settings)
    app[keys.ISSUER] = TokenIssuer(
        secret=signing_key,
        verify_key=verify_key,
        algorithm=settings.jwt_algorithm,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_s=settings.jwt_ttl_s,
        trusted=(
            (
                TrustedIssuer(
                    issuer=settings.host_jwt_issuer,
                    audience=settings.host_jwt_audience,
                    algorithm=settings.host_jwt_algorithm,
                    public_key=settings.host_jwt_key_file.read_text(),
                ),
            )
            if settings.host_jwt_key_file is not None
            else ()
        ),
    )
    streams = StreamNames(settings.stream_prefix)
    sio = make_server(settings.cors_origins)
    guard = SlowSocketGuard(sio, settings.socket_max_queued, metrics)
    app.middlewares.append(guard.track)
    sio.attach(app)
    add_routes(app)
    add_mail_routes(app)
    add_push_routes(app)
    add_web_client(app, settings.web_dir)

    async def metrics_page(request: web.Request) -> web.Response:
        groups = (settings.consumer_group, f"{settings.consumer_group}-index")
        for stream in streams.all():
            try:
                infos: Any = await app[keys.REDIS].xinfo_groups(stream)
            except RedisError:
                continue
            for info in infos:
                name = text(info["name"])
                if name in groups and info.get("lag") is not None:
                    metrics.stream_lag.labels(stream, name).set(info["lag"])
        await count_lost_events(app, metrics)
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics_page)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = Store(settings.mongodb_url, settings.mongodb_database)
        await store.open()
        app[keys.STORE] = store
        yield
        await store.close()

    async def imap_ctx(app: web.Application) -> AsyncIterator[None]:
        app[keys.IMAP] = ImapGateway(
            settings.imap_host,
            settings.imap_port,
            settings.imap_master_user,
            settings.imap_master_password,
            settings.imap_timeout_s,
        )
        yield

    async def mail_ctx(app: web.Application) -> AsyncIterator[None]:
        app[keys.FANOUT_PUBLISHER] = publisher = FanoutPublisher(
            app[keys.REDIS], settings.stream_prefix, resume_log_len=settings.resume_log_len, metrics=metrics
        )
        app[keys.INDEX_CACHE] = index_cache = IndexCache(app[keys.REDIS], app[keys.STORE], settings.stream_prefix)
        app[keys.BACKFILL] = backfill = Backfill(
            app[keys.IMAP], app[keys.STORE], index_cache, lambda c: publisher.publish(unread_count_event(c))
        )
        app[keys.MAIL] = MailService(
            app[keys.IMAP],
            app[keys.STORE],
            app[keys.REDIS],
            Submission(
                settings.submission_host,
                settings.submission_port,
                settings.imap_master_user,
                settings.imap_master_password,
                starttls=settings.submission_starttls,
            ),
            index_cache,
            prefix=settings.stream_prefix,
            metrics=metrics,
            send_limit=RateLimiter(settings.send_per_minute / 60, max(1, settings.send_per_minute // 3)),
            publish=publisher.publish,
        )
        yield
        await backfill.close()

    async def push_ctx(app: web.Application) -> AsyncIterator[None]:
        """Web Push: which browsers have a tab open, and the sender the relay hands new mail to."""
        app[keys.VAPID] = vapid = VapidKey(app[keys.STORE], settings.vapid_private_key_file)
        app[keys.PUSH_PRESENCE] = presence = PushPresence(
            app[keys.REDIS], settings.stream_prefix, settings.consumer_name
        )
        app[keys.PUSH] = sender = PushSender(
            app[keys.STORE],
            presence,
            vapid,
            subject=settings.vapid_subject,
            allowed_origins=settings.push_allowed_origins,
            metrics=metrics,
        )
        tasks = [_supervised("push", sender.run()), _supervised("push-presence", presence.run())]
        yield
        await _cancel(tasks)

    async def realtime_ctx(app: web.Application) -> AsyncIterator[None]:
        """The Socket.IO edge, its client actions and the fan-out reader that feeds its rooms."""
        reader = FanoutReader(app[keys.REDIS], sio, settings.stream_prefix, metrics)
        app[keys.REALTIME] = realtime = Realtime(
            sio,
            app[keys.ISSUER],
            reader,
            max_sockets_per_user=settings.max_sockets_per_user,
            metrics=metrics,
            on_accounts=app[keys.BACKFILL].start_all,
            presence=app[keys.PUSH_PRESENCE],
        )
        SocketActions(sio, realtime.identity, app[keys.FANOUT_PUBLISHER], app[keys.IMAP], app[keys.MAIL])
        tasks = [_supervised("fanout", reader.run()), _supervised("fanout-sweep", reader.sweep())]
        yield
        await _cancel(tasks)
        await realtime.close()
        await reader.aclose()

    async def background_ctx(app: web.Application) -> AsyncIterator[None]:
        redis = app[keys.REDIS]
        index_cache = app[keys.INDEX_CACHE]
        publisher = app[keys.FANOUT_PUBLISHER]
        prefix = settings.stream_prefix

        async def index(deliveries: Sequence[Delivery]) -> None:
            # One unread_count per mailbox per read, however many of its messages the read touched.
            counts = await index_cache.apply([d.event for d in deliveries])
            await publisher.publish_many([unread_count_event(c) for c in counts])

        relay = Relay(
            publisher, MailFacts(redis, prefix), prefix=prefix, metrics=metrics, on_new_mail=app[keys.PUSH].offer
        )
        # The filter's stream first: a read holding a mail's summary and its delivery must store
        # the summary before the delivery is relayed (the filter publishes before re-injecting).
        relayer = Consumer(
            redis, (streams.postfix, streams.dovecot), settings.consumer_group, settings.consumer_name, relay.relay
        )
        # The index has its own group: a slow or stopped store never delays what browsers see.
        indexer = Consumer(redis, streams.all(), f"{settings.consumer_group}-index", settings.consumer_name, index)
        drainer = SpoolDrainer(redis, settings.spool_dir, settings.stream_maxlen)
        tasks = [
            _supervised("relay", relayer.run()),
            _supervised("indexer", indexer.run()),
            _supervised("spool-drain", drainer.run()),
            _supervised("slow-sockets", guard.run()),
        ]
        yield
        await _cancel(tasks)

    contexts = [redis_ctx, store_ctx, imap_ctx, mail_ctx, push_ctx, realtime_ctx, background_ctx, filter_ctx]
    app.cleanup_ctx.extend(contexts)
    return app
