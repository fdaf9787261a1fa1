"""IMAP edge (RFC 3501): password checks and, through the Dovecot master user, mailbox access.

The bridge never stores a user's password: a login is checked once against Dovecot, and later
reads go through the master user (`user*master`, Dovecot "Master users/passwords").
"""

from __future__ import annotations

import logging
import re

import aioimaplib

from bridge.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

# RFC 3501 quoted strings cannot carry CR, LF or NUL; refuse them before they reach the wire.
_FORBIDDEN = re.compile(r"[\x00\r\n]")
ADDRESS = re.compile(r"^[^@\s\"\\]{1,64}@[A-Za-z0-9.-]{1,253}$")
MAX_PASSWORD = 1024


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_credentials_shape(email: object, password: object) -> tuple[str, str]:
    if not isinstance(email, str) or not ADDRESS.match(email):
        raise InvalidInput("email must be an address like user@example.org")
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
        raise InvalidInput("password must be a non-empty string")
    if _FORBIDDEN.search(password):
        raise InvalidInput("password contains forbidden characters")
    return email, password


class ImapGateway:
    def __init__(self, host: str, port: int, master_user: str, master_password: str, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.master_user = master_user
        self.master_password = master_password
        self.timeout_s = timeout_s

    async def _connect(self) -> aioimaplib.IMAP4:
        client = aioimaplib.IMAP4(host=self.host, port=self.port, timeout=self.timeout_s)
        try:
            await client.wait_hello_from_server()
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"IMAP server {self.host}:{self.port} did not answer: {exc}") from None
        return client

    async def verify_password(self, email: str, password: str) -> bool:
        """True when Dovecot accepts this login. Raises Unavailable when it cannot tell."""
        client = await self._connect()
        try:
            response = await client.login(_quoted(email), password)
            return bool(response.result == "OK")
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"IMAP login did not complete: {exc}") from None
        finally:
            await _close(client)

    async def ping(self) -> None:
        client = await self._connect()
        await _close(client)


async def _close(client: aioimaplib.IMAP4) -> None:
    try:
        if client.get_state() in ("AUTH", "SELECTED", "NONAUTH"):
            await client.logout()
    except (OSError, TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout):
        pass
    finally:
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
