"""Outgoing mail: validate what a client asks to send and build the RFC 5322 message. Pure, no I/O.

Refuses header injection (CR/LF anywhere in a header value), malformed addresses, too many
recipients and oversized content with a clear InvalidInput; the sender is always the account
itself, never a client-chosen From.

An attachment is either inline, `{filename, contentType, content (base64)}`, or a staged upload,
`{uploadId}`. Staged uploads are read by the caller (`upload_ids` names them) and handed to `build`
already resolved, as `Attachment`s; an id the caller could not resolve is refused here, as "not found
or expired". Both kinds count against the same total, MAX_ATTACHMENT_BYTES.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid, quote
from typing import Any

from bridge.errors import InvalidInput, TooLarge
from bridge.message_parse import is_part_id

MAX_RECIPIENTS = 100
MAX_SUBJECT = 998  # RFC 5322 2.1.1 line limit
MAX_BODY_BYTES = 1 << 20
MAX_HTML_BYTES = 2 << 20
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 25 << 20  # in total, decoded
_ADDRESS = re.compile(r"^[^@\s<>()\[\]\\,;:\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
_MSG_ID = re.compile(r"^<[^<>\s]{1,990}>$")
# Control characters, and the Unicode line breaks that str.splitlines() (and so the email package)
# also breaks on: NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR. A header value holding one made
# EmailMessage raise ValueError, which reached the client as an internal error.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029/\\]")
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")
# What secrets.token_urlsafe produces (bridge.uploads), with room to change its length.
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file already decoded and checked (check_filename, check_content_type): a staged upload."""

    filename: str
    content_type: str
    data: bytes


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


def _too_many_recipients(count: int | str) -> InvalidInput:
    return InvalidInput(
        f"at most {MAX_RECIPIENTS} recipients per message (to, cc and bcc together), got {count}:"
        " write to a mailing list, or send several messages"
    )


def _address_items(data: dict[str, Any], key: str) -> list[str]:
    raw = data.get(key) or []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise InvalidInput(f"{key} must be a list of addresses")
    return raw


def _addresses(raw: list[str], key: str, *, draft: bool = False) -> tuple[list[tuple[str, str]], list[str]]:
    """The (name, address) pairs of `raw`, and, for a draft, the items that are no address yet (a
    half-typed "bo"), kept as written: a draft is saved whatever state its fields are in. Sending
    refuses them. Line breaks and control characters are refused either way (header injection)."""
    out: list[tuple[str, str]] = []
    unfinished: list[str] = []
    for item in raw:
        if _CONTROL.search(item) or len(item) > 998:
            raise InvalidInput(f"{key}: invalid address")
        pairs = getaddresses([item])
        bad = next((address or item for _name, address in pairs if not _ADDRESS.match(address)), None)
        if bad is None:
            out.extend(pairs)
        elif draft:
            unfinished.append(item.strip())
        else:
            raise InvalidInput(f"{key}: invalid address {bad!r}")
    return out, [u for u in unfinished if u]


def check_filename(value: object) -> str:
    """An attachment's file name: 1 to 255 characters, no control characters, no path separators."""
    if not isinstance(value, str) or not _filename_ok(value):
        raise InvalidInput("attachment filename is missing or invalid")
    return value


def check_content_type(value: object) -> str:
    """A media type `type/subtype` (no parameters); missing or empty means application/octet-stream."""
    if value is None or value == "":
        return DEFAULT_CONTENT_TYPE
    if not isinstance(value, str) or not _CONTENT_TYPE.match(value):
        raise InvalidInput("attachment contentType is invalid")
    return value


def upload_ids(data: object) -> tuple[str, ...]:
    """The staged uploads `data` refers to, each once, in order; what `build` will need resolved.

    Only the shape of the ids is checked here; any other problem with `data` is `build`'s to report.
    """
    attachments = data.get("attachments") if isinstance(data, dict) else None
    if not isinstance(attachments, list):
        return ()
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidInput(f"attachments must be a list of at most {MAX_ATTACHMENTS}")
    ids: dict[str, None] = {}
    for item in attachments:
        if isinstance(item, dict) and "uploadId" in item:
            ids[_upload_id(item["uploadId"])] = None
    return tuple(ids)


def forwarded_parts(data: object) -> tuple[tuple[str, str], ...]:
    """The attachments of other mails `data` forwards ({forwardOf: email id, part: part id}), each
    once, in order; what `build` will need resolved (the caller checks the mail is the sender's)."""
    attachments = data.get("attachments") if isinstance(data, dict) else None
    if not isinstance(attachments, list):
        return ()
    found: dict[tuple[str, str], None] = {}
    for item in attachments:
        if isinstance(item, dict) and "forwardOf" in item:
            found[_forwarded_key(item)] = None
    return tuple(found)


def _forwarded_key(item: dict[str, Any]) -> tuple[str, str]:
    email, part = item.get("forwardOf"), item.get("part")
    if not isinstance(email, str) or not email or len(email) > 1024:
        raise InvalidInput("attachment forwardOf must be an email id")
    if not is_part_id(part):
        raise InvalidInput("attachment part must be a part id such as 2 or 1.2")
    return email, str(part)


def _upload_id(value: object) -> str:
    if not isinstance(value, str) or not UPLOAD_ID.match(value):
        raise InvalidInput("attachment uploadId is invalid")
    return value


