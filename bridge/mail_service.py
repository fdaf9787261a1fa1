"""Mail operations a client may ask for, shared by the REST API and the Socket.IO actions.

Reads come from the metadata index (listings, counts, search) or, for one message's body, from
IMAP through the master user, parsed and cached in Redis. Changes go to Dovecot over IMAP (flags,
move, delete, append) or to Postfix's submission port (send), never to the index directly: the
Dovecot hook's events bring the index and every device up to date, whoever made the change.
Every operation is scoped to an account the caller's token grants (`owned_account`, `owned_ref`:
the checks every edge makes); another user's email id is answered exactly like a missing one.

Sends and drafts may attach staged uploads (bridge.uploads), resolved here for the account before
compose.build sees them. A draft save may replace an earlier draft (autosave): the new one is
appended first and only then the old one removed for good, so a failure in between leaves two
drafts, never none. A send may name the draft it came from, removed once the mail is out.
Contacts (address completion) come from the index: senders of the account's mail and recipients
of what it sent, newest first, over a bounded number of documents.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, replace
from email.utils import getaddresses
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import compose, redis_keys
from bridge.auth import Identity
from bridge.browser_events import BrowserEvent, EmailRef, email_id, iso_time, parse_email_id
from bridge.errors import Forbidden, InvalidInput, NotFound, RateLimited, Unavailable
from bridge.folders import Folders
from bridge.imap import ImapGateway
from bridge.imap_syntax import MailboxInfo
from bridge.index_cache import IndexCache
from bridge.mail_headers import decode_text
from bridge.mailbox_order import mailbox_name, ordered_mailboxes
from bridge.message_parse import extract_part, parse_message
from bridge.metrics import Metrics
from bridge.rate_limit import RateLimiter
from bridge.search_query import SearchQuery
from bridge.store import MailboxCounts, Store
from bridge.submission import Submission
from bridge.uploads import StagedUpload, Uploads

log = logging.getLogger(__name__)

BODY_CACHE_TTL_S = 3600
MAX_PAGE = 200
DRAFTS = "Drafts"
SENT = "Sent"
MAX_CONTACTS = 50
MAX_CONTACT_QUERY = 100
# Contacts read at most this many index documents per source (senders; Sent recipients), newest
# first: the answer costs the same however much mail the account has.
CONTACT_SCAN = 2000
# Senders of mail in these are not people the user corresponds with.
_NOT_CORRESPONDENTS = ("Sent", "Drafts", "Junk", "Spam")


def owned_account(identity: Identity, account: object) -> str:
    """The account to act on: the one asked for if the token grants it, else the token's first."""
    if account is None or account == "":
        return identity.accounts[0]
    if not isinstance(account, str):
        # Not silently the first account: a client that names an account means that one.
        raise InvalidInput("account must be an address")
    for granted in identity.accounts:
        if granted.lower() == account.lower():
            return granted
    raise Forbidden("this token does not grant that account")


def owned_ref(identity: Identity, value: object) -> EmailRef:
    """The message an email id (as a client sent it) names, if it belongs to an account the token
    grants, with that account spelled as granted; else NotFound, exactly as for a missing message
    (InvalidInput for something that is no email id). The one ownership check of every action that
    names a message: the REST API's, and the Socket.IO actions'."""
    ref = parse_email_id(value)
    for granted in identity.accounts:
        if granted.lower() == ref.account.lower():
            return replace(ref, account=granted)
    raise NotFound("no such email")  # someone else's id looks exactly like a missing one


def draft_ref(identity: Identity, account: str, value: object, name: str) -> EmailRef:
    """An email id naming a draft of `account`: in its Drafts mailbox, else InvalidInput."""
    ref = owned_ref(identity, value)
    if ref.account.lower() != account.lower() or ref.mailbox != DRAFTS:
        raise InvalidInput(f"{name} must be the id of a draft of this account (in {DRAFTS})")
    return replace(ref, account=account)


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """An index document as the web client's list item (the fields of `new_email`)."""
    from_name, from_address = doc.get("fromName", ""), doc.get("fromAddress", "")
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
        "timestamp": iso_time(doc.get("date"), milliseconds=False),
        "arrived": iso_time(doc.get("arrived", doc.get("date")), milliseconds=False),
        "flags": list(doc.get("flags", [])) + list(doc.get("keywords", [])),
        "unread": not doc.get("seen", False),
        "hasAttachments": bool(doc.get("hasAttachments")),
        "size": int(doc.get("size") or 0),
        "category": doc.get("category", "primary"),
    }


