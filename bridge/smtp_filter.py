"""SMTP edge: the Postfix after-queue content filter (Postfix FILTER_README, "Advanced").

Postfix hands every accepted mail to this aiosmtpd server; we re-inject it unchanged into the
re-injection smtpd (aiosmtplib, same event loop) and answer 250 only once Postfix took it back.
Any failure answers 451 4.3.0, so Postfix keeps the mail queued and retries: a mail is never lost
or bounced because of the bridge. The `mta.accepted` event is published just before the
re-injection (so it is in its stream before Dovecot can deliver the copy), once per attempt with
the same key, and publication never holds the mail (Redis down: the event goes to the spool).
Postfix re-sends a message whose 250 it never saw (FILTER_README: expect duplicates). Two layers
keep that from delivering it twice: a re-injected (queue id, recipients) pair is remembered in
Redis as soon as Postfix took it back, and a retry of it is answered 250 without re-injection;
for the instant before that record, each re-injection is stamped `X-Mail-Bridge-Id`, and Dovecot's
dedupe Sieve script (dovecot-conf/92-mail-bridge-dedupe.conf) discards a second copy. The event key
(`postfix:<queue id>:<recipients hash>:<content digest>`) lets consumers drop a duplicate event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from typing import Any

import aiosmtplib
import redis.asyncio as aioredis
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.exceptions import RedisError

from bridge import redis_keys
from bridge.events import Direction, MtaAccepted, StreamNames
from bridge.mail_headers import parse_headers, summarize
from bridge.mime_summary import summarize_mime
from bridge.reinject_pool import ReinjectPool
from bridge.streams import Publisher

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary content filter failure, try again later"
REINJECT_TIMEOUT_S = 60.0
DONE_TIMEOUT_S = 0.2
EHLO_NAME = "mail-bridge-filter"
DONE_TTL_S = 7 * 86400  # longer than Postfix's maximal_queue_lifetime (5 days by default)


def recipients_hash(rcpt_tos: list[str]) -> str:
    # Postfix may split one queue file's recipients over several filter deliveries: each is distinct.
    return hashlib.sha256("\0".join(sorted(rcpt_tos)).encode("utf-8", "surrogateescape")).hexdigest()[:12]


# The header block is searched for a forged stamp within this many bytes (Postfix's default
# header_size_limit is 100 KiB; the parser's own bound is 256 KiB).
MAX_STAMP_SCAN = 256 << 10


def envelope_only_event(envelope: Envelope, content: bytes) -> MtaAccepted:
    """What can be said of a mail whose headers defeated the parser: the envelope."""
    digest = hashlib.sha256(content[:65536]).hexdigest()[:32]
    return MtaAccepted(
        key=f"postfix:sha256:{digest}:{recipients_hash(envelope.rcpt_tos)}",
        ts=time.time_ns() // 1_000_000,
        queue_id="",
        direction=Direction.INBOUND,
        mail_from=envelope.mail_from or "",
        rcpt_to=tuple(envelope.rcpt_tos),
        size=len(content),
        truncated=True,
    )


def build_event(envelope: Envelope, content: bytes) -> MtaAccepted:
    parsed = parse_headers(content)
    summary = summarize(parsed)
    mime = summarize_mime(content, parsed.headers, parsed.body_start)
    origin = summary.queue_id or f"sha256:{summary.fingerprint}"
    # The content's digest too: Postfix reuses a short queue id once its file is gone (seen in the
    # benchmark: one id for two mails to one user 8 s apart), and the second mail must not pass for
    # a retry of the first. A retry after a lost reply re-sends the same queue file: same digest.
    digest = hashlib.blake2b(content, digest_size=8).hexdigest()
    key = f"postfix:{origin}:{recipients_hash(envelope.rcpt_tos)}:{digest}"
    return MtaAccepted(
        key=key,
        ts=time.time_ns() // 1_000_000,
        queue_id=summary.queue_id,
        direction=summary.direction,
        mail_from=envelope.mail_from or "",
        rcpt_to=tuple(envelope.rcpt_tos),
        size=len(content),
        message_id=summary.message_id,
        subject=summary.subject,
        from_=summary.from_,
        date=summary.date,
        sasl_user=summary.sasl_user,
        attachments=mime.attachments,
        authentication_results=summary.authentication_results,
        truncated=summary.truncated or mime.truncated,
        category=summary.category,
    )


STAMP_HEADER = b"x-mail-bridge-id"


def _without_stamps(content: bytes) -> bytes:
    """The message without any X-Mail-Bridge-Id header of its own (a sender's forgery, or a copy
    that passed another mail-bridge): only the filter's stamp may name a mail to the dedupe script.
    Header fields end at the first empty line (RFC 5322 2.1); a field continues on lines that start
    with white space (2.2.3)."""
    lines = content.splitlines(keepends=True)
    kept: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            return b"".join(kept) + b"".join(lines[index:])
        if dropping and line[:1] in (b" ", b"\t"):
            continue
        dropping = line[: len(STAMP_HEADER) + 1].lower() == STAMP_HEADER + b":"
        if not dropping:
            kept.append(line)
    return b"".join(kept)


_RECEIVED = re.compile(rb"^Received:.*?(?=^\S|\Z)", re.IGNORECASE | re.MULTILINE | re.DOTALL)
# With the folding line break before it (Postfix writes the comment on a line of its own): taking
# the comment alone would leave an empty line, the end of the header section (RFC 5322 2.1).
_SASL_COMMENT = re.compile(rb"(?:\r?\n)?[ \t]*\(Authenticated sender:[^)]*\)")


def without_sasl_login(content: bytes) -> bytes:
    """The message with Postfix's `(Authenticated sender: <login>)` taken out of its topmost
    Received: field. Postfix writes it there (smtpd_sasl_authenticated_header, postconf(5)) so this
    filter can tell whose outbound mail it is; it must not travel on and show every recipient the
    sender's login. Only the topmost field (the smtpd that queued the mail) is Postfix's own."""
    head, blank, body = content.partition(b"\r\n\r\n" if b"\r\n\r\n" in content[:MAX_STAMP_SCAN] else b"\n\n")
    received = _RECEIVED.search(head)
    if received is None or b"(Authenticated sender:" not in received.group(0):
        return content
    field = _SASL_COMMENT.sub(b"", received.group(0), count=1)
    return head[: received.start()] + field + head[received.end() :] + blank + body


def stamped(content: bytes, key: str) -> bytes:
    """The message with X-Mail-Bridge-Id: <key> prepended, any other copy of that header removed.

    Dovecot's dedupe Sieve script (dovecot-conf/92-mail-bridge-dedupe.conf) discards a second
    delivery of the same id: what Postfix re-sends after a lost reply is delivered once. Every mail
    is stamped (a mail whose headers defeated the parser with its envelope's key), so a header a
    sender wrote can never be the one the script reads and have another mail discarded.
    """
    if STAMP_HEADER in content[:MAX_STAMP_SCAN].lower():
        content = _without_stamps(content)
    newline = b"\r\n" if b"\r\n" in content[:1000] else b"\n"
    return b"X-Mail-Bridge-Id: " + key.encode("ascii", "replace") + newline + content


class FilterHandler:
    def __init__(
        self,
        publisher: Publisher,
        redis: aioredis.Redis,
        streams: StreamNames,
        reinject_host: str,
        reinject_port: int,
    ) -> None:
        self.publisher = publisher
        self.redis = redis
        self.streams = streams
        self.pool = ReinjectPool(reinject_host, reinject_port, ehlo_name=EHLO_NAME, timeout_s=REINJECT_TIMEOUT_S)

    def _done_key(self, event: MtaAccepted) -> str:
        return redis_keys.filter_done(self.streams.prefix, event.key)

    async def _already_reinjected(self, event: MtaAccepted | None) -> bool:
        if event is None or not event.queue_id:
            return False
        try:
            return bool(await asyncio.wait_for(self.redis.exists(self._done_key(event)), DONE_TIMEOUT_S))
        except (RedisError, OSError, TimeoutError):
            return False  # cannot tell: re-inject (a possible duplicate beats a possible loss)

    async def _remember(self, event: MtaAccepted | None) -> None:
        if event is None or not event.queue_id:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.redis.set(self._done_key(event), b"1", ex=DONE_TTL_S), DONE_TIMEOUT_S)

    async def reinject(self, envelope: Envelope, content: bytes, event: MtaAccepted | None) -> None:
        # RFC 5321 null reverse-path: aiosmtpd gives "" (or "<>"), aiosmtplib needs "<>" sent as such.
        sender = envelope.mail_from if envelope.mail_from not in (None, "", "<>") else "<>"
        mail_options = [o for o in envelope.mail_options if not o.upper().startswith("SIZE=")]
        client = await self.pool.acquire()
        clean = False
        try:
            errors, _reply = await client.sendmail(
                sender, envelope.rcpt_tos, content, mail_options=mail_options, rcpt_options=envelope.rcpt_options
            )
            if errors:
                # Partial acceptance would split the message; let Postfix retry it whole.
                raise aiosmtplib.SMTPRecipientsRefused(
                    [aiosmtplib.SMTPRecipientRefused(code, msg, rcpt) for rcpt, (code, msg) in errors.items()]
                )
            clean = True
        finally:
            await self.pool.release(client, clean=clean)
        # Postfix owns the mail from its 250 on: record that now, so a crash from here on cannot
        # lead to a second re-injection.
        await self._remember(event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        if not isinstance(content, bytes):  # aiosmtpd's decoded text (decode_data), or nothing
            content = (content or "").encode("utf-8", "surrogateescape")
        event: MtaAccepted | None
        try:
            event = build_event(envelope, content)
        except Exception:  # a parser bug must cost the event its details, never the mail
            log.exception("[peer %s] header summary failed; publishing the envelope only", session.peer)
            try:
                event = envelope_only_event(envelope, content)
            except Exception:
                log.exception("[peer %s] no event for this mail", session.peer)
                event = None
        tag = event.queue_id if event is not None and event.queue_id else f"peer {session.peer}"
        if event is not None:
            # Published before the re-injection: once Postfix has the copy back it may deliver it
            # (LMTP, then Dovecot's hook) before a publish made after, and the relay would show the
            # new mail without this summary (seen under load). Postfix already holds the mail (an
            # after-queue filter), and a retry after a failed re-injection publishes the same key.
            # An OSError here is logged as LOST by the publisher; the mail itself is delivered.
            with contextlib.suppress(OSError):
                await self.publisher.publish(self.streams.postfix, event)
        already = await self._already_reinjected(event)
        if already:
            log.info("[%s] already re-injected before a lost reply; acknowledging the retry", tag)
        else:
            try:
                key = event.key if event is not None else envelope_only_event(envelope, content).key
                await self.reinject(envelope, stamped(without_sasl_login(content), key), event)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                log.warning("[%s] re-injection failed, deferring: %s", tag, exc)
                return TEMPFAIL
        if already:
            return "250 2.0.0 Ok: already filtered"
        log.info("[%s] filtered %d bytes for %d recipient(s)", tag, len(content), len(envelope.rcpt_tos))
        return "250 2.0.0 Ok: filtered and re-injected"

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd answers an unexpected exception with a permanent 500; Postfix would bounce.
        log.error("content filter error, deferring: %r", error)
        return TEMPFAIL


class FilterServer:
    """The listening socket of the filter, opened and closed by the app's cleanup context."""

    def __init__(self, handler: FilterHandler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None

    def _protocol(self) -> Any:
        return SMTP(
            self.handler,
            hostname=EHLO_NAME,
            data_size_limit=0,  # Postfix's message_size_limit already applies; refusing here would defer forever
            enable_SMTPUTF8=True,
            decode_data=False,
            ident="mail-bridge content filter",
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.host, self.port, reuse_address=True)
        log.info("content filter listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.handler.pool.close()
