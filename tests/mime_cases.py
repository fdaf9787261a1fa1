"""Structurally hostile mail for the mail-content scenario: hypothesis strategies, a named corpus of
malformed MIME, and the checks every parsed result must pass.

The strategies build a MIME tree (RFC 2045/2046) and then break it on purpose: boundaries missing,
duplicated, garbage or never closed; unknown or garbage Content-Type, charset and
Content-Transfer-Encoding; broken base64 and quoted-printable; RFC 2047 encoded words broken in every
way; RFC 2231 parameters; NUL and 8-bit bytes in headers; overlong lines; CR-only, LF-only or mixed
line ends; thousands of header lines; missing headers. Generation stays cheap (repetition is a
count, not a drawn list), so thousands of examples run in a minute or two.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, fields
from html.parser import HTMLParser
from typing import Any

from aiosmtpd.smtp import Envelope
from hypothesis import strategies as st

from bridge import codec
from bridge.errors import BridgeError
from bridge.events import Direction, MtaAccepted
from bridge.html_sanitizer import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, ALLOWED_URL_SCHEMES, sanitize_html
from bridge.message_parse import MAX_FILENAME_CHARS, ParsedMessage, _read, extract_part
from bridge.message_tree import parse_tree
from bridge.smtp_filter import build_event, stamped

# Only a guard against hangs, far above the real cost of one message: never a speed assertion.
HANG_CEILING_S = 10.0

# --- strategies -----------------------------------------------------------------------------------

CHARSETS = [
    "utf-8",
    "UTF-8",
    "us-ascii",
    "iso-8859-1",
    "windows-1252",
    "koi8-r",
    "shift_jis",
    "gb2312",
    "big5",
    "utf-7",
    "utf-16",
    "utf-16le",
    "utf-32",
    "utf-8-sig",
    "idna",
    "punycode",
    "unicode_escape",
    "raw_unicode_escape",
    "base64",
    "hex",
    "zlib",
    "rot13",
    "undefined",
    "x-unknown",
    "",
    "utf-8\x00",
    "\xff\xfe",
    "a" * 300,
]
TRANSFER_ENCODINGS = [
    "7bit",
    "8bit",
    "binary",
    "base64",
    "BASE64",
    "quoted-printable",
    "x-uuencode",
    "uuencode",
    "x-garbage",
    "",
    "base64 quoted-printable",
    "\xff",
]
CONTENT_TYPES = [
    "text/plain",
    "text/html",
    "TEXT/HTML",
    "text/enriched",
    "application/octet-stream",
    "application/pdf",
    "image/png",
    "message/rfc822",
    "message/delivery-status",
    "message/partial",
    "message/global",
    "text",
    "text/",
    "/html",
    "/",
    "multipart",
    "x-garbage/\xff\xfe",
    "text/plain/extra",
    "a" * 200 + "/" + "b" * 200,
    "text/html\x00",
    ";;;",
]
MULTIPART_SUBTYPES = ["mixed", "alternative", "related", "digest", "signed", "report", "x-unknown", ""]
HEADER_NAMES = [
    "Subject",
    "From",
    "To",
    "Cc",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Reply-To",
    "Sender",
    "Received",
    "Authentication-Results",
    "List-Unsubscribe",
    "Precedence",
    "Content-ID",
    "Content-Disposition",
    "MIME-Version",
    "X-Junk",
    "Content-Type",
    "Content-Transfer-Encoding",
]
HTML_FRAGMENTS = [
    "<p>",
    "</p>",
    "<b>x</b>",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">l</a>',
    '<a href="https://ok.example/">ok</a>',
    '<img src="https://t.example/p.gif">',
    '<img src="cid:logo@x">',
    "<svg onload=alert(1)>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;">',
    '<div style="background:url(javascript:alert(1));color:red">s</div>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<form action="javascript:alert(1)"><input type=submit></form>',
    "<!--",
    "-->",
    "<![CDATA[",
    "<",
    ">",
    "&#x6A;",
    "\x00",
    "\ufffd",
    "é",
]

_ASCII_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_ANY_BYTES = st.binary(max_size=60)


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", "replace")


@st.composite
def encoded_word(draw: st.DrawFn) -> bytes:
    """An RFC 2047 encoded word, correct or broken in one of many ways."""
    charset = draw(st.sampled_from([*CHARSETS, "utf-8*en", "utf-8*", "*"]))
    encoding = draw(st.sampled_from(["B", "Q", "b", "q", "X", "", "BQ"]))
    payload_bytes = draw(st.binary(max_size=40))
    style = draw(st.integers(0, 7))
    if encoding.upper() == "B":
        payload = base64.b64encode(payload_bytes)
        if style == 1:
            payload = payload.rstrip(b"=")  # missing padding
        elif style == 2:
            payload = payload[: max(0, len(payload) - 1)]  # truncated
        elif style == 3:
            payload = b"not base64!" + payload
    else:
        payload = b"".join(b"=%02X" % b if b > 0x7E or b < 0x21 or b in b"=?_" else bytes([b]) for b in payload_bytes)
        if style == 1:
            payload += b"="  # a lone escape at the end
        elif style == 2:
            payload += b"=G"
    word = b"=?" + _latin1(charset) + b"?" + _latin1(encoding) + b"?" + payload + b"?="
    if style == 4:
        word = word[:-2]  # never closed
    elif style == 5:
        word = word + word  # two words glued without the separating space
    elif style == 6:
        word = b"=?" + word  # nested start
    elif style == 7:
        word = word.replace(b"?", b"\r\n ", 1)  # folded in the middle of the word
    return word


@st.composite
def rfc2231_params(draw: st.DrawFn) -> bytes:
    """RFC 2231 parameters: continuations (maybe missing, duplicated, out of order) and charsets."""
    name = draw(st.sampled_from([b"filename", b"name", b"boundary", b"charset", b"x"]))
    pieces = draw(st.lists(st.binary(max_size=20), min_size=1, max_size=5))
    out = b""
    order = draw(st.permutations(list(range(len(pieces)))))
    for index in order:
        value = pieces[index]
        encoded = draw(st.booleans())
        if encoded:
            quoted = b"".join(b"%%%02X" % b for b in value)
            prefix = b""
            if index == 0:
                prefix = draw(st.sampled_from([b"utf-8''", b"iso-8859-1'en'", b"bogus''", b"''", b"'", b""]))
            out += b"; " + name + b"*%d*=" % index + prefix + quoted
        else:
            out += b"; " + name + b'*%d="' % index + value.replace(b'"', b"") + b'"'
    if draw(st.booleans()):
        out += b"; " + name + b"*=utf-8''%E2%82%AC%FF"  # the single-section form, clashing
    return out


header_value = st.one_of(
    _ASCII_TEXT.map(_latin1),
    _ANY_BYTES,
    st.lists(st.one_of(encoded_word(), _ASCII_TEXT.map(_latin1)), max_size=5).map(b" ".join),
    rfc2231_params().map(lambda p: b"attachment" + p),
    st.tuples(st.sampled_from([b"a", b"\xff", b"=?utf-8?q?x?= ", b"<x@y> "]), st.integers(0, 3000)).map(
        lambda t: t[0] * t[1]  # overlong: a value of up to some KB on one line
    ),
    st.sampled_from(
        [
            b"",
            b"\x00",
            b"a\x00b",
            b"Mon, 99 Foo 2025 99:99:99 +9999",
            b"Thu, 01 Jan 1970 00:00:00 +2400",
            b"Fri, 31 Dec 9999 23:59:59 -9999",
            b"Sun, 29 Nov 2026 07:00:00 +0100",
            b'"unclosed <a@b',
            b"Group: a@b, (comment <c@d>;",
            b"<<<>>>",
            b"by mail.example.test (Postfix) with ESMTP id ABC123; x",
            b"by x (Postfix, from userid 0) id Q; (Authenticated sender: a@b)",
        ]
    ),
)


_TOP_NAMES = [n for n in HEADER_NAMES if not n.startswith("Content-")]


@st.composite
def clean_header_line(draw: st.DrawFn) -> bytes:
    """A well-formed top-level header line (its value may still be hostile)."""
    value: bytes = draw(header_value)
    return _latin1(draw(st.sampled_from(_TOP_NAMES))) + b": " + value


@st.composite
def header_line(draw: st.DrawFn) -> bytes:
    # Mostly well-formed names and separators: a line that is no header ends the header block
    # (RFC 5322 2.2), and if most were junk, the MIME structure after them would never be read.
    name: bytes
    if draw(st.integers(0, 5)):
        name = _latin1(draw(st.sampled_from(HEADER_NAMES)))
    else:
        name = draw(st.binary(min_size=1, max_size=12).filter(lambda b: not set(b) & set(b":\r\n")))
    separator: bytes = b": " if draw(st.integers(0, 5)) else draw(st.sampled_from([b":", b" : ", b"", b":\t"]))
    value: bytes = draw(header_value)
    return name + separator + value


@dataclass(frozen=True)
class Part:
    headers: tuple[bytes, ...]
    body: bytes


@dataclass(frozen=True)
class Multipart:
    headers: tuple[bytes, ...]
    boundary_param: bytes | None  # what Content-Type declares (None: no boundary parameter)
    boundary_used: bytes  # what the delimiter lines use
    children: tuple[Part | Multipart, ...]
    close: bytes  # the close-delimiter's suffix: b"--" when well formed
    preamble: bytes
    epilogue: bytes


@st.composite
def leaf_body(draw: st.DrawFn, encoding: str) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        raw = draw(st.binary(max_size=300))
    elif kind == 1:
        raw = "".join(draw(st.lists(st.sampled_from(HTML_FRAGMENTS), max_size=30))).encode("utf-8", "surrogateescape")
    elif kind == 2:
        raw = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    elif kind == 3:
        raw = b"x" * draw(st.integers(0, 20_000))  # one overlong line
    else:
        raw = draw(_ASCII_TEXT.map(_latin1))
    if encoding.lower().startswith("base64"):
        body = base64.encodebytes(raw)
        breakage = draw(st.integers(0, 4))
        if breakage == 1:
            body = body[: len(body) // 2 + 1]  # cut mid-quantum
        elif breakage == 2:
            body = body.replace(b"=", b"") + b"!!**"  # no padding and junk characters
        elif breakage == 3:
            body = b"====" + body  # padding first
        return body
    if encoding == "quoted-printable":
        body = b"".join(b"=%02X" % b if b > 0x7E or b == 0x3D else bytes([b]) for b in raw)
        if draw(st.booleans()):
            body += draw(st.sampled_from([b"=", b"=Z", b"=\r", b"=0", b"= \r\n", b"==41"]))
        return body
    return raw


@st.composite
def part_headers(draw: st.DrawFn, content_type: bytes, encoding: str) -> tuple[bytes, ...]:
    headers = [b"Content-Type: " + content_type] if draw(st.integers(0, 9)) else []
    if encoding and draw(st.integers(0, 4)):
        headers.append(b"Content-Transfer-Encoding: " + _latin1(encoding))
    disposition = draw(st.integers(0, 7))
    if disposition == 1:
        headers.append(b"Content-Disposition: attachment; filename=" + draw(header_value))
    elif disposition == 2:
        headers.append(b"Content-Disposition: inline" + draw(rfc2231_params()))
    elif disposition == 3:
        headers.append(b"Content-Disposition: " + draw(header_value))
    if draw(st.integers(0, 2)) == 0:  # junk lines here often end the part's headers early
        headers.extend(draw(st.lists(header_line(), max_size=3)))
    return tuple(headers)


@st.composite
def leaf(draw: st.DrawFn) -> Part:
    # Half the leaves are the types the parsers treat specially (bodies, attachments, HTML).
    common = ["text/plain", "text/html", "text/html", "application/octet-stream", "image/png", "message/rfc822"]
    content_type = _latin1(draw(st.sampled_from(common if draw(st.booleans()) else CONTENT_TYPES)))
    if draw(st.booleans()):
        content_type += b"; charset=" + _latin1(draw(st.sampled_from(CHARSETS)))
    if draw(st.integers(0, 3)) == 0:
        content_type += draw(rfc2231_params())
    encoding = draw(st.sampled_from(TRANSFER_ENCODINGS))
    return Part(draw(part_headers(content_type, encoding)), draw(leaf_body(encoding)))


@st.composite
def multipart(draw: st.DrawFn, children: st.SearchStrategy[Part | Multipart]) -> Multipart:
    # Breakage at every level compounds: each multipart is broken in about a third of the draws, so
    # that deep trees are still read and the parts below are exercised too.
    boundary: bytes
    if draw(st.integers(0, 3)):
        boundary = b"b%d" % draw(st.integers(0, 10**9)) + draw(
            st.sampled_from([b"", b"=_part", b"a b", b"--", b"x" * 70])
        )
    else:
        boundary = draw(
            st.one_of(
                st.sampled_from([b"\xff\xfe", b"B\x00", b'q"q', b"x" * 200]),
                st.binary(min_size=1, max_size=12).filter(lambda b: b"\n" not in b and b"\r" not in b),
            )
        )
    declared: bytes | None = boundary
    used = boundary
    mismatch = draw(st.integers(0, 9))
    if mismatch == 1:
        declared = None  # no boundary parameter at all
    elif mismatch == 2:
        used = b"other-" + boundary  # delimiters never match the declared boundary
    elif mismatch == 3:
        declared = b""
    subtype = _latin1(draw(st.sampled_from(MULTIPART_SUBTYPES)))
    content_type = b"multipart/" + subtype
    if declared is not None:
        quote = draw(st.booleans())
        content_type += b"; boundary=" + (b'"' + declared + b'"' if quote else declared)
        if draw(st.integers(0, 5)) == 0:
            content_type += b"; boundary=dup-" + declared  # a second, different boundary parameter
    headers = [b"Content-Type: " + content_type]
    if draw(st.integers(0, 2)) == 0:
        headers.extend(draw(st.lists(header_line(), max_size=2)))
    return Multipart(
        headers=tuple(headers),
        boundary_param=declared,
        boundary_used=used,
        children=tuple(draw(st.lists(children, max_size=5))),
        close=draw(st.sampled_from([b"--", b"--", b"--", b"--", b"--", b"", b"-", b"--garbage"])),
        preamble=draw(st.sampled_from([b"", b"This is a multi-part message.", b"--" + used + b"x"])),
        epilogue=draw(st.sampled_from([b"", b"trailing junk", b"--" + used])),
    )


mime_tree: st.SearchStrategy[Part | Multipart] = st.recursive(leaf(), multipart, max_leaves=12)


def render(node: Part | Multipart, newline: bytes) -> bytes:
    """The node as bytes with `newline` between lines (the breakage is in the tree, not here)."""
    head = newline.join(node.headers)
    if isinstance(node, Part):
        return head + newline + newline + node.body.replace(b"\r\n", newline)
    lines = [node.preamble] if node.preamble else []
    for child in node.children:
        lines.append(b"--" + node.boundary_used)
        lines.append(render(child, newline))
    if node.close:
        lines.append(b"--" + node.boundary_used + node.close)
    if node.epilogue:
        lines.append(node.epilogue)
    return head + newline + newline + newline.join(lines)


@st.composite
def hostile_message(draw: st.DrawFn) -> bytes:
    """A whole message: top-level headers (maybe thousands, maybe none) and a broken MIME tree."""
    newline = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    top = draw(st.lists(clean_header_line(), max_size=8))
    if draw(st.integers(0, 3)) == 0:
        top.extend(draw(st.lists(header_line(), min_size=1, max_size=4)))  # junk names, odd separators
    repeat = draw(st.sampled_from([0, 0, 0, 50, 1500, 5000]))
    if repeat:
        # Thousands of header lines; each cut short so that the message stays around a megabyte.
        top.append(newline.join([draw(header_line())[:200]] * repeat))
    if draw(st.booleans()):
        top.append(b"MIME-Version: 1.0")
    tree = draw(mime_tree)
    body = render(tree, newline)
    if top:
        body = newline.join(top) + newline + body
    mixing = draw(st.integers(0, 6))
    if mixing == 1:
        body = body.replace(b"\n", b"\r", draw(st.integers(1, 5)))  # mixed line ends
    elif mixing == 2:
        body = body[: draw(st.integers(0, len(body)))]  # cut anywhere
    elif mixing == 3:
        body = b"From someone@somewhere Sat Jan  1 00:00:00 2000" + newline + body  # an mbox line first
    elif mixing == 4:
        body = body.replace(newline + newline, newline, 1)  # no blank line after the headers
    return body


# --- checks ---------------------------------------------------------------------------------------

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NO_CONTROLS_AT_ALL = re.compile(r"[\x00-\x1f\x7f]")
CATEGORIES = {"primary", "social", "promotions"}


class Hang(AssertionError):
    pass


def _timed(name: str, started: float) -> None:
    spent = time.monotonic() - started
    if spent > HANG_CEILING_S:
        raise Hang(f"{name} took {spent:.1f} s on one message")


def clean_str(value: object, where: str, *, controls: bool = True) -> str:
    """A str that JSON and msgpack carry as is: no lone surrogate (and no NUL or other C0 control
    unless `controls`, which bodies may hold)."""
    assert isinstance(value, str), (where, type(value))
    assert _SURROGATE.search(value) is None, (where, value[:200])
    if not controls:
        assert _NO_CONTROLS_AT_ALL.search(value) is None, (where, value[:200])
    else:
        assert "\x00" not in value, (where, value[:200])
    return value


def envelope(recipient: str = "alice@example.test") -> Envelope:
    env = Envelope()
    env.mail_from = "fuzz@outside.test"
    env.rcpt_tos = [recipient]
    return env


def check_filter_summary(raw: bytes) -> MtaAccepted | None:
    """The filter's own path (smtp_filter.build_event): a well-typed MtaAccepted that the codec
    carries to every consumer unchanged. Returns None when a documented BridgeError was raised."""
    started = time.monotonic()
    try:
        event = build_event(envelope(), raw)
    except BridgeError:
        return None
    _timed("build_event", started)
    assert event.size == len(raw)
    assert isinstance(event.direction, Direction)
    assert event.category in CATEGORIES, event.category
    assert event.date is None or (isinstance(event.date, int) and not isinstance(event.date, bool))
    assert isinstance(event.truncated, bool)
    for name in ("queue_id", "message_id", "subject", "from_", "sasl_user"):
        # Header values may keep odd bytes but never ones that break msgpack/JSON (surrogates).
        value = getattr(event, name)
        assert isinstance(value, str) and _SURROGATE.search(value) is None, (name, value[:200])
    for attachment in event.attachments:
        assert isinstance(attachment.size, int) and attachment.size >= 0, attachment
        assert isinstance(attachment.filename, str) and _SURROGATE.search(attachment.filename) is None
        assert isinstance(attachment.content_type, str) and _SURROGATE.search(attachment.content_type) is None
    for result in event.authentication_results:
        assert isinstance(result, str) and _SURROGATE.search(result) is None
    # What the consumers get: the published bytes decode (within the codec's size limit) to the same event.
    wire = codec.encode(event)
    assert len(wire) <= codec.MAX_EVENT_BYTES, len(wire)
    assert codec.decode(wire) == event
    stamp = stamped(raw, event.key)
    assert (
        stamp.startswith(b"X-Mail-Bridge-Id: ")
        and stamp.lower().count(b"x-mail-bridge-id:") <= raw.lower().count(b"x-mail-bridge-id:") + 1
    )
    return event


class _Tags(HTMLParser):
    """The tags and attributes of sanitised output as a browser tokenises them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))


