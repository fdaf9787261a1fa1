"""IMAP edge (RFC 3501): password checks and, through the Dovecot master user, mailbox access.

The bridge never stores a user's password: a login is checked once against Dovecot, and later
reads go through the master user (`user*master`, Dovecot "Master users/passwords").
"""

from __future__ import annotations

import base64
import logging
import re

import aioimaplib

from bridge.browser_events import EmailRef
from bridge.errors import InvalidInput, NotFound, Unavailable

log = logging.getLogger(__name__)

# RFC 3501 quoted strings cannot carry CR, LF or NUL; refuse them before they reach the wire.
_FORBIDDEN = re.compile(r"[\x00\r\n]")
ADDRESS = re.compile(r"^[^@\s\"\\]{1,64}@[A-Za-z0-9.-]{1,253}$")
MAX_PASSWORD = 1024
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FLAG = re.compile(r"^\\?[A-Za-z0-9$_.-]{1,64}$")  # system flags and atom keywords (RFC 3501 9)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_mailbox(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 5.1.3), quoted for a command."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return _quoted("".join(out))


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

    async def _as_user(self, account: str) -> aioimaplib.IMAP4:
        """A session logged in as `account` through the master user (Dovecot master users)."""
        client = await self._connect()
        try:
            response = await client.login(_quoted(f"{account}*{self.master_user}"), self.master_password)
        except (OSError, TimeoutError) as exc:
            await _close(client)
            raise Unavailable(f"IMAP login did not complete: {exc}") from None
        if response.result != "OK":
            await _close(client)
            raise Unavailable("the IMAP master user was refused; check BRIDGE_IMAP_MASTER_*")
        return client

    async def _select(self, client: aioimaplib.IMAP4, mailbox: str, uidvalidity: int) -> None:
        response = await client.select(encode_mailbox(mailbox))
        if response.result != "OK":
            raise NotFound("no such email")
        for line in response.lines:
            match = _UIDVALIDITY.search(bytes(line) if not isinstance(line, str) else line.encode())
            if match is not None and int(match.group(1)) != uidvalidity:
                raise NotFound("no such email")  # the mailbox was recreated: old ids are gone

    async def store_flags(self, ref: EmailRef, flags: tuple[str, ...], *, add: bool) -> None:
        """UID STORE +FLAGS / -FLAGS as the user (RFC 3501 6.4.6); Dovecot's hook then tells every device."""
        for flag in flags:
            if not _FLAG.match(flag):
                raise InvalidInput(f"invalid flag {flag!r}")
        client = await self._as_user(ref.account)
        try:
            await self._select(client, ref.mailbox, ref.uidvalidity)
            response = await client.uid(
                "store", str(ref.uid), "+FLAGS" if add else "-FLAGS", "(" + " ".join(flags) + ")"
            )
            if response.result != "OK" or not any(b"FETCH" in bytes(line) for line in response.lines[:-1]):
                raise NotFound("no such email")
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"IMAP STORE did not complete: {exc}") from None
        finally:
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
