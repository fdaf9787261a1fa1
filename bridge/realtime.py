"""Socket.IO edge: authenticated sockets, one room per mail account, events relayed from the streams.

A socket must present a valid JWT (`auth.token`, or an `Authorization: Bearer` header) or its
connection is refused; it then joins the rooms of exactly the accounts its token grants.
Origins are checked against the configured allow-list during the handshake.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from bridge.auth import Identity, TokenIssuer
from bridge.browser_events import to_browser
from bridge.errors import AuthError
from bridge.events import Event

log = logging.getLogger(__name__)


def account_room(account: str) -> str:
    return f"account:{account.lower()}"


def _bearer(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if isinstance(header, str) and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


class Realtime:
    def __init__(self, issuer: TokenIssuer, cors_origins: tuple[str, ...]) -> None:
        self.issuer = issuer
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            # None keeps python-socketio's same-origin check; a list allows exactly those origins.
            cors_allowed_origins=list(cors_origins) if cors_origins else None,
            max_http_buffer_size=1 << 20,
            logger=False,
            engineio_logger=False,
        )
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)

    async def _connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        token = token or _bearer(environ)
        try:
            identity = self.issuer.verify(token)
        except AuthError as exc:
            log.info("[sid %s] connection refused: %s", sid, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        await self.sio.save_session(sid, {"identity": identity})
        for account in identity.accounts:
            await self.sio.enter_room(sid, account_room(account))
        log.info("[sid %s] connected as %s (%d account(s))", sid, identity.subject, len(identity.accounts))

    async def _disconnect(self, sid: str, reason: object = None) -> None:
        log.debug("[sid %s] disconnected (%s)", sid, reason)

    async def identity(self, sid: str) -> Identity:
        session = await self.sio.get_session(sid)
        identity = session.get("identity")
        assert isinstance(identity, Identity)
        return identity

    async def relay(self, stream: str, entry_id: str, event: Event) -> None:
        mapped = to_browser(event, entry_id)
        if mapped is None:
            return
        name, account, payload = mapped
        await self.sio.emit(name, payload, room=account_room(account))
        log.debug("[%s %s] %s emitted to %s", stream, entry_id, name, account)