def html_elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    tags = _Tags()
    tags.feed(html)
    tags.close()
    return tags.elements


def check_allowlisted(html: str) -> None:
    """Only allow-listed tags and attributes, URLs only of the allowed schemes, no CSS function but
    the colour ones, and stable under a second pass (parse and serialise agree)."""
    clean_str(html, "html")
    for tag, attrs in html_elements(html):
        assert tag in ALLOWED_TAGS, (tag, html[:500])
        allowed = ALLOWED_ATTRIBUTES["*"] | ALLOWED_ATTRIBUTES.get(tag, frozenset())
        if tag == "a":
            allowed |= {"target", "rel"}
        for name, value in attrs:
            assert name in allowed, (tag, name, html[:500])
            if name in ("href", "src"):
                scheme = (value or "").split(":", 1)[0].strip().lower()
                assert scheme in ALLOWED_URL_SCHEMES, (value, html[:500])
            if name == "style":
                stripped = re.sub(r"(?:rgba?|hsla?)\(", "", (value or "").lower())
                assert "(" not in stripped and "\\" not in stripped, (value, html[:500])
    assert sanitize_html(html, allow_remote_images=True).html == html


def check_sanitizer(html: str) -> None:
    started = time.monotonic()
    for allow in (False, True):
        result = sanitize_html(html, allow_remote_images=allow)
        assert isinstance(result.blocked_remote_images, int) and result.blocked_remote_images >= 0
        if allow:
            assert result.blocked_remote_images == 0
        check_allowlisted(result.html)
    _timed("sanitize_html", started)


