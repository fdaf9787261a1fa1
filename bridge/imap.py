"""IMAP edge (RFC 3501): password checks and, through the Dovecot master user, mailbox access.

The bridge never stores a user's password: a login is checked once against Dovecot, and later
reads go through the master user (`user*master`, Dovecot "Master users/passwords").
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator

import aioimaplib

from bridge.browser_events import EmailRef
from bridge.errors import InvalidInput, NotFound, Unavailable
from bridge.imap_syntax import (
    FETCH_ITEM,
    FetchedHeaders,
    MailboxInfo,
    encode_mailbox,
    internal_date,
    parse_list_line,
    quoted,
)

log = logging.getLogger(__name__)

# RFC 3501 quoted strings cannot carry CR, LF or NUL; refuse them before they reach the wire.
_FORBIDDEN = re.compile(r"[\x00\r\n]")
ADDRESS = re.compile(r"^[^@\s\"\\]{1,64}@[A-Za-z0-9.-]{1,253}$")
MAX_PASSWORD = 1024
# Dovecot delays a login by up to 15 s after its client's failures (auth penalty, 2.3), and answers
# a failure after auth_failure_delay (2 s): a login waits for that rather than be reported as a
# Dovecot that does not answer.
LOGIN_TIMEOUT_S = 20.0
_COPYUID = re.compile(rb"\[COPYUID (\d+) (\d+) (\d+)\]")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")


def _has_messages(lines: list[bytes | bytearray | str]) -> bool:
    """Whether a SELECT's untagged responses count any message (RFC 3501 7.3.1)."""
    for line in lines:
        found = _EXISTS.match(line.encode() if isinstance(line, str) else bytes(line))
        if found is not None:
            return int(found.group(1)) > 0
    return True  # no count given: let the STORE find out


_FLAG = re.compile(r"^\\?[A-Za-z0-9$_.-]{1,64}$")  # system flags and atom keywords (RFC 3501 9)


