"""Parse a whole RFC 5322 message for reading in the webmail. Pure, no I/O.

`parse_message` turns the raw bytes of a message into display fields: decoded headers, the first
text/plain body, the first text/html body (sanitised by `bridge.html_sanitizer`, remote images
blocked) and the list of attachments. `extract_part` returns the decoded bytes of one attachment
by the `part_id` that `parse_message` gave it. Both put together the work of three modules: the
MIME structure (`bridge.message_tree`), headers (`bridge.message_headers`) and each part's content
and name (`bridge.message_content`).

Contract:
* Neither function ever raises on malformed input: broken MIME, unknown charsets, bad base64,
  8-bit junk in headers all give a best-effort result, with undecodable bytes replaced by U+FFFD.
* Work is bounded: parsing stops once MAX_PARSED_PARTS parts are built, at most MAX_PARTS MIME
  parts are walked and multiparts are entered at most MAX_DEPTH levels deep; parts beyond are
  ignored. Text is cut at MAX_TEXT_CHARS, HTML at the sanitiser's MAX_HTML_CHARS, header values at
  MAX_HEADER_CHARS. The rest (decoding each listed attachment to learn its size) is linear in the
  size of the message, which this module does not limit.
* Part ids are MIME part paths numbered like IMAP BODY[section] (RFC 3501 6.4.5): "1" for the body
  of a single-part message, "2" for the second child of a top-level multipart, "1.3" for the third
  child of that multipart's first child. An encapsulated message (message/rfc822) is one attachment
  and is not entered.
* Only the standard library `email` package (policy `email.policy.default`) parses the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from bridge.html_sanitizer import MAX_HTML_CHARS, sanitize_html
from bridge.message_content import MAX_FILENAME_CHARS, decode_text, payload_bytes
from bridge.message_headers import MAX_HEADER_CHARS, addresses, first_message_id, header_date, header_text, message_ids
from bridge.message_tree import MAX_DEPTH, MAX_PARSED_PARTS, MAX_PARTS, classify, parse_tree, walk

# The bounds the contract above names are importable from here, wherever they are enforced.
__all__ = [
    "MAX_DEPTH",
    "MAX_FILENAME_CHARS",
    "MAX_HEADER_CHARS",
    "MAX_PARSED_PARTS",
    "MAX_PARTS",
    "MAX_REFERENCES",
    "MAX_TEXT_CHARS",
    "AttachmentInfo",
    "ParsedMessage",
    "extract_part",
    "parse_message",
]

# 1 MiB of characters of text/plain body.
MAX_TEXT_CHARS = 1024 * 1024
MAX_REFERENCES = 100

_PART_ID = re.compile(rf"[1-9][0-9]{{0,5}}(?:\.[1-9][0-9]{{0,5}}){{0,{MAX_DEPTH - 1}}}")


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    part_id: str
    filename: str
    content_type: str
    size: int
    content_id: str
    inline: bool


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    subject: str
    from_: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: str | None
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    text: str
    html: str | None
    blocked_remote_images: int
    attachments: tuple[AttachmentInfo, ...]


def parse_message(raw: bytes, *, allow_remote_images: bool = False) -> ParsedMessage:
    """Decode `raw` into display fields. Never raises; see the module docstring for the bounds.

    Remote images in the HTML are blocked (and counted) unless `allow_remote_images`."""
    message = parse_tree(raw)
    try:
        return _read(message, allow_remote_images)
    except Exception:
        # Every step below guards itself; this only catches a bug in that guarding.
        return ParsedMessage("", "", (), (), None, "", "", (), "", None, 0, ())


def is_part_id(value: object) -> bool:
    """Whether `value` is a part id as `parse_message` gives them ("2", "1.2")."""
    return isinstance(value, str) and _PART_ID.fullmatch(value) is not None


def extract_part(raw: bytes, part_id: str) -> tuple[str, str, bytes] | None:
    """Return (filename, content_type, decoded bytes) of the attachment `part_id`, else None.

    Only ids that `parse_message(raw)` lists as attachments are found: the same bounded walk picks
    them, so a part the listing never showed cannot be fetched either.
    """
    if _PART_ID.fullmatch(part_id) is None:
        return None
    message = parse_tree(raw)
    try:
        _, _, attachments = classify(walk(message))
        for leaf in attachments:
            if leaf.part_id == part_id:
                return leaf.filename, leaf.content_type, payload_bytes(leaf.part)
    except Exception:
        return None
    return None


def _read(message: Message, allow_remote_images: bool) -> ParsedMessage:
    text_leaf, html_leaf, attachment_leaves = classify(walk(message))

    text = decode_text(text_leaf.part, MAX_TEXT_CHARS) if text_leaf is not None else ""
    html: str | None = None
    blocked = 0
    if html_leaf is not None:
        try:
            html_text = decode_text(html_leaf.part, MAX_HTML_CHARS)
            sanitized = sanitize_html(html_text, allow_remote_images=allow_remote_images)
            html, blocked = sanitized.html, sanitized.blocked_remote_images
        except Exception:
            html = ""

    attachments = tuple(
        AttachmentInfo(
            part_id=leaf.part_id,
            filename=leaf.filename,
            content_type=leaf.content_type,
            size=len(payload_bytes(leaf.part)),
            content_id=leaf.content_id,
            # RFC 2183 "inline"; a part with no disposition but a Content-ID is there to be
            # referenced from the HTML by a cid: URL (RFC 2392), which is display, not a file.
            inline=leaf.disposition == "inline" or (leaf.disposition == "" and bool(leaf.content_id)),
        )
        for leaf in attachment_leaves
    )

    references = message_ids(header_text(message, "References"))
    if len(references) > MAX_REFERENCES:
        # RFC 5322 3.6.4 lets a long References list drop its middle: the first id is the thread
        # root and the last ones are the nearest ancestors, which is what threading needs.
        references = references[:1] + references[-(MAX_REFERENCES - 1) :]

    return ParsedMessage(
        subject=header_text(message, "Subject"),
        from_=", ".join(addresses(message, "From")),
        to=addresses(message, "To"),
        cc=addresses(message, "Cc"),
        date=header_date(message),
        message_id=first_message_id(header_text(message, "Message-ID")),
        in_reply_to=first_message_id(header_text(message, "In-Reply-To")),
        references=references,
        text=text,
        html=html,
        blocked_remote_images=blocked,
        attachments=attachments,
    )
