"""Parse a whole RFC 5322 message for reading in the webmail. Pure, no I/O.

`parse_message` turns the raw bytes of a message into display fields: decoded headers, the first
text/plain body, the first text/html body (sanitised by `bridge.html_sanitizer`, remote images
blocked) and the list of attachments. `extract_part` returns the decoded bytes of one attachment
by the `part_id` that `parse_message` gave it.

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

import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.feedparser import BytesFeedParser
from email.generator import BytesGenerator
from email.headerregistry import AddressHeader
from email.message import EmailMessage, Message
from email.policy import Policy
from email.utils import getaddresses, parsedate_to_datetime
from io import BytesIO
from typing import Any, TypeVar

from bridge.html_sanitizer import MAX_HTML_CHARS, sanitize_html

_T = TypeVar("_T")
_D = TypeVar("_D")

MAX_PARTS = 1000
MAX_DEPTH = 16
# Parsing itself stops after this many parts (see _parse). The margin over MAX_PARTS leaves room
# for the parts inside encapsulated messages and below MAX_DEPTH, which are built but not walked.
MAX_PARSED_PARTS = 2 * MAX_PARTS
# 1 MiB of characters of text/plain body.
MAX_TEXT_CHARS = 1024 * 1024
# A header value longer than this is cut before it is parsed: the structured-header parser is slow
# on long hostile input, and no real header needs more.
MAX_HEADER_CHARS = 16 * 1024
MAX_ADDRESSES = 1000
MAX_REFERENCES = 100
MAX_FILENAME_CHARS = 255

_POLICY = email.policy.default
# Re-emits source header lines as they came, so an encapsulated message's bytes are not refolded.
_VERBATIM = email.policy.default.clone(refold_source="none", linesep="\r\n")

_MSG_ID = re.compile(r"<[^<>\s]{1,998}>")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_SURROGATES_AND_NUL = re.compile(r"[\ud800-\udfff\x00]")
# RFC 6838 4.2 restricted-name characters: anything else is not a media type we pass on.
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_PART_ID = re.compile(rf"[1-9][0-9]{{0,5}}(?:\.[1-9][0-9]{{0,5}}){{0,{MAX_DEPTH - 1}}}")

# Charset labels read as the wider encoding that real senders mean by them (as browsers do, per the
# WHATWG Encoding standard): the narrow one would turn valid bytes into U+FFFD.
_CHARSET_SUPERSETS = {
    "ascii": "utf-8",
    "us-ascii": "utf-8",
    "iso-8859-1": "windows-1252",
    "latin1": "windows-1252",
    "latin-1": "windows-1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}


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


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A non-multipart part found by the walk, with its MIME headers already read."""

    part_id: str
    part: Message
    content_type: str
    disposition: str
    filename: str
    content_id: str

    @property
    def is_body(self) -> bool:
        # RFC 2183: a part marked attachment, or carrying a file name, is meant as a file even when
        # it is text; otherwise a text part is a candidate for the message body.
        return self.disposition != "attachment" and not self.filename


def parse_message(raw: bytes, *, allow_remote_images: bool = False) -> ParsedMessage:
    """Decode `raw` into display fields. Never raises; see the module docstring for the bounds.

    Remote images in the HTML are blocked (and counted) unless `allow_remote_images`."""
    message = _parse(raw)
    try:
        return _read(message, allow_remote_images)
    except Exception:
        # Every step below guards itself; this only catches a bug in that guarding.
        return ParsedMessage("", "", (), (), None, "", "", (), "", None, 0, ())


def extract_part(raw: bytes, part_id: str) -> tuple[str, str, bytes] | None:
    """Return (filename, content_type, decoded bytes) of the attachment `part_id`, else None.

    Only ids that `parse_message(raw)` lists as attachments are found: the same bounded walk picks
    them, so a part the listing never showed cannot be fetched either.
    """
    if _PART_ID.fullmatch(part_id) is None:
        return None
    message = _parse(raw)
    try:
        _, _, attachments = _classify(_walk(message))
        for leaf in attachments:
            if leaf.part_id == part_id:
                return leaf.filename, leaf.content_type, _payload_bytes(leaf.part)
    except Exception:
        return None
    return None