def _reason(lines: list[bytes | bytearray | str]) -> str:
    """The text of an IMAP NO or BAD (its last line), without the response code (RFC 3501 7.1)."""
    last = lines[-1] if lines else b""
    text = (last.encode() if isinstance(last, str) else bytes(last)).decode("utf-8", "replace")
    return re.sub(r"^\[[^\]]*\]\s*", "", text).strip() or "refused"


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

    async def verify_password(self, email: str, password: str, *, client: str | None = None) -> bool:
        """True when Dovecot accepts this login. Raises Unavailable when it cannot tell.

        `client` is the address of the browser the login comes from. Dovecot is told it (IMAP ID
        `x-originating-ip`, RFC 2971; Dovecot believes it from an address in login_trusted_networks),
        so its auth penalty and its log see each client, not the bridge: one account's guesser is
        slowed, not every user. Dovecot may hold a login for up to 15 s (its penalty for a client's
        recent failures), so a login waits longer than other commands before it is given up."""
        session = await self._connect()
        try:
            if client is not None:
                await self._identify(session, client)
            session.timeout = max(self.timeout_s, LOGIN_TIMEOUT_S)
            response = await session.login(quoted(email), password)
            session.timeout = self.timeout_s
            return bool(response.result == "OK")
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"IMAP login did not complete: {exc}") from None
        finally:
            await _close(session)

    @staticmethod
    async def _identify(session: aioimaplib.IMAP4, client: str) -> None:
        # Dovecot 2.3 answers "OK" whether it believed the address or not; an address it does not
        # trust is ignored (dovecot-conf/91-mail-bridge-master.conf says which it trusts).
        await session.id(**{"name": "mail-bridge", "x-originating-ip": client})

    async def ping(self) -> None:
        client = await self._connect()
        await _close(client)

    async def _as_user(self, account: str) -> aioimaplib.IMAP4:
        """A session logged in as `account` through the master user (Dovecot master users)."""
        client = await self._connect()
        try:
            response = await client.login(quoted(f"{account}*{self.master_user}"), self.master_password)
        except (OSError, TimeoutError) as exc:
            await _close(client)
            raise Unavailable(f"IMAP login did not complete: {exc}") from None
        if response.result != "OK":
            await _close(client)
            raise Unavailable("the IMAP master user was refused; check BRIDGE_IMAP_MASTER_*")
        return client

    @contextlib.asynccontextmanager
    async def _session(self, account: str, what: str) -> AsyncIterator[aioimaplib.IMAP4]:
        """A master-user session as `account`, closed afterwards; transport failures become Unavailable."""
        client = await self._as_user(account)
        try:
            yield client
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"IMAP {what} did not complete: {exc}") from None
        finally:
            await _close(client)

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
        async with self._session(ref.account, "STORE") as client:
            await self._select(client, ref.mailbox, ref.uidvalidity)
            response = await client.uid(
                "store", str(ref.uid), "+FLAGS" if add else "-FLAGS", "(" + " ".join(flags) + ")"
            )
            if response.result != "OK" or not any(b"FETCH" in bytes(line) for line in response.lines[:-1]):
                raise NotFound("no such email")

    async def mark_all_read(self, account: str, mailbox: str) -> None:
        """\\Seen on every message of the mailbox in one command (UID STORE 1:* +FLAGS.SILENT,
        RFC 3501 6.4.6): Dovecot changes only the unread ones, and its hook tells every device of
        each. A mailbox that does not exist has nothing to mark."""
        async with self._session(account, "STORE") as client:
            selected = await client.select(encode_mailbox(mailbox))
            if selected.result != "OK" or not _has_messages(selected.lines):
                return  # nothing to mark (and "1:*" names no message of an empty mailbox)
            response = await client.uid("store", "1:*", "+FLAGS.SILENT", "(\\Seen)")
            if response.result != "OK":
                raise Unavailable("IMAP STORE failed")

    async def list_mailboxes(self, account: str) -> list[MailboxInfo]:
        """Every mailbox of the account, with its special use (RFC 6154) where the server names one."""
        async with self._session(account, "LIST") as client:
            response = await client.list('""', '"*"')
            if response.result != "OK":
                raise Unavailable("IMAP LIST failed")
            return [info for line in response.lines[:-1] if (info := parse_list_line(bytes(line))) is not None]

    async def fetch_raw(self, ref: EmailRef) -> bytes:
        """The whole message (BODY.PEEK[] leaves \\Seen alone, RFC 3501 6.4.5)."""
        async with self._session(ref.account, "FETCH") as client:
            await self._select(client, ref.mailbox, ref.uidvalidity)
            response = await client.uid("fetch", str(ref.uid), "(BODY.PEEK[])")
            literals = [bytes(line) for line in response.lines if isinstance(line, bytearray)]
            if response.result != "OK" or not literals:
                raise NotFound("no such email")
            return literals[0]

    async def move(self, ref: EmailRef, target: str) -> EmailRef | None:
        """UID MOVE (RFC 6851): the hook reports the append there and the expunge here. Returns the
        message's new identity from the COPYUID response code (RFC 4315), when the server gives it."""
        async with self._session(ref.account, "MOVE") as client:
            await self._select(client, ref.mailbox, ref.uidvalidity)
            response = await client.uid("move", str(ref.uid), encode_mailbox(target))
            if response.result != "OK":
                raise NotFound("no such email or mailbox")
            for line in response.lines:
                match = _COPYUID.search(bytes(line))
                if match is not None:
                    return EmailRef(ref.account, target, int(match.group(1)), int(match.group(3)))
            return None

    async def headers_of_all(self, account: str, mailbox: str) -> tuple[int, list[FetchedHeaders]]:
        """UIDVALIDITY and, for every message, UID, flags and the headers the index keeps."""
        async with self._session(account, "FETCH") as client:
            response = await client.select(encode_mailbox(mailbox))
            if response.result != "OK":
                return 0, []
            validity = 0
            for line in response.lines:
                match = _UIDVALIDITY.search(bytes(line))
                if match is not None:
                    validity = int(match.group(1))
            response = await client.uid(
                "fetch",
                "1:*",
                "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)])",
            )
            found: list[FetchedHeaders] = []
            pending: tuple[int, tuple[str, ...], int, int | None] | None = None
            for line in response.lines:
                if isinstance(line, bytearray) and pending is not None:
                    uid, flags, size, arrived = pending
                    found.append(FetchedHeaders(uid, flags, size, bytes(line), arrived))
                    pending = None
                    continue
                match = FETCH_ITEM.search(bytes(line))
                if match is not None:
                    flags = tuple(match.group("flags").decode("ascii", "replace").split())
                    arrived = internal_date(match.group("arrived") or b"")
                    pending = (int(match.group("uid")), flags, int(match.group("size") or 0), arrived)
            return validity, found

    async def create_mailbox(self, account: str, mailbox: str) -> None:
        """CREATE (RFC 3501 6.3.3); a name that exists is refused."""
        async with self._session(account, "CREATE") as client:
            response = await client.create(encode_mailbox(mailbox))
            if response.result != "OK":
                raise InvalidInput(f"{mailbox!r} could not be made: {_reason(response.lines)}")

    async def rename_mailbox(self, account: str, mailbox: str, new_name: str) -> None:
        """RENAME (RFC 3501 6.3.5): the messages go with it, UIDs and UIDVALIDITY kept (Dovecot)."""
        async with self._session(account, "RENAME") as client:
            response = await client.rename(encode_mailbox(mailbox), encode_mailbox(new_name))
            if response.result != "OK":
                raise InvalidInput(f"{mailbox!r} could not be renamed: {_reason(response.lines)}")

    async def delete_mailbox(self, account: str, mailbox: str) -> None:
        """DELETE (RFC 3501 6.3.4): the mailbox and every message in it."""
        async with self._session(account, "DELETE") as client:
            response = await client.delete(encode_mailbox(mailbox))
            if response.result != "OK":
                raise InvalidInput(f"{mailbox!r} could not be deleted: {_reason(response.lines)}")

    async def ensure_mailbox(self, account: str, mailbox: str) -> None:
        """CREATE unless it exists (RFC 3501 6.3.3: creating an existing name is a NO)."""
        async with self._session(account, "CREATE") as client:
            await client.create(encode_mailbox(mailbox))

    async def expunge_uid(self, ref: EmailRef) -> None:
        """UID EXPUNGE (RFC 4315): removes this message only, not others marked \\Deleted."""
        async with self._session(ref.account, "EXPUNGE") as client:
            await self._select(client, ref.mailbox, ref.uidvalidity)
            response = await client.uid("expunge", str(ref.uid))
            if response.result != "OK":
                raise Unavailable("IMAP UID EXPUNGE failed")

    async def append(self, account: str, mailbox: str, message: bytes, flags: tuple[str, ...] = ()) -> EmailRef | None:
        """APPEND (RFC 3501 6.3.11), creating the mailbox when it does not exist yet. Returns the new
        message's identity from the APPENDUID response code (RFC 4315), when the server gives it."""
        async with self._session(account, "APPEND") as client:
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            response = await client.append(message, mailbox=encode_mailbox(mailbox), flags=flag_list)
            if response.result != "OK":
                await client.create(encode_mailbox(mailbox))
                response = await client.append(message, mailbox=encode_mailbox(mailbox), flags=flag_list)
            if response.result != "OK":
                raise Unavailable(f"IMAP APPEND to {mailbox} failed")
            for line in response.lines:
                match = _APPENDUID.search(bytes(line) if not isinstance(line, str) else line.encode())
                if match is not None:
                    return EmailRef(account, mailbox, int(match.group(1)), int(match.group(2)))
            return None


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
