"""Mail operations a client may ask for, shared by the REST API and the Socket.IO actions.

Reads come from the metadata index (listings, counts, search) or, for one message's body, from
IMAP through the master user, parsed and cached in Redis. Changes go to Dovecot over IMAP (flags,
move, delete, append) or to Postfix's submission port (send), never to the index directly: the
Dovecot hook's events bring the index and every device up to date, whoever made the change.
Every operation is scoped to an account the caller's token grants; another user's email id is
answered exactly like a missing one.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import compose
from bridge.auth import Identity
from bridge.browser_events import BrowserEvent, EmailRef, email_id, parse_email_id
from bridge.errors import Forbidden, InvalidInput, NotFound, RateLimited, Unavailable
from bridge.imap import ImapGateway, MailboxInfo
from bridge.message_parse import extract_part, parse_message
from bridge.metrics import Metrics
from bridge.rate_limit import RateLimiter
from bridge.store import Store
from bridge.submission import Submission

log = logging.getLogger(__name__)

BODY_CACHE_TTL_S = 3600
MAX_PAGE = 200
FILTERS: dict[str, dict[str, Any]] = {
    "unread": {"seen": False},
    "starred": {"flags": "\\Flagged"},
    "attachments": {"hasAttachments": True},
    "primary": {"category": {"$nin": ["social", "promotions"]}},
    "social": {"category": "social"},
    "promotions": {"category": "promotions"},
}


def owned_account(identity: Identity, account: str | None) -> str:
    """The account to act on: the one asked for if the token grants it, else the token's first."""
    if account is None or account == "":
        return identity.accounts[0]
    for granted in identity.accounts:
        if granted.lower() == account.lower():
            return granted
    raise Forbidden("this token does not grant that account")


def owned_ref(identity: Identity, value: object) -> EmailRef:
    ref = parse_email_id(value)
    for granted in identity.accounts:
        if granted.lower() == ref.account.lower():
            return replace(ref, account=granted)
    raise NotFound("no such email")  # someone else's id looks exactly like a missing one


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """An index document as the web client's list item (the fields of `new_email`)."""
    from_name, from_address = doc.get("fromName", ""), doc.get("fromAddress", "")
    date = doc.get("date") or 0
    return {
        "id": email_id(EmailRef(doc["account"], doc["mailbox"], doc["uidvalidity"], doc["uid"])),
        "account": doc["account"],
        "mailbox": doc["mailbox"],
        "uid": doc["uid"],
        "from": f"{from_name} <{from_address}>" if from_name and from_address else from_address or doc.get("from", ""),
        "fromAddress": from_address,
        "fromName": from_name,
        "to": doc.get("toAddress") or doc.get("to", ""),
        "subject": doc.get("subject", ""),
        "preview": doc.get("snippet", ""),
        "messageId": doc.get("messageId", ""),
        "timestamp": _iso(date),
        "flags": list(doc.get("flags", [])) + list(doc.get("keywords", [])),
        "unread": not doc.get("seen", False),
        "hasAttachments": bool(doc.get("hasAttachments")),
        "size": int(doc.get("size") or 0),
        "category": doc.get("category", "primary"),
    }


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def encode_cursor(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([doc.get("date") or 0, doc["uid"]]).encode()).decode()


def decode_cursor(value: str) -> tuple[int, int]:
    try:
        date, uid = json.loads(base64.urlsafe_b64decode(value.encode()))
        if not (isinstance(date, int) and isinstance(uid, int)):
            raise TypeError
    except (ValueError, TypeError):
        raise InvalidInput("invalid cursor") from None
    return date, uid