def check_parsed(raw: bytes) -> ParsedMessage | None:
    """What the API serves to the browser (message_parse.parse_message): well typed, JSON-safe,
    its HTML allow-listed. Returns None when a documented BridgeError was raised."""
    started = time.monotonic()
    try:
        # parse_message(raw) is exactly this behind a last-resort guard that turns a bug into an
        # empty message; calling below the guard shows such a bug as the exception it is.
        parsed = _read(parse_tree(raw), False)
    except BridgeError:
        return None
    _timed("parse_message", started)
    for name in ("subject", "from_", "message_id", "in_reply_to"):
        clean_str(getattr(parsed, name), name, controls=False)
    for name in ("to", "cc", "references"):
        value = getattr(parsed, name)
        assert isinstance(value, tuple), name
        for item in value:
            clean_str(item, name, controls=False)
    assert parsed.date is None or re.fullmatch(r"\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\dZ", parsed.date), parsed.date
    clean_str(parsed.text, "text")
    assert isinstance(parsed.blocked_remote_images, int) and parsed.blocked_remote_images >= 0
    if parsed.html is not None:
        check_allowlisted(parsed.html)
    part_ids = set()
    for attachment in parsed.attachments:
        assert isinstance(attachment.size, int) and not isinstance(attachment.size, bool) and attachment.size >= 0
        clean_str(attachment.filename, "filename", controls=False)
        assert len(attachment.filename) <= MAX_FILENAME_CHARS
        assert "/" not in attachment.filename and "\\" not in attachment.filename, attachment.filename
        clean_str(attachment.content_type, "content_type", controls=False)
        clean_str(attachment.content_id, "content_id", controls=False)
        assert isinstance(attachment.inline, bool)
        assert re.fullmatch(r"[1-9][0-9]*(\.[1-9][0-9]*)*", attachment.part_id), attachment.part_id
        part_ids.add(attachment.part_id)
    assert len(part_ids) == len(parsed.attachments), "part ids are unique"
    if parsed.attachments:
        # What the listing offers can be downloaded (the same bounded walk finds it); the last one
        # is the furthest into the walk.
        last = parsed.attachments[-1]
        found = extract_part(raw, last.part_id)
        assert found is not None and len(found[2]) == last.size, last
    # The JSON the API builds from it (bridge/mail_service.py) must encode strictly.
    json.dumps(as_json(parsed), ensure_ascii=False).encode("utf-8")
    return parsed