def _parse(raw: bytes) -> Message:
    """The message tree, built only as far as MAX_PARSED_PARTS parts; never raises.

    The feed parser builds parts in document order and attaches each to its parent as it starts,
    so when building stops early every part before the stopping point is whole, and the tree so far
    is a consistent (if partial) message. The same input always stops at the same point, so
    `parse_message` and `extract_part` see the same parts.
    """
    root: Message | None = None
    built = 0

    def build(policy: Policy[EmailMessage]) -> EmailMessage:  # the feed parser's message factory
        nonlocal root, built
        if built >= MAX_PARSED_PARTS:
            # policy.default re-parses Content-Type several times per part, which makes a message
            # of 100,000 tiny parts cost minutes; stop before that cost is paid.
            raise _PartLimitReached
        built += 1
        message = EmailMessage(policy=_POLICY)
        if root is None:
            root = message
        return message

    parser = BytesFeedParser(policy=_POLICY.clone(message_factory=build))
    try:
        parser.feed(raw)
        return parser.close()
    except Exception:
        # _PartLimitReached, or RecursionError: the parser recurses once per nesting level, so a
        # few thousand nested multiparts exhaust the stack. Either way keep what was built.
        return root if root is not None else EmailMessage(policy=_POLICY)


class _PartLimitReached(Exception):
    pass


def _read(message: Message, allow_remote_images: bool) -> ParsedMessage:
    text_leaf, html_leaf, attachment_leaves = _classify(_walk(message))

    text = _decode_text(text_leaf.part, MAX_TEXT_CHARS) if text_leaf is not None else ""
    html: str | None = None
    blocked = 0
    if html_leaf is not None:
        try:
            html_text = _decode_text(html_leaf.part, MAX_HTML_CHARS)
            sanitized = sanitize_html(html_text, allow_remote_images=allow_remote_images)
            html, blocked = sanitized.html, sanitized.blocked_remote_images
        except Exception:
            html = ""

    attachments = tuple(
        AttachmentInfo(
            part_id=leaf.part_id,
            filename=leaf.filename,
            content_type=leaf.content_type,
            size=len(_payload_bytes(leaf.part)),
            content_id=leaf.content_id,
            # RFC 2183 "inline"; a part with no disposition but a Content-ID is there to be
            # referenced from the HTML by a cid: URL (RFC 2392), which is display, not a file.
            inline=leaf.disposition == "inline" or (leaf.disposition == "" and bool(leaf.content_id)),
        )
        for leaf in attachment_leaves
    )

    references = _message_ids(_header_text(message, "References"))
    if len(references) > MAX_REFERENCES:
        # RFC 5322 3.6.4 lets a long References list drop its middle: the first id is the thread
        # root and the last ones are the nearest ancestors, which is what threading needs.
        references = references[:1] + references[-(MAX_REFERENCES - 1) :]

    return ParsedMessage(
        subject=_header_text(message, "Subject"),
        from_=", ".join(_addresses(message, "From")),
        to=_addresses(message, "To"),
        cc=_addresses(message, "Cc"),
        date=_date(message),
        message_id=_first_message_id(_header_text(message, "Message-ID")),
        in_reply_to=_first_message_id(_header_text(message, "In-Reply-To")),
        references=references,
        text=text,
        html=html,
        blocked_remote_images=blocked,
        attachments=attachments,
    )


# --- MIME structure -------------------------------------------------------------------------------


def _walk(message: Message) -> list[_Leaf]:
    """The leaf parts in document order, numbered like IMAP sections, within MAX_PARTS/MAX_DEPTH."""
    leaves: list[_Leaf] = []
    walked = 0

    def visit(part: Message, part_id: str, depth: int) -> None:
        nonlocal walked
        walked += 1
        if not _is_multipart(part):
            # The body of a single-part message is section "1" (RFC 3501 6.4.5).
            leaves.append(_describe(part, part_id or "1"))
            return
        if depth >= MAX_DEPTH:
            return
        children = part.get_payload()
        if not isinstance(children, list):
            return
        for index, child in enumerate(children, start=1):
            if walked >= MAX_PARTS:
                return
            if isinstance(child, Message):
                visit(child, f"{part_id}.{index}" if part_id else str(index), depth + 1)

    visit(message, "", 0)
    return leaves


