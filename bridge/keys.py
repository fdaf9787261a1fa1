"""Typed aiohttp application keys: how handlers reach the shared objects `create_app` opened."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from bridge.auth import TokenIssuer
from bridge.backfill import Backfill
from bridge.fanout_publish import FanoutPublisher
from bridge.imap import ImapGateway
from bridge.index_cache import IndexCache
from bridge.mail_service import MailService
from bridge.metrics import Metrics
from bridge.push_presence import PushPresence
from bridge.push_sender import PushSender, VapidKey
from bridge.rate_limit import RateLimiter
from bridge.realtime import Realtime
from bridge.settings import Settings
from bridge.store import Store
from bridge.streams import Publisher

SETTINGS = web.AppKey("settings", Settings)
ISSUER = web.AppKey("issuer", TokenIssuer)
REDIS = web.AppKey("redis", aioredis.Redis)
STORE = web.AppKey("store", Store)
IMAP = web.AppKey("imap", ImapGateway)
REALTIME = web.AppKey("realtime", Realtime)
PUBLISHER = web.AppKey("publisher", Publisher)
MAIL = web.AppKey("mail", MailService)
REQUEST_LIMIT = web.AppKey("request_limit", RateLimiter)
METRICS = web.AppKey("metrics", Metrics)
BACKFILL = web.AppKey("backfill", Backfill)
INDEX_CACHE = web.AppKey("index_cache", IndexCache)
FANOUT_PUBLISHER = web.AppKey("fanout_publisher", FanoutPublisher)
VAPID = web.AppKey("vapid", VapidKey)
PUSH = web.AppKey("push", PushSender)
PUSH_PRESENCE = web.AppKey("push_presence", PushPresence)