def as_json(parsed: ParsedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in fields(parsed):
        value = getattr(parsed, field.name)
        if field.name == "attachments":
            value = [{f.name: getattr(a, f.name) for f in fields(a)} for a in value]
        out[field.name] = value
    return out


def html_parts(raw: bytes) -> list[str]:
    """Every text/html-looking part's decoded text, found by the standard library's lenient parser."""
    from email import message_from_bytes  # noqa: PLC0415
    from email.policy import compat32  # noqa: PLC0415

    found: list[str] = []
    try:
        message = message_from_bytes(raw, policy=compat32)
        for count, part in enumerate(message.walk()):
            if count > 200:
                break
            if part.get_content_type() == "text/html":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    found.append(payload.decode("utf-8", "replace"))
    except Exception:
        return found  # only picks inputs for the sanitiser: a message the stdlib cannot walk has none
    return found


# --- a named corpus of malformed MIME ----------------------------------------------------------------


def _nested(levels: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(levels):
        body = (
            b'Content-Type: multipart/mixed; boundary="L%d"\r\n\r\n--L%d\r\n' % (level, level)
            + body
            + b"\r\n--L%d--\r\n" % level
        )
    return body


def _parts(count: int, header: bytes) -> bytes:
    return (
        b'Content-Type: multipart/mixed; boundary="P"\r\n\r\n'
        + b"".join(b"--P\r\n" + header % i + b"\r\n\r\nx\r\n" for i in range(count))
        + b"--P--\r\n"
    )


_EMOJI_NAME = "".join(f"%{b:02X}" for b in ("\U0001f600" * 255).encode()).encode()


def received_headers(count: int) -> bytes:
    """A mail that already went through `count` hops (RFC 5321 6.3: Postfix refuses one with
    hopcount_limit, 50, Received lines as a loop)."""
    hops = b"".join(
        b"Received: from hop%d.outside.test by x; Sun, 1 Jan 2026 00:00:00 +0000\r\n" % i for i in range(count)
    )
    return hops + b"Subject: hops\r\n\r\nbody\r\n"


def malformed_corpus() -> dict[str, bytes]:
    """Hand-written malformed mail, one case per family, each a complete message."""
    mp = b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    text = b"Content-Type: text/plain\r\n\r\n"
    html = b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    return {
        "boundary-parameter-missing": b"Content-Type: multipart/mixed\r\n\r\n--B\r\n" + text + b"x\r\n--B--\r\n",
        "boundary-empty": b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n' + text + b"x\r\n----\r\n",
        "boundary-never-used": mp + b"--C\r\n" + text + b"x\r\n--C--\r\n",
        "boundary-never-closed": mp + b"--B\r\n" + text + b"half a part\r\n--B",
        "boundary-close-only": mp + b"--B--\r\n",
        "boundary-duplicate-parameter": b'Content-Type: multipart/mixed; boundary="a"; boundary="b"\r\n\r\n'
        + b"--a\r\n"
        + text
        + b"x\r\n--b\r\n"
        + text
        + b"y\r\n--a--\r\n--b--\r\n",
        "boundary-reused-by-child": mp
        + b'--B\r\nContent-Type: multipart/alternative; boundary="B"\r\n\r\n--B\r\n'
        + text
        + b"x\r\n--B--\r\n--B--\r\n",
        "boundary-8bit-garbage": b'Content-Type: multipart/mixed; boundary="\xff\xfe\x00"\r\n\r\n--\xff\xfe\x00\r\n'
        + text
        + b"x\r\n--\xff\xfe\x00--\r\n",
        "boundary-overlong": b"Content-Type: multipart/mixed; boundary="
        + b"b" * 400
        + b"\r\n\r\n--"
        + b"b" * 400
        + b"\r\n"
        + text
        + b"x\r\n--"
        + b"b" * 400
        + b"--\r\n",
        "boundary-rfc2231": b'Content-Type: multipart/mixed; boundary*0="B"; boundary*1="C"; '
        + b"boundary*=utf-8''%FF\r\n\r\n"
        + b"--BC\r\n"
        + text
        + b"x\r\n--BC--\r\n",
        "nesting-100-deep": _nested(100),
        "nesting-1500-deep": _nested(1500),
        "parts-2500": _parts(2500, b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=f%d.txt"),
        "attachments-emoji-names": _parts(
            1000,
            b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''"
            + _EMOJI_NAME.replace(b"%", b"%%")
            + b"-%d",
        ),
        "content-type-garbage": b"Content-Type: \xff\xfe/;;;===; charset\r\n\r\nbody\r\n",
        "content-type-unknown": b"Content-Type: x-made/up; charset=x-unknown\r\n\r\nbody\r\n",
        "content-type-overlong": b"Content-Type: application/" + b"a" * 20000 + b"\r\n"
        b"Content-Disposition: attachment; filename=a.bin\r\n\r\nx\r\n",
        "charset-unknown": b"Content-Type: text/plain; charset=x-no-such\r\n\r\nK\xf6ln\r\n",
        "charset-non-text-codecs": mp
        + b"".join(
            b"--B\r\nContent-Type: text/plain; charset=" + c + b"\r\n\r\n\\ud800 6869\r\n"
            for c in (b"hex", b"base64", b"zlib", b"rot13", b"undefined", b"unicode_escape", b"idna", b"punycode")
        )
        + b"--B--\r\n",
        "charset-utf7-html": b"Content-Type: text/html; charset=utf-7\r\n\r\n+ADw-script+AD4-alert(1)+ADw-/script+AD4-"
        b"+ADw-img src=x onerror=alert(1)+AD4-\r\n",
        "cte-unknown": b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-garbage\r\n\r\nbody\r\n",
        "cte-base64-broken": b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"====aGVsbG8!!**\r\nd29y\r\n",
        "cte-base64-attachment-cut": mp
        + b"--B\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        + b"Content-Disposition: attachment; filename=cut.pdf\r\n\r\nJVBERi0xLjQK"
        + b"A" * 1001
        + b"\r\n--B--\r\n",
        "cte-qp-broken": b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"=3Cscript=3Ealert(1)=3C/script=3E =ZZ =\r\n=0\r\n=",
        "cte-uuencode": b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
        b"begin 644 f\r\n!!!\r\nend\r\n",
        "rfc2047-broken": b"Subject: =?utf-8?q?=FF=FE=?= =?bogus?B?////?= =?utf-8?B?not base64!?= "
        b"=?utf-8?q?unclosed\r\n"
        b"From: =?utf-8?q?=E2=82?= <garbage@outside.test>\r\n"
        b"To: =?unicode_escape?q?=5Cud800?= <a@b>\r\n"
        b"Cc: =?=?utf-8?q?x?=?= <c@d>\r\n\r\nbody\r\n",
        "rfc2047-8bit-charset": b"Subject: =?\xff\xfe?Q?=G?= =?raw_unicode_escape?X?=8A?=\r\n\r\nbody\r\n",
        "rfc2231-broken": b'Content-Type: application/octet-stream; name*0="a"; name*2="c"; name*=utf-8\'\'%FF\r\n'
        b"Content-Disposition: attachment; filename*1*=%E2%82; filename*0*=bogus''%AC; filename*=''\r\n\r\nx\r\n",
        "filename-traversal": b"Content-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="../../etc/passwd\\x00.txt"\r\n\r\nx\r\n',
        "nul-bytes": b"Subject: a\x00b\r\nFrom: \x00 <n@outside.test>\r\nX-Nul\x00: \x00\r\n\r\nbody \x00 with nul\r\n",
        "8bit-headers": b"Subject: caf\xe9 \xff\xfe junk\r\nFrom: \xc3\x28 <junk@outside.test>\r\n"
        b"Content-Disposition: \xff\xff\xff\r\n\r\n\xff\xfe body\r\n",
        "overlong-header-line": b"Subject: " + b"long " * 20_000 + b"\r\n\r\nbody\r\n",
        "overlong-body-line": text + b"x" * 200_000 + b"\r\n",
        "line-ends-cr-only": b"Subject: cr only\rContent-Type: multipart/mixed; boundary=B\r\r"
        b"--B\rContent-Type: text/plain\r\r"
        b"x\r--B--\r",
        "line-ends-lf-only": b"Subject: lf only\nContent-Type: multipart/mixed; boundary=B\n\n"
        b"--B\nContent-Type: text/plain\n\n"
        b"x\n--B--\n",
        "line-ends-mixed": b"Subject: mixed\r\nContent-Type: multipart/mixed; boundary=B\n\r"
        b"--B\rContent-Type: text/plain\n\r\n"
        b"x\r--B--\n",
        "header-lines-10000": b"".join(b"X-Many-%d: v\r\n" % i for i in range(10_000)) + b"\r\nbody\r\n",
        "authentication-results-junk": b"".join(
            b"Authentication-Results: " + b"\xff" * 2000 + b"\r\n" for _ in range(120)
        )
        + b"\r\nbody\r\n",
        # Under Postfix's hopcount_limit (50 Received lines) even with the two Received lines Postfix
        # adds on the way through the filter.
        "received-headers-47": received_headers(47),
        "no-headers": b"\r\nonly a body\r\n",
        "headers-no-body": b"Subject: no body, no blank line",
        "missing-everything": b"x",
        "dates-absurd": b"Date: Fri, 31 Dec 9999 23:59:59 -9999\r\nFrom: Group: a@b, (comment <c@d>;\r\n\r\nx\r\n",
        "rfc822-broken-inner": mp
        + b"--B\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n"
        + b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
        + _nested(50)
        + b"\r\n--B--\r\n",
        "html-hostile-qp": mp
        + b"--B\r\n"
        + text
        + b"text\r\n--B\r\nContent-Type: text/html; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b'<svg onload=3Dalert(1)><a href=3D"javascript:alert(1)">x</a>\r\n--B--\r\n',
        "html-only-nul-and-surrogates": html + b"<b>\x00\xed\xa0\x80</b>\r\n",
        # The dedupe Sieve script drops a second mail with the same first X-Mail-Bridge-Id; only the
        # filter's own stamp may come first. These also carried the headers that made the filter's
        # summary raise (8-bit Content-Disposition, RFC 2231 sections mixed), which left them unstamped.
        "forged-bridge-id-1": b"X-Mail-Bridge-Id: forged\r\nContent-Disposition: \xff\xff\r\n\r\nfirst\r\n",
        "forged-bridge-id-2": b"X-Mail-Bridge-Id: forged\r\nContent-Type: text/plain; charset*0=a; charset*=b\r\n\r\n"
        b"second\r\n",
        "forged-bridge-id-3": b"X-Mail-Bridge-Id: forged\r\n\r\nthird\r\n",
    }