class MailService:
    def __init__(
        self,
        imap: ImapGateway,
        store: Store,
        redis: aioredis.Redis,
        submission: Submission,
        *,
        prefix: str,
        metrics: Metrics,
        send_limit: RateLimiter,
        publish: Callable[[BrowserEvent], Awaitable[str]],
    ) -> None:
        self.metrics = metrics
        self.publish = publish
        self.imap = imap
        self.store = store
        self.redis = redis
        self.submission = submission
        self.prefix = prefix
        self.send_limit = send_limit

    # -- reads

    async def mailboxes(self, account: str) -> list[dict[str, Any]]:
        boxes: list[MailboxInfo] = await self.imap.list_mailboxes(account)
        out = []
        for box in boxes:
            unread, total = await self.store.counts(account, box.name) if box.selectable else (0, 0)
            out.append(
                {
                    "name": box.name,
                    "delimiter": box.delimiter,
                    "specialUse": box.special_use,
                    "selectable": box.selectable,
                    "unread": unread,
                    "total": total,
                }
            )
        return out

    async def listing(
        self,
        account: str,
        mailbox: str,
        *,
        limit: int,
        cursor: str | None,
        filters: list[str],
        search: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A page of the mailbox (or, with a search filter, of what it selects), newest first."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        # A search filter is scoped to the account (and mailbox, unless it names one with in:).
        match: dict[str, Any] = {"$and": [{"account": account}, search]} if search else {"account": account}
        if not search:
            match["mailbox"] = mailbox
        for name in filters:
            if name not in FILTERS:
                raise InvalidInput(f"unknown filter {name!r} (known: {', '.join(FILTERS)})")
            match.update(FILTERS[name])
        if cursor:
            date, uid = decode_cursor(cursor)
            match = {"$and": [match, {"$or": [{"date": {"$lt": date}}, {"date": date, "uid": {"$lt": uid}}]}]}
        try:
            docs = await self.store.messages.find(match).sort([("date", -1), ("uid", -1)]).limit(limit + 1).to_list()
        except Exception as exc:  # pymongo errors: the store is down
            raise Unavailable(f"store: {exc}") from None
        page = docs[:limit]
        return {
            "emails": [summary(d) for d in page],
            "nextCursor": encode_cursor(page[-1]) if len(docs) > limit else None,
        }

    async def message(self, ref: EmailRef) -> dict[str, Any]:
        key = f"{self.prefix}:body:{email_id(ref)}"
        try:
            cached = await self.redis.get(key)
        except RedisError:
            cached = None
        if isinstance(cached, bytes):
            data: dict[str, Any] = msgpack.unpackb(cached, raw=False)
            return data
        raw = await self.imap.fetch_raw(ref)
        parsed = parse_message(raw)
        data = {
            "id": email_id(ref),
            "account": ref.account,
            "mailbox": ref.mailbox,
            "uid": ref.uid,
            "subject": parsed.subject,
            "from": parsed.from_,
            "to": list(parsed.to),
            "cc": list(parsed.cc),
            "date": parsed.date,
            "messageId": parsed.message_id,
            "inReplyTo": parsed.in_reply_to,
            "references": list(parsed.references),
            "text": parsed.text,
            "html": parsed.html,
            "blockedRemoteImages": parsed.blocked_remote_images,
            "attachments": [
                {**asdict(a), "url": f"/api/v1/email/{email_id(ref)}/attachments/{a.part_id}"}
                for a in parsed.attachments
            ],
        }
        try:
            await self.redis.set(key, msgpack.packb(data), ex=BODY_CACHE_TTL_S)
        except RedisError as exc:
            log.warning("[%s] body not cached: %s", key, exc)
        return data

    async def attachment(self, ref: EmailRef, part_id: str) -> tuple[str, str, bytes]:
        found: tuple[str, str, bytes] | None = extract_part(await self.imap.fetch_raw(ref), part_id)
        if found is None:
            raise NotFound("no such attachment")
        return found

    # -- changes (Dovecot's events report them back to every device and the index)

    async def set_flags(self, ref: EmailRef, add: list[str], remove: list[str]) -> None:
        if add:
            await self.imap.store_flags(ref, tuple(add), add=True)
        if remove:
            await self.imap.store_flags(ref, tuple(remove), add=False)

    async def move(self, ref: EmailRef, mailbox: object, *, create: bool = False) -> dict[str, Any]:
        if not isinstance(mailbox, str) or not mailbox or len(mailbox) > 1024 or "\r" in mailbox or "\n" in mailbox:
            raise InvalidInput("mailbox must be a mailbox name")
        if create:
            await self.imap.ensure_mailbox(ref.account, mailbox)
        moved = await self.imap.move(ref, mailbox)
        payload = {
            "emailId": email_id(ref),
            "account": ref.account,
            "fromMailbox": ref.mailbox,
            "toMailbox": mailbox,
            "newEmailId": email_id(moved) if moved is not None else None,
        }
        # The hook reports the append and the expunge separately; this says they were one move.
        await self.publish(BrowserEvent("email_moved", ref.account, payload))
        return payload

    async def delete(self, ref: EmailRef) -> None:
        """Into Trash; from Trash itself, for good (\\Deleted, then MOVE's sibling: UID EXPUNGE)."""
        if ref.mailbox.lower() == "trash":
            await self.imap.store_flags(ref, ("\\Deleted",), add=True)
            await self.imap.expunge_uid(ref)
        else:
            await self.move(ref, "Trash", create=True)

    async def send(self, identity: Identity, account: str, data: object) -> dict[str, Any]:
        if not self.send_limit.allow(account):
            raise RateLimited("sending too fast", self.send_limit.retry_after(account))
        outgoing = compose.build(account, data)
        try:
            await self.submission.send(account, outgoing)
        except (InvalidInput, Unavailable):
            self.metrics.sends.labels("refused").inc()
            raise
        self.metrics.sends.labels("sent").inc()
        try:
            await self.imap.append(account, "Sent", outgoing.message, ("\\Seen",))
        except Unavailable as exc:
            # The mail went out; only the copy is missing. Say so rather than fail the send.
            log.error("[%s] sent, but no copy in Sent: %s", outgoing.message_id, exc)
            return {"success": True, "messageId": outgoing.message_id, "savedToSent": False}
        return {"success": True, "messageId": outgoing.message_id, "savedToSent": True}

    async def save_draft(self, account: str, data: object) -> dict[str, Any]:
        outgoing = compose.build(account, data, draft=True)
        await self.imap.append(account, "Drafts", outgoing.message, ("\\Draft", "\\Seen"))
        return {"saved": True, "messageId": outgoing.message_id}
