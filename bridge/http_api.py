"""HTTP API edge (aiohttp): login, health; errors mapped to statuses in one middleware.

Every error answer is JSON: `{"error": "<one line>"}` with 400 (bad input), 401 (credentials or
token refused), 403 (not yours), 503 (a backing service is down).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bridge import keys
from bridge.errors import AuthError, BridgeError, Forbidden, InvalidInput, NotFound, RateLimited, Unavailable
from bridge.imap import check_credentials_shape

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 << 10
HEALTH_TIMEOUT_S = 3.0

_STATUS: list[tuple[type[BridgeError], int]] = [
    (InvalidInput, 400),
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (RateLimited, 429),
    (Unavailable, 503),
]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except BridgeError as exc:
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                response = error_response(status, str(exc))
                if isinstance(exc, RateLimited):
                    response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.5)))
                return response
        log.exception("unmapped bridge error on %s %s", request.method, request.path)
        return error_response(500, "internal error")


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise InvalidInput(f"body larger than {MAX_JSON_BYTES} bytes")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise InvalidInput(f"body larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body must be JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    return data


async def login(request: web.Request) -> web.Response:
    body = await read_json(request)
    email, password = check_credentials_shape(body.get("email"), body.get("password"))
    imap = request.app[keys.IMAP]
    if not await imap.verify_password(email, password):
        log.info("login refused for %s", email)
        raise AuthError("invalid email or password")
    token, expires = request.app[keys.ISSUER].issue(email, (email,))
    log.info("login ok for %s", email)
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
    return web.json_response(
        {"status": "ok" if healthy else "degraded", "checks": report}, status=200 if healthy else 503
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/auth/login", login)
    app.router.add_get("/health", health)
