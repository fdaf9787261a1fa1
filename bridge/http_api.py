"""HTTP API edge (aiohttp): login, health, the web client's files; errors mapped to statuses in one
middleware.

Every error answer is JSON: `{"error": "<one line>"}` with 400 (bad input), 401 (credentials or
token refused), 403 (not yours), 404 (no such resource), 413 (body too large), 429 (too many
requests, with Retry-After), 503 (a backing service is down).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bridge import keys
from bridge.auth import canonical_account
from bridge.errors import (
    AuthError,
    BridgeError,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from bridge.imap import check_credentials_shape
from bridge.rate_limit import LoginLimits
from bridge.resources import shipped

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 << 10
HEALTH_TIMEOUT_S = 3.0

# First match wins: a subclass comes before its base.
_STATUS: list[tuple[type[BridgeError], int]] = [
    (TooLarge, 413),
    (UnsupportedMediaType, 415),
    (InvalidInput, 400),
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (RateLimited, 429),
    (Unavailable, 503),
]


def _raised_by_client_input(exc: BaseException) -> bool:
    """A request or packet the client got wrong, refused by aiohttp's HTTP parser or Engine.IO's
    and Socket.IO's packet decoders (where the exception was raised), not a fault of the bridge."""
    if isinstance(exc, HttpProcessingError):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).parts
    return "engineio" in where or "socketio" in where


class ClientErrorLog(logging.Filter):
    """One WARNING line, without traceback, for what a client sent wrong at the protocol level.

    aiohttp logs a request it could not parse (a header over 8 kB, a request line too long) at
    ERROR with a traceback whose message quotes the line's first bytes: the start of a bearer
    token, or a query string. Engine.IO does the same for a malformed websocket frame. Both are the
    client's doing, and anyone can send them as fast as they like, so the log keeps only who and
    the kind of error, never the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _raised_by_client_input(exc):
            said = record.getMessage()
            record.msg, record.args = "%s: malformed client input (%s)", (said, type(exc).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


CLIENT_ERROR_LOG = ClientErrorLog()
# aiohttp's server, and the Engine.IO and Socket.IO servers that python-socketio runs on it.
PROTOCOL_LOGGERS = ("aiohttp.server", "engineio.server", "socketio.server")


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect or success is not an error
        # aiohttp's own refusals (no such route, method not allowed, body over client_max_size)
        # answer in JSON like every other error, not as a text/plain page.
        return error_response(exc.status, exc.reason.lower())
    except BridgeError as exc:
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                response = error_response(status, str(exc))
                if isinstance(exc, RateLimited):
                    response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.5)))
                return response
        log.exception("unmapped bridge error on %s %s", request.method, request.path)
        return error_response(500, "internal error")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_json(request: web.Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    # A body that says it is something else is refused, not parsed anyway: a cross-site form or a
    # text/plain "simple request" never reaches a handler as JSON (no Content-Type is taken as JSON).
    if request.headers.get("Content-Type") is not None and not _is_json(request.content_type):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {request.content_type[:100]!r}")
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body larger than {limit} bytes")
    # Read to the end, chunk by chunk: content.read(n) returns only what has arrived so far, so a
    # body of more than one TCP read (a send with a 200 kB attachment) was cut short and refused
    # as "not JSON". Stops as soon as the body is over the limit (a chunked body has no length).
    raw = bytearray()
    async for chunk in request.content.iter_any():
        raw.extend(chunk)
        if len(raw) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise InvalidInput("body must be JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    # A "\udXXX" escape may leave half a surrogate pair in a string (valid JSON, RFC 8259 8.2, but
    # no text): such a string cannot be encoded, and the store or IMAP raised on it (a 500).
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise InvalidInput("body holds a string that is not valid Unicode (a lone surrogate)")
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: object) -> bool:
    pending = [value]  # a stack, not recursion: the document may be as deep as the parser allowed
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def cors_middleware(allowed: tuple[str, ...]) -> Any:
    """Origins from the allow-list get CORS headers (and preflights an answer); any other Origin
    that is not the bridge itself is refused with 403 (cross-site request forgery, OWASP)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or request.path.startswith("/socket.io/"):
            return await handler(request)  # Socket.IO checks origins itself, during its handshake
        same_origin = origin == f"{request.scheme}://{request.host}"
        if origin not in allowed and not same_origin:
            return error_response(403, "origin not allowed")
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    return middleware


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"  # a peer without an IP address (a Unix socket): one client to the login limits


@functools.cache
def trusted_networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    """BRIDGE_TRUSTED_PROXIES as networks (Settings has checked each)."""
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:192.0.2.1, a dual-stack socket's IPv4 peer
    return address


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: tuple[Network, ...]) -> str:
    """Who a request comes from: the peer, unless the peer is a trusted proxy; then X-Forwarded-For
    read from the right (each proxy appends the address it was reached from), past the trusted
    proxies, to the first address that is not one. What a client wrote into the header itself is
    further left, and never reached while a trusted hop stands between. A hop that is not an
    address stops the walk at the last one that was."""
    current = _parse_address(peer) if peer else None
    if current is None:
        return UNKNOWN
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    while any(current in network for network in proxies) and hops:
        previous = _parse_address(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)


