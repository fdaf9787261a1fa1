"""The bridge's error hierarchy.

Each protocol edge maps these to its own reply: the content filter answers Postfix with a 4xx (defer,
never bounce), Socket.IO handlers answer with an ack error, the HTTP API with a status code.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; raised at start, before anything is opened."""


class InvalidInput(BridgeError):
    """A client sent something malformed (HTTP 400, socket ack error)."""


class TooLarge(InvalidInput):
    """A client sent more than the route takes (HTTP 413; elsewhere, like any InvalidInput)."""


class UnsupportedMediaType(InvalidInput):
    """A body in a format the route does not take, e.g. not JSON where JSON is expected (HTTP 415)."""


class AuthError(BridgeError):
    """Credentials or a token were refused (HTTP 401, socket connection refused)."""


class Forbidden(BridgeError):
    """Authenticated, but not allowed to touch this account or resource (HTTP 403)."""


class NotFound(BridgeError):
    """No such resource for this caller: also what another user's id gets (HTTP 404)."""


class RateLimited(BridgeError):
    """Too many requests (HTTP 429 with Retry-After, an error ack on sockets)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DecodeError(BridgeError):
    """Bytes from a stream or spool could not be decoded into an event."""


class Unavailable(BridgeError):
    """A backing service (Redis, the store, Dovecot, Postfix) did not answer (HTTP 503, SMTP 451)."""
