"""SMTP edge: the Postfix after-queue content filter (Postfix FILTER_README, "Advanced").

Postfix hands every accepted mail to this aiosmtpd server; we re-inject it unchanged into the
re-injection smtpd (aiosmtplib, same event loop) and answer 250 only once Postfix took it back.
Any failure answers 451 4.3.0, so Postfix keeps the mail queued and retries: a mail is never lost
or bounced because of the bridge. Only after re-injection is the `mta.accepted` event published,
and publication never holds the mail (Redis down: the event goes to the spool).
Postfix may deliver a message twice after a lost reply (FILTER_README); the event key
(`postfix:<queue id>`) lets consumers drop the duplicate event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from bridge.events import MtaAccepted, StreamNames
from bridge.mail_headers import parse_headers, summarize
from bridge.mime_summary import summarize_mime
from bridge.streams import Publisher

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary content filter failure, try again later"
REINJECT_TIMEOUT_S = 60.0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def build_event(envelope: Envelope, content: bytes) -> MtaAccepted:
    parsed = parse_headers(content)
    summary = summarize(parsed)
    mime = summarize_mime(content, parsed.headers, parsed.body_start)
    key = f"postfix:{summary.queue_id}" if summary.queue_id else f"postfix:sha256:{summary.fingerprint}"
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
    )


class FilterHandler:
    def __init__(self, publisher: Publisher, streams: StreamNames, reinject_host: str, reinject_port: int) -> None:
        self.publisher = publisher
        self.streams = streams
        self.reinject_host = reinject_host
        self.reinject_port = reinject_port

    async def reinject(self, envelope: Envelope, content: bytes) -> None:
        # RFC 5321 null reverse-path: aiosmtpd gives "" (or "<>"), aiosmtplib needs "<>" sent as such.
        sender = envelope.mail_from if envelope.mail_from not in (None, "", "<>") else "<>"
        mail_options = [o for o in envelope.mail_options if not o.upper().startswith("SIZE=")]
        async with aiosmtplib.SMTP(
            hostname=self.reinject_host, port=self.reinject_port, timeout=REINJECT_TIMEOUT_S, start_tls=False
        ) as client:
            errors, _reply = await client.sendmail(
                sender, envelope.rcpt_tos, content, mail_options=mail_options, rcpt_options=envelope.rcpt_options
            )
            if errors:
                # Partial acceptance would split the message; let Postfix retry it whole.
                raise aiosmtplib.SMTPRecipientsRefused(
                    [aiosmtplib.SMTPRecipientRefused(code, msg, rcpt) for rcpt, (code, msg) in errors.items()]
                )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        if not isinstance(content, bytes):
            content = _text(content or b"").encode("utf-8", "surrogateescape")
        try:
            event = build_event(envelope, content)
        except Exception:  # the event is best effort; the mail is not
            log.exception("[peer %s] header summary failed; mail passes without event", session.peer)
            event = None
        tag = event.queue_id if event is not None and event.queue_id else f"peer {session.peer}"
        try:
            await self.reinject(envelope, content)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("[%s] re-injection failed, deferring: %s", tag, exc)
            return TEMPFAIL
        if event is not None:
            # An OSError here is logged as LOST by the publisher; the mail itself is delivered.
            with contextlib.suppress(OSError):
                await self.publisher.publish(self.streams.postfix, event)
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
            hostname="mail-bridge-filter",
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