class MailService:
    def __init__(
        self,
        imap: ImapGateway,
        store: Store,
        redis: aioredis.Redis,
        submission: Submission,
        counts: IndexCache,
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
        self.uploads = Uploads(redis, prefix)
        self.counts = counts
        self.folders = Folders(imap)

    # -- reads

    async def mailboxes(self, account: str) -> list[dict[str, Any]]:
        boxes: list[MailboxInfo] = await self.imap.list_mailboxes(account)
        out = []
        for box in boxes:
            counts = MailboxCounts(account, box.name, 0, 0)
            if box.selectable:
                counts = await self.counts.counts(account, box.name)
            out.append(
                {
                    "name": box.name,
                    "delimiter": box.delimiter,
                    "specialUse": box.special_use,
                    "selectable": box.selectable,
                    "unread": counts.unread,
                    "total": counts.total,
                    "countsVersion": counts.version,
                }
            )
        # The special-use folders always there and first, in one order (bridge.mailbox_order).
        return ordered_mailboxes(out, boxes[0].delimiter if boxes else "/")

    async def listing(
        self,
        account: str,
        mailbox: str,
        *,
        limit: int,
        cursor: str | None,
        filters: list[str],
        search: SearchQuery | None = None,
    ) -> dict[str, Any]:
        """A page of the mailbox (or, with a search, of what it selects in the account), newest
        first, from where `cursor` (the previous page's `nextCursor`) left off; `filters` are
        quick filters by name (bridge.store_reads.FILTERS)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        # From the mailbox's order in Redis, without a scan of the store (bridge.listing_order): the
        # plain listing, and searches with a text term. Quick filters and the other searches: the store.
        order = self.counts.order
        if filters:
            ordered = None
        elif search is None or not search.terms:
            ordered = await order.listing(account, mailbox, limit, cursor)
        else:
            ordered = await order.search(account, mailbox, search, limit, cursor)
        emails, next_cursor = ordered or await self.store.listing(
            account, mailbox, limit=limit, cursor=cursor, filters=filters, search=search
        )
        return {"emails": [summary(d) for d in emails], "nextCursor": next_cursor}

    async def message(self, ref: EmailRef, *, remote_images: bool = False) -> dict[str, Any]:
        """One message for display; with `remote_images`, its HTML keeps remote image sources (the
        reader asked for them). The two variants are cached apart."""
        key = redis_keys.body_cache(self.prefix, email_id(ref), remote_images=remote_images)
        try:
            cached = await self.redis.get(key)
        except RedisError:
            cached = None
        if isinstance(cached, bytes):
            data: dict[str, Any] = msgpack.unpackb(cached, raw=False)
            return data
        raw = await self.imap.fetch_raw(ref)
        parsed = parse_message(raw, allow_remote_images=remote_images)
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

    async def contacts(self, account: str, query: str, limit: int) -> list[dict[str, str]]:
        """Past correspondents of `account` whose address, or a word of whose name, starts with
        `query` (case-insensitive), newest first, each address once, never the account itself."""
        if len(query) > MAX_CONTACT_QUERY:
            raise InvalidInput(f"q must be at most {MAX_CONTACT_QUERY} characters")
        if not 1 <= limit <= MAX_CONTACTS:
            raise InvalidInput(f"limit must be between 1 and {MAX_CONTACTS}")
        needle = query.strip().lower()
        # The store narrows senders by the same test (so its bound counts matches, not mail); the
        # exact test is repeated below. Sent's To is the raw header (maybe RFC 2047): tested below only.
        received = await self.store.senders(account, needle, skip=_NOT_CORRESPONDENTS, limit=CONTACT_SCAN)
        sent = await self.store.recipients(account, SENT, limit=CONTACT_SCAN)
        candidates = list(received)
        for date, to in sent:
            # Split the header first: a decoded display name may hold a comma.
            candidates.extend((date, decode_text(name), address) for name, address in getaddresses([to]))
        candidates.sort(key=lambda c: c[0], reverse=True)  # stable: a mail's recipients keep their order
        word = re.compile(rf"(^|\s){re.escape(needle)}", re.IGNORECASE)
        found: dict[str, dict[str, str]] = {}
        for _date, name, address in candidates:
            key = address.lower()
            if "@" not in key or key == account.lower():
                continue
            if key in found:
                if not found[key]["name"] and name:
                    found[key]["name"] = name  # the newest mail had no display name; an older one has
                continue
            if len(found) >= limit:
                continue
            if needle and not (key.startswith(needle) or word.search(name)):
                continue
            found[key] = {"name": name, "address": address}
        return list(found.values())

    # -- changes (Dovecot's events report them back to every device and the index)

    async def set_flags(self, ref: EmailRef, add: Sequence[str] = (), remove: Sequence[str] = ()) -> None:
        """Add, then remove, flags or keywords of a message (`ref` from owned_ref), over IMAP: the
        hook's flags.set/flags.clear events then bring the index and every device up to date. The
        REST API's flag changes, and the Socket.IO actions' (mark_read is `add=["\\Seen"]` or
        `remove=["\\Seen"]`), go through here."""
        if add:
            await self.imap.store_flags(ref, tuple(add), add=True)
        if remove:
            await self.imap.store_flags(ref, tuple(remove), add=False)

    async def move(self, ref: EmailRef, mailbox: object, *, create: bool = False) -> dict[str, Any]:
        mailbox = mailbox_name(mailbox)
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

    async def delete(self, ref: EmailRef) -> dict[str, Any] | None:
        """Into Trash, saying where it went (as `move` does: what an undo moves back); from Trash
        itself, for good (\\Deleted, then MOVE's sibling: UID EXPUNGE), and None."""
        if ref.mailbox.lower() == "trash":
            await self.imap.store_flags(ref, ("\\Deleted",), add=True)
            await self.imap.expunge_uid(ref)
            return None
        return await self.move(ref, "Trash", create=True)

    @staticmethod
    def check_upload(filename: object, content_type: object) -> None:
        """Refuse a file name or content type that compose would refuse (before reading the file)."""
        compose.check_filename(filename)
        compose.check_content_type(content_type)

    async def stage_upload(self, account: str, filename: object, content_type: object, data: bytes) -> StagedUpload:
        """Keep a file for later sends and drafts of `account` (bridge.uploads)."""
        attachment = compose.Attachment(
            compose.check_filename(filename), compose.check_content_type(content_type), data
        )
        return await self.uploads.stage(account, attachment)

    async def _compose(
        self, identity: Identity, account: str, data: object, *, draft: bool
    ) -> tuple[compose.Outgoing, tuple[str, ...]]:
        """The message, with its staged uploads read from Redis for this account and the attachments
        it forwards read over IMAP (only from mail the caller may read); and the uploads' ids."""
        ids = compose.upload_ids(data)
        resolved = await self.uploads.resolve(account, ids) if ids else {}
        forwarded: dict[tuple[str, str], compose.Attachment] = {}
        raw_of: dict[str, bytes] = {}
        for email, part in compose.forwarded_parts(data):
            if email not in raw_of:
                raw_of[email] = await self.imap.fetch_raw(owned_ref(identity, email))
            found = extract_part(raw_of[email], part)
            if found is not None:
                filename, content_type, payload = found
                forwarded[(email, part)] = compose.Attachment(filename, content_type, payload)
        return compose.build(account, data, draft=draft, uploads=resolved, forwarded=forwarded), ids

    async def send(self, identity: Identity, account: str, data: object) -> dict[str, Any]:
        draft_id = data.get("draftId") if isinstance(data, dict) else None
        # Checked before anything is sent: only a draft of this account may be removed afterwards.
        draft = draft_ref(identity, account, draft_id, "draftId") if draft_id is not None else None
        outgoing, upload_ids = await self._compose(identity, account, data, draft=False)
        # Counted once the message is one Postfix will be handed: a refused, malformed send costs
        # the account nothing of its sending allowance.
        if not self.send_limit.allow(account):
            limit = self.send_limit
            raise RateLimited(
                f"sending too fast: at most {limit.rate * 60:g} messages a minute, {limit.burst} at once",
                limit.retry_after(account),
            )
        try:
            await self.submission.send(account, outgoing)
        except (InvalidInput, Unavailable):
            self.metrics.sends.labels("refused").inc()
            raise
        self.metrics.sends.labels("sent").inc()
        saved = True
        try:
            await self.imap.append(account, SENT, outgoing.message, ("\\Seen",))
        except Unavailable as exc:
            # The mail went out; only the copy is missing. Say so rather than fail the send.
            log.error("[%s] sent, but no copy in Sent: %s", outgoing.message_id, exc)
            saved = False
        # The mail is out: its staged uploads and its draft have served their purpose.
        await self.uploads.discard(account, upload_ids)
        if draft is not None:
            await self._remove_draft(draft, outgoing.message_id)
        return {"success": True, "messageId": outgoing.message_id, "savedToSent": saved}

    async def save_draft(self, identity: Identity, account: str, data: object) -> dict[str, Any]:
        """APPEND to Drafts; with `replaces`, then remove that earlier draft (autosave)."""
        replaces = data.get("replaces") if isinstance(data, dict) else None
        old = draft_ref(identity, account, replaces, "replaces") if replaces is not None else None
        outgoing, _upload_ids = await self._compose(identity, account, data, draft=True)
        new = await self.imap.append(account, DRAFTS, outgoing.message, ("\\Draft", "\\Seen"))
        if old is not None:
            await self._remove_draft(old, outgoing.message_id)
        return {
            "saved": True,
            "messageId": outgoing.message_id,
            "emailId": email_id(new) if new is not None else None,
        }

    async def _remove_draft(self, ref: EmailRef, message_id: str) -> None:
        """Remove a draft for good, as delete does in Trash. Never raises: what it is called after
        (a send, a newer draft) has already happened and must be reported as done."""
        try:
            await self.imap.store_flags(ref, ("\\Deleted",), add=True)
            await self.imap.expunge_uid(ref)
        except NotFound:
            # Already gone: another device's autosave or send removed it first.
            log.info("[%s] draft %s/%s was already gone", message_id, ref.mailbox, ref.uid)
        except (Unavailable, InvalidInput) as exc:
            log.warning("[%s] draft %s/%s not removed: %s", message_id, ref.mailbox, ref.uid, exc)