def limit_key(address: str) -> str:
    """What a client's failed logins are counted under: its IPv4 address, or its IPv6 /64 (one
    subscriber's network; anyone can take a new address in it at will)."""
    parsed = _parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


async def login(request: web.Request) -> web.Response:
    body = await read_json(request)
    email, password = check_credentials_shape(body.get("email"), body.get("password"))
    account = canonical_account(email)
    settings = request.app[keys.SETTINGS]
    address = client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), trusted_networks(settings.trusted_proxies)
    )
    limits = LoginLimits(
        request.app[keys.REDIS],
        settings.stream_prefix,
        settings.login_failures_per_address,
        settings.login_failures_per_account,
    )
    attempt = await limits.begin(limit_key(address), account)  # a flood's 429s are not logged one by one
    try:
        named = address if address != UNKNOWN else None
        accepted = await request.app[keys.IMAP].verify_password(account, password, client=named)
    except Unavailable:
        await limits.undecided(attempt)
        raise
    if not accepted:
        log.info("login refused for %s from %s", account, address)
        raise AuthError("invalid email or password")
    await limits.succeeded(attempt)
    # The token grants the account by the name Dovecot gives it: the index, the events' rooms and
    # the resume logs all use that one (bridge.auth.canonical_account).
    token, expires = request.app[keys.ISSUER].issue(account, (account,))
    request.app[keys.BACKFILL].start(account)
    log.info("login ok for %s from %s", account, address)
    return web.json_response({"token": token, "expiresAt": expires})


async def health(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis": app[keys.REDIS].ping,
        "store": app[keys.STORE].ping,
        "imap": app[keys.IMAP].ping,
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(check(), HEALTH_TIMEOUT_S) for check in checks.values()), return_exceptions=True
    )
    report: dict[str, str] = {}
    for name, result in zip(checks, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        report[name] = "ok" if not isinstance(result, BaseException) else f"down: {result}"
    healthy = all(value == "ok" for value in report.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded", "checks": report}
    if report["store"] == "ok":
        try:
            body["store"] = await asyncio.wait_for(app[keys.STORE].describe(), HEALTH_TIMEOUT_S)
        except (BridgeError, TimeoutError) as exc:
            body["store"] = f"unknown: {exc}"
    return web.json_response(body, status=200 if healthy else 503)


OPENAPI = shipped("docs/openapi.json")


async def api_docs(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


# The web client is a static single-page app: its own files only, no inline script, and the mail
# bodies it shows sit in sandboxed frames. Those frames (srcdoc) inherit this policy, so img-src
# must allow remote images for a reader who asked to see them; the server's sanitiser is what
# blocks them by default (bridge.html_sanitizer), and it keeps them only on that request.
WEB_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob: https: http:; "
    "connect-src 'self' ws: wss:; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)

# Top-level files of the build served besides index.html and assets/: a fixed list, never a
# directory. The service worker may control the whole origin (Service-Worker-Allowed) and must be
# revalidated on every load, or an old worker would keep serving an old client.
WEB_FILES: dict[str, tuple[str, dict[str, str]]] = {
    "sw.js": ("application/javascript", {"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"}),
    "manifest.webmanifest": ("application/manifest+json", {}),
    "icon.svg": ("image/svg+xml", {}),
}


def add_web_client(app: web.Application, web_dir: Path) -> None:
    """Serve the built web client (web/dist) at "/", when it has been built."""
    index = web_dir / "index.html"
    if not index.is_file():
        log.warning("no web client at %s (run `make web`); serving the API only", web_dir)
        return

    async def page(request: web.Request) -> web.FileResponse:
        response = web.FileResponse(index)
        response.headers["Content-Security-Policy"] = WEB_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def top_level(name: str, content_type: str, extra: dict[str, str]) -> Callable[[web.Request], Awaitable[Any]]:
        path = web_dir / name

        async def serve(request: web.Request) -> web.FileResponse:
            if not path.is_file():  # looked up per request: a rebuild may add or remove it
                raise NotFound(f"no {name}")
            response = web.FileResponse(path, headers={"Content-Type": content_type, **extra})
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

        return serve

    app.router.add_get("/", page)
    for name, (content_type, extra) in WEB_FILES.items():
        app.router.add_get(f"/{name}", top_level(name, content_type, extra))
    app.router.add_static("/assets", web_dir / "assets")
    app.on_response_prepare.append(_cache_assets)


# The build names every file under assets/ by a hash of its content (Vite): a name never changes
# content, so a browser may keep it for good, and a new build's page names new files.
ASSET_CACHE = "public, max-age=31536000, immutable"


async def _cache_assets(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/assets/") and response.status in (200, 304):
        response.headers["Cache-Control"] = ASSET_CACHE


def add_routes(app: web.Application) -> None:
    for name in PROTOCOL_LOGGERS:
        logging.getLogger(name).addFilter(CLIENT_ERROR_LOG)  # once: addFilter skips a filter it has
    app.router.add_post("/api/v1/auth/login", login)
    app.router.add_get("/health", health)
    app.router.add_get("/api/docs", api_docs)
