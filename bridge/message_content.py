"""A MIME part's content and name: what a reader gets of a body or an attachment. Pure, no I/O.

The bytes with the Content-Transfer-Encoding undone (RFC 2045 6), an encapsulated message as a
message file, text decoded with its charset (read as the wider encoding real senders mean), and
the file name as a label (the last path component, cut at MAX_FILENAME_CHARS). Nothing here raises
on malformed input: bad base64 decodes what it can, an unknown charset reads as UTF-8.
"""

from __future__ import annotations

import email.policy
import re
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from io import BytesIO

from bridge.message_headers import clean_header, guard

MAX_FILENAME_CHARS = 255

# Re-emits source header lines as they came, so an encapsulated message's bytes are not refolded.
_VERBATIM = email.policy.default.clone(refold_source="none", linesep="\r\n")
_SURROGATES_AND_NUL = re.compile(r"[\ud800-\udfff\x00]")

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


def part_filename(part: Message) -> str:
    # get_filename reads Content-Disposition's filename, then Content-Type's name, and joins and
    # decodes RFC 2231 continuations and charsets (the policy also decodes RFC 2047 words there,
    # which some mailers wrongly use).
    name = guard(part.get_filename, None)
    if not isinstance(name, str):
        return ""
    # Keep only the last path component: the name is only a label and a download name.
    name = re.split(r"[/\\]", clean_header(name))[-1].strip()
    return name[:MAX_FILENAME_CHARS]


def payload_bytes(part: Message) -> bytes:
    """The part's content with its Content-Transfer-Encoding (RFC 2045 6) undone."""
    if isinstance(guard(part.get_payload, None), list):
        # Only a message/* part gets here with a list payload: walk enters real multiparts.
        return _encapsulated_bytes(part)
    try:
        # Tolerant: bad base64 decodes what it can, an unknown encoding returns the bytes as sent.
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = guard(part.get_payload, None)
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


def decode_text(part: Message, limit: int) -> str:
    """The text of a text/* part, decoded with its charset (RFC 2045 5.1, RFC 2046 4.1.2)."""
    # Bounds the decoding work. Four bytes per character covers UTF-8, UTF-16/32 and the legacy
    # multi-byte charsets, so the cut normally loses nothing that the character cut below keeps.
    data = payload_bytes(part)[: limit * 4]
    charset = (guard(part.get_content_charset, None) or "utf-8").strip().lower()
    charset = _CHARSET_SUPERSETS.get(charset, charset)
    try:
        text = data.decode(charset, "replace")
    except Exception:
        # Unknown or non-text codec (LookupError), or a codec that rejects "replace".
        text = data.decode("utf-8", "replace")
    # NUL is no text in any charset mail uses, and an HTML parser never passes one through (WHATWG
    # HTML 13.2.5): shown as U+FFFD, so no consumer of the API's JSON meets a NUL (a C string).
    return _SURROGATES_AND_NUL.sub("\ufffd", text[:limit])
