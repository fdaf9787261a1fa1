"""Outgoing mail: validate what a client asks to send and build the RFC 5322 message. Pure, no I/O.

Refuses header injection (CR/LF anywhere in a header value), malformed addresses, too many
recipients and oversized content with a clear InvalidInput; the sender is always the account
itself, never a client-chosen From.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any

from bridge.errors import InvalidInput

MAX_RECIPIENTS = 100
MAX_SUBJECT = 998  # RFC 5322 2.1.1 line limit
MAX_BODY_BYTES = 1 << 20
MAX_HTML_BYTES = 2 << 20
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 25 << 20  # in total, decoded
_ADDRESS = re.compile(r"^[^@\s<>()\[\]\\,;:\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
_MSG_ID = re.compile(r"^<[^<>\s]{1,990}>$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True, slots=True)
class Outgoing:
    message: bytes
    message_id: str
    recipients: tuple[str, ...]  # envelope: to + cc + bcc
    subject: str


def _text(data: dict[str, Any], key: str, limit: int, *, header: bool) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    if len(value.encode()) > limit:
        raise InvalidInput(f"{key} is longer than {limit} bytes")
    if header and _CONTROL.search(value):
        raise InvalidInput(f"{key} must not contain line breaks or control characters")
    return value


def _addresses(data: dict[str, Any], key: str) -> list[tuple[str, str]]:
    raw = data.get(key) or []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise InvalidInput(f"{key} must be a list of addresses")
    out: list[tuple[str, str]] = []
    for item in raw:
        if _CONTROL.search(item) or len(item) > 998:
            raise InvalidInput(f"{key}: invalid address")
        for name, address in getaddresses([item]):
            if not _ADDRESS.match(address):
                raise InvalidInput(f"{key}: invalid address {address or item!r}")
            out.append((name, address))
    return out


def build(account: str, data: object, *, draft: bool = False) -> Outgoing:
    """The message to send (or, with `draft`, to save in Drafts: recipients may then be missing)."""
    if not isinstance(data, dict):
        raise InvalidInput("send takes an object {to, cc, bcc, subject, body, html, attachments, inReplyTo}")
    to, cc, bcc = _addresses(data, "to"), _addresses(data, "cc"), _addresses(data, "bcc")
    recipients = tuple(dict.fromkeys(address for _name, address in to + cc + bcc))
    if not recipients and not draft:
        raise InvalidInput("at least one recipient is required")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidInput(f"at most {MAX_RECIPIENTS} recipients")
    subject = _text(data, "subject", MAX_SUBJECT, header=True)
    body = _text(data, "body", MAX_BODY_BYTES, header=False)
    html = _text(data, "html", MAX_HTML_BYTES, header=False)
    in_reply_to = _text(data, "inReplyTo", 998, header=True)
    if in_reply_to and not _MSG_ID.match(in_reply_to):
        raise InvalidInput("inReplyTo must be a Message-ID like <id@host>")

    message = EmailMessage()
    message["From"] = account
    if to:
        message["To"] = _joined(to)
    if cc:
        message["Cc"] = _joined(cc)
    # Bcc recipients are on the envelope only (RFC 5322 3.6.3): never in the header.
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message_id = make_msgid(domain=account.split("@", 1)[1])
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body or "")
    if html:
        message.add_alternative(html, subtype="html")
    _attach(message, data.get("attachments"))
    return Outgoing(message.as_bytes(), message_id, recipients, subject)


def _joined(addresses: list[tuple[str, str]]) -> str:
    return ", ".join(formataddr((name, address)) for name, address in addresses)


def _attach(message: EmailMessage, attachments: object) -> None:
    if attachments in (None, []):
        return
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise InvalidInput(f"attachments must be a list of at most {MAX_ATTACHMENTS}")
    total = 0
    for item in attachments:
        if not isinstance(item, dict):
            raise InvalidInput("an attachment is {filename, contentType, content (base64)}")
        filename = item.get("filename")
        content_type = item.get("contentType") or "application/octet-stream"
        content = item.get("content")
        if not isinstance(filename, str) or not filename or len(filename) > 255 or _FILENAME_BAD.search(filename):
            raise InvalidInput("attachment filename is missing or invalid")
        if not isinstance(content_type, str) or not re.match(r"^[\w.+-]+/[\w.+-]+$", content_type):
            raise InvalidInput("attachment contentType is invalid")
        if not isinstance(content, str):
            raise InvalidInput("attachment content must be base64 text")
        if len(content) > MAX_ATTACHMENT_BYTES * 4 // 3 + 4:
            raise InvalidInput(f"attachments larger than {MAX_ATTACHMENT_BYTES} bytes")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("attachment content is not valid base64") from None
        total += len(data)
        if total > MAX_ATTACHMENT_BYTES:
            raise InvalidInput(f"attachments larger than {MAX_ATTACHMENT_BYTES} bytes")
        maintype, subtype = content_type.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