def build(
    account: str,
    data: object,
    *,
    draft: bool = False,
    uploads: Mapping[str, Attachment] | None = None,
    forwarded: Mapping[tuple[str, str], Attachment] | None = None,
) -> Outgoing:
    """The message to send (or, with `draft`, to save in Drafts: recipients may then be missing).

    `uploads` holds the staged uploads the caller resolved (see `upload_ids`), by id; `forwarded`
    the forwarded mails' attachments it resolved (see `forwarded_parts`), by (email id, part)."""
    if not isinstance(data, dict):
        raise InvalidInput("send takes an object {to, cc, bcc, subject, body, html, attachments, inReplyTo}")
    items = {key: _address_items(data, key) for key in ("to", "cc", "bcc")}
    # Every item names at least one address: thousands of them are refused before any is parsed
    # (a 40 MB body of addresses kept the event loop busy parsing for seconds).
    listed = sum(len(v) for v in items.values())
    if listed > MAX_RECIPIENTS:
        raise _too_many_recipients(listed)
    (to, to_unfinished), (cc, cc_unfinished), (bcc, _bcc_unfinished) = (
        _addresses(items[key], key, draft=draft) for key in ("to", "cc", "bcc")
    )
    recipients = tuple(dict.fromkeys(address for _name, address in to + cc + bcc))
    if not recipients and not draft:
        raise InvalidInput("at least one recipient is required")
    if len(recipients) > MAX_RECIPIENTS:
        raise _too_many_recipients(len(recipients))
    try:
        return _message(
            account,
            data,
            _header(to, to_unfinished),
            _header(cc, cc_unfinished),
            recipients=recipients,
            uploads=uploads or {},
            forwarded=forwarded or {},
        )
    except (ValueError, IndexError) as exc:
        # The checks above should leave nothing the email package refuses; should one slip
        # through, it is still the client's input, answered as such (not an internal error).
        raise InvalidInput(f"the message cannot be built: {exc}") from None


def _message(
    account: str,
    data: dict[str, Any],
    to: str,
    cc: str,
    *,
    recipients: tuple[str, ...],
    uploads: Mapping[str, Attachment],
    forwarded: Mapping[tuple[str, str], Attachment],
) -> Outgoing:
    subject = _text(data, "subject", MAX_SUBJECT, header=True)
    body = _text(data, "body", MAX_BODY_BYTES, header=False)
    html = _text(data, "html", MAX_HTML_BYTES, header=False)
    in_reply_to = _text(data, "inReplyTo", 998, header=True)
    if in_reply_to and not _MSG_ID.match(in_reply_to):
        raise InvalidInput("inReplyTo must be a Message-ID like <id@host>")

    message = EmailMessage()
    message["From"] = account
    if to:
        message["To"] = to
    if cc:
        message["Cc"] = cc
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
    _attach(message, data.get("attachments"), uploads, forwarded)
    return Outgoing(message.as_bytes(), message_id, recipients, subject)


def _header(addresses: list[tuple[str, str]], unfinished: list[str]) -> str:
    """An address header's value: the addresses, then a draft's items that are none yet, each as a
    quoted string (RFC 5322 3.2.4): the header parses, and reads back as the text typed."""
    return ", ".join(
        [*(formataddr((name, address)) for name, address in addresses), *(f'"{quote(u)}"' for u in unfinished)]
    )


def _attach(
    message: EmailMessage,
    attachments: object,
    uploads: Mapping[str, Attachment],
    forwarded: Mapping[tuple[str, str], Attachment],
) -> None:
    if attachments in (None, []):
        return
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise InvalidInput(f"attachments must be a list of at most {MAX_ATTACHMENTS}")
    total = 0
    for item in attachments:
        if not isinstance(item, dict):
            raise InvalidInput(
                "an attachment is {filename, contentType, content (base64)}, {uploadId} or {forwardOf, part}"
            )
        if "uploadId" in item:
            attachment = _staged(item, uploads)
        elif "forwardOf" in item:
            attachment = _forwarded(item, forwarded)
        else:
            attachment = _inline(item)
        total += len(attachment.data)
        if total > MAX_ATTACHMENT_BYTES:
            raise TooLarge(f"attachments larger than {MAX_ATTACHMENT_BYTES} bytes")
        maintype, subtype = attachment.content_type.split("/", 1)
        message.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename)


def _staged(item: dict[str, Any], uploads: Mapping[str, Attachment]) -> Attachment:
    upload_id = _upload_id(item["uploadId"])
    found = uploads.get(upload_id)
    if found is None:
        raise InvalidInput(f"attachment upload {upload_id} not found or expired")
    # Checked when it was staged; checked again so that a stored value cannot bypass the rules.
    return Attachment(check_filename(found.filename), check_content_type(found.content_type), found.data)


def _filename_ok(value: str) -> bool:
    return bool(value) and len(value) <= 255 and not _FILENAME_BAD.search(value)


def _forwarded(item: dict[str, Any], forwarded: Mapping[tuple[str, str], Attachment]) -> Attachment:
    key = _forwarded_key(item)
    found = forwarded.get(key)
    if found is None:
        raise InvalidInput(f"attachment {key[1]} of the forwarded mail was not found")
    # As the sender sent them, within what this module sends: odd names and types are tamed.
    filename = found.filename if _filename_ok(found.filename) else "attachment"
    content_type = found.content_type if _CONTENT_TYPE.match(found.content_type) else DEFAULT_CONTENT_TYPE
    return Attachment(filename, content_type, found.data)


def _inline(item: dict[str, Any]) -> Attachment:
    filename = check_filename(item.get("filename"))
    content_type = check_content_type(item.get("contentType"))
    content = item.get("content")
    if not isinstance(content, str):
        raise InvalidInput("attachment content must be base64 text")
    if len(content) > MAX_ATTACHMENT_BYTES * 4 // 3 + 4:
        raise TooLarge(f"attachments larger than {MAX_ATTACHMENT_BYTES} bytes")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("attachment content is not valid base64") from None
    return Attachment(filename, content_type, data)
