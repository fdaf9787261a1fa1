"""Socket.IO client actions: what a connected browser may ask of the bridge (join_email, typing,
mark_read, send_email), each answered through the Socket.IO acknowledgement: `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`.

Every action is counted against the socket's allowance (`action_limit`) and checked against the
accounts its token grants; an event no handler takes gets an error ack too, rather than leave the
client waiting for one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from bridge.auth import Identity
from bridge.errors import BridgeError, Forbidden, InvalidInput, RateLimited
from bridge.fanout import account_room
from bridge.fanout_publish import FanoutPublisher, Outgoing
from bridge.imap import ImapGateway
from bridge.mail_service import MailService, owned_account, owned_ref
from bridge.rate_limit import RateLimiter
from bridge.realtime import Ack

log = logging.getLogger(__name__)


class SocketActions:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        identity: Callable[[str], Awaitable[Identity]],
        publisher: FanoutPublisher,
        imap: ImapGateway,
        mail: MailService,
    ) -> None:
        """Registers the actions on `sio`; `identity` gives a connected socket's (bridge.realtime)."""
        self.sio = sio
        self.identity = identity
        self.publisher = publisher
        self.imap = imap
        self.mail = mail
        self.typing_limit = RateLimiter(2.0, 5)
        self.action_limit = RateLimiter(10.0, 30)
        self._action("join_email", self._join_email)
        self._action("typing", self._typing)
        self._action("mark_read", self._mark_read)
        self._action("send_email", self._send_email)
        sio.on("*", self._unknown_event)

    def _action(self, name: str, handler: Callable[[str, Identity, Any], Awaitable[Ack]]) -> None:
        # *args: an event with two arguments or more raised TypeError before this code ran, and the
        # client waited for an acknowledgement that never came.
        async def wrapped(sid: str, *args: Any) -> Ack:
            try:
                identity = await self.identity(sid)
                if not self.action_limit.allow(sid):
                    raise RateLimited("too many requests", self.action_limit.retry_after(sid))
                if len(args) > 1:
                    raise InvalidInput(f"{name} takes one argument, got {len(args)}")
                return await handler(sid, identity, args[0] if args else None)
            except RateLimited as exc:
                return {"ok": False, "error": str(exc), "retryAfter": round(exc.retry_after_s, 2)}
            except BridgeError as exc:
                log.info("[sid %s] %s refused: %s", sid, name, exc)
                return {"ok": False, "error": str(exc)}
            except Exception:
                log.exception("[sid %s] %s failed", sid, name)
                return {"ok": False, "error": "internal error"}

        self.sio.on(name, wrapped)

    async def _unknown_event(self, event: str, sid: str, *_args: Any) -> Ack:
        """Any event no handler takes: an error ack (python-socketio would leave the client waiting
        for one), counted against the socket's action allowance like any other."""
        if not self.action_limit.allow(sid):
            return {
                "ok": False,
                "error": "too many requests",
                "retryAfter": round(self.action_limit.retry_after(sid), 2),
            }
        log.info("[sid %s] unknown event %r", sid, event[:64])
        return {"ok": False, "error": f"unknown event {event[:64]!r}"}

    async def _join_email(self, sid: str, identity: Identity, data: Any) -> Ack:
        address = data.get("address") if isinstance(data, dict) else data
        if not isinstance(address, str) or len(address) > 320:
            raise InvalidInput("join_email takes an address")
        granted = [a for a in identity.accounts if a.lower() == address.lower()]
        if not granted:
            raise Forbidden("this token does not grant that address")
        await self.sio.enter_room(sid, account_room(granted[0]))
        return {"ok": True, "address": granted[0]}

    async def _typing(self, sid: str, identity: Identity, data: Any) -> Ack:
        if not isinstance(data, dict):
            raise InvalidInput("typing takes {emailId}")
        account = owned_ref(identity, data.get("emailId")).account
        if not self.typing_limit.allow(sid):
            raise RateLimited("typing too fast", self.typing_limit.retry_after(sid))
        # Only the sessions that can see this email: the account's room on every node, not this
        # socket itself. Ephemeral: through the fan-out, not into the resume log.
        payload = {"user": identity.subject, "emailId": data["emailId"], "typing": bool(data.get("typing", True))}
        await self.publisher.send([Outgoing(account, "user_typing", payload, skip=sid, logged=False)])
        return {"ok": True}

    async def _mark_read(self, sid: str, identity: Identity, data: Any) -> Ack:
        if not isinstance(data, dict):
            raise InvalidInput("mark_read takes {emailId, read?}")
        ref = owned_ref(identity, data.get("emailId"))
        read = data.get("read", True)
        if not isinstance(read, bool):
            raise InvalidInput("read must be true or false")
        # The same path as the REST API's flag changes.
        await self.mail.set_flags(ref, add=["\\Seen"] if read else [], remove=[] if read else ["\\Seen"])
        log.info("[sid %s] marked %s/%s %s", sid, ref.mailbox, ref.uid, "read" if read else "unread")
        return {"ok": True}

    async def _send_email(self, sid: str, identity: Identity, data: Any) -> Ack:
        account = owned_account(identity, data.get("account") if isinstance(data, dict) else None)
        result = await self.mail.send(identity, account, data)
        return {"ok": True, **result}