def _is_multipart(part: Message) -> bool:
    # message/rfc822 also has a list payload, but it is one attachment, not a container to enter.
    try:
        return part.is_multipart() and part.get_content_maintype() == "multipart"
    except Exception:
        return False


def _describe(part: Message, part_id: str) -> _Leaf:
    content_type = _guard(part.get_content_type, "application/octet-stream")
    if content_type.startswith("multipart/"):
        # A multipart whose boundary was missing or never found is left as one unparsed body;
        # showing it as text (the RFC 2045 5.2 default) beats hiding it.
        content_type = "text/plain"
    if _MEDIA_TYPE.match(content_type) is None:
        content_type = "application/octet-stream"
    disposition = (_guard(part.get_content_disposition, None) or "").strip().lower()
    if disposition not in ("inline", "attachment"):
        disposition = "attachment" if disposition else ""  # RFC 2183 2.8: unknown means attachment
    content_id = _header_text(part, "Content-ID").strip().strip("<>").strip()
    return _Leaf(
        part_id=part_id,
        part=part,
        content_type=content_type,
        disposition=disposition,
        filename=_filename(part),
        content_id=content_id,
    )


def _classify(leaves: list[_Leaf]) -> tuple[_Leaf | None, _Leaf | None, list[_Leaf]]:
    """Pick the first text/plain and first text/html body parts; every other leaf is an attachment."""
    text: _Leaf | None = None
    html: _Leaf | None = None
    attachments: list[_Leaf] = []
    for leaf in leaves:
        if leaf.is_body and leaf.content_type == "text/plain" and text is None:
            text = leaf
        elif leaf.is_body and leaf.content_type == "text/html" and html is None:
            html = leaf
        else:
            attachments.append(leaf)
    return text, html, attachments


def _filename(part: Message) -> str:
    # get_filename reads Content-Disposition's filename, then Content-Type's name, and joins and
    # decodes RFC 2231 continuations and charsets (the policy also decodes RFC 2047 words there,
    # which some mailers wrongly use).
    name = _guard(part.get_filename, None)
    if not isinstance(name, str):
        return ""
    # Keep only the last path component: the name is only a label and a download name.
    name = re.split(r"[/\\]", _clean_header(name))[-1].strip()
    return name[:MAX_FILENAME_CHARS]


def _payload_bytes(part: Message) -> bytes:
    """The part's content with its Content-Transfer-Encoding (RFC 2045 6) undone."""
    if isinstance(_guard(part.get_payload, None), list):
        # Only a message/* part gets here with a list payload: _walk enters real multiparts.
        return _encapsulated_bytes(part)
    try:
        # Tolerant: bad base64 decodes what it can, an unknown encoding returns the bytes as sent.
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = _guard(part.get_payload, None)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _encapsulated_bytes(part: Message) -> bytes:
    """The body of a message/* part as a message file: the enclosed message(s) re-serialised."""
    payload = part.get_payload()
    out = BytesIO()
    try:
        generator = BytesGenerator(out, mangle_from_=False, policy=_VERBATIM)
        for inner in payload if isinstance(payload, list) else ():
            if isinstance(inner, EmailMessage):  # what policy.default's parser builds
                generator.flatten(inner)
    except Exception:
        return b""
    return out.getvalue()


def _decode_text(part: Message, limit: int) -> str:
    """The text of a text/* part, decoded with its charset (RFC 2045 5.1, RFC 2046 4.1.2)."""
    # Bounds the decoding work. Four bytes per character covers UTF-8, UTF-16/32 and the legacy
    # multi-byte charsets, so the cut normally loses nothing that the character cut below keeps.
    data = _payload_bytes(part)[: limit * 4]
    charset = (_guard(part.get_content_charset, None) or "utf-8").strip().lower()
    charset = _CHARSET_SUPERSETS.get(charset, charset)
    try:
        text = data.decode(charset, "replace")
    except Exception:
        # Unknown or non-text codec (LookupError), or a codec that rejects "replace".
        text = data.decode("utf-8", "replace")
    # NUL is no text in any charset mail uses, and an HTML parser never passes one through (WHATWG
    # HTML 13.2.5): shown as U+FFFD, so no consumer of the API's JSON meets a NUL (a C string).
    return _SURROGATES_AND_NUL.sub("\ufffd", text[:limit])


# --- headers --------------------------------------------------------------------------------------


def _raw_header(message: Message, name: str) -> str | None:
    """The first `name` header as it came, unparsed (8-bit bytes as surrogate escapes)."""
    wanted = name.lower()
    try:
        for key, value in message.raw_items():
            if key.lower() == wanted:
                return str(value)[:MAX_HEADER_CHARS]
    except Exception:
        return None
    return None


def _parsed_header(name: str, raw: str) -> Any:
    """The policy's structured header object for `raw`, or None when parsing it fails."""
    try:
        return _POLICY.header_fetch_parse(name, raw)
    except Exception:
        return None


def _header_text(message: Message, name: str) -> str:
    """The value of header `name` with RFC 2047 encoded words decoded, "" if absent."""
    raw = _raw_header(message, name)
    if raw is None:
        return ""
    header = _parsed_header(name, raw)
    try:
        value = str(header) if header is not None else raw
    except Exception:
        value = raw
    return _clean_header(value)


def _addresses(message: Message, name: str) -> tuple[str, ...]:
    """The mailboxes of an address header (groups flattened), each as `Name <addr>` or `addr`."""
    raw = _raw_header(message, name)
    if raw is None:
        return ()
    header = _parsed_header(name, raw)
    pairs: list[tuple[str, str]] = []
    try:
        if isinstance(header, AddressHeader):
            pairs = [(address.display_name, address.addr_spec) for address in header.addresses]
        else:
            raise ValueError(name)
    except Exception:
        # The RFC 5322 parser gave up; the lenient legacy splitter still finds most addresses.
        try:
            pairs = getaddresses([_clean_header(raw)])
        except Exception:
            pairs = []
    formatted = (_format_address(display, addr) for display, addr in pairs[:MAX_ADDRESSES])
    return tuple(item for item in formatted if item)


def _format_address(display_name: str, addr_spec: str) -> str:
    name = _clean_header(display_name or "")
    addr = _clean_header(addr_spec or "")
    if not name:
        return addr
    if not addr:
        return name
    if re.search(r'[()<>\[\]:;@\\,."]', name):
        # Quote as RFC 5322 3.2.4 does, so the string still reads back as one mailbox.
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def _date(message: Message) -> str | None:
    raw = _raw_header(message, "Date")
    if raw is None:
        return None
    try:
        when = parsedate_to_datetime(_clean_header(raw))
        if when.tzinfo is None:
            # "-0000" (RFC 5322 3.3): the time is UTC, the sender's zone unknown.
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    except Exception:
        return None


def _message_ids(value: str) -> tuple[str, ...]:
    return tuple(_MSG_ID.findall(value))


def _first_message_id(value: str) -> str:
    """The first <msg-id> (RFC 5322 3.6.4); a bare id without brackets is kept as written."""
    found = _MSG_ID.search(value)
    if found is not None:
        return found.group(0)
    words = value.split()
    return words[0] if words else ""


def _clean_header(value: str) -> str:
    """Readable text: raw 8-bit bytes read as UTF-8 (RFC 6532), junk as U+FFFD, no control chars."""
    if _SURROGATES.search(value) is not None:
        try:
            # The parser keeps undecoded bytes as surrogate escapes; undo that and decode as UTF-8.
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeError:
            value = _SURROGATES.sub("\ufffd", value)
    return _CONTROLS.sub(" ", value).strip()


def _guard(call: Callable[[], _T], default: _D) -> _T | _D:
    """`call()`, or `default` if the email package raised on a malformed header."""
    try:
        return call()
    except Exception:
        return default
