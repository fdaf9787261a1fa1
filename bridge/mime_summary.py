"""Bounded MIME structure scan: which attachments a message carries. Pure, no I/O.

Walks multipart bodies (RFC 2046 5.1) by searching boundary lines in the original bytes, without
decoding or copying bodies: only each part's small header block is parsed. Work is bounded by
MAX_PARTS parts and MAX_DEPTH nesting levels, so a 10,000-part or deeply nested message costs
bounded time; what lies beyond is reported as truncated, never as an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TypeVar

from bridge.events import Attachment
from bridge.mail_headers import decode_text

MAX_PARTS = 1000
MAX_DEPTH = 8
MAX_PART_HEADER_BYTES = 16 << 10
# UTF-8 bytes of names and types listed per message. The list travels in one mta.accepted event,
# which consumers refuse above codec.MAX_EVENT_BYTES (1 MiB): 1,000 attachments with 255-character
# emoji names came to 1.1 MB, and the whole summary was lost. Beyond the budget: truncated.
MAX_LISTED_BYTES = 256 << 10
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
# RFC 6838 4.2 restricted-name characters, at most 127 each side: anything else is not a media
# type worth passing on (the same rule as bridge.message_parse).
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_T = TypeVar("_T")
_D = TypeVar("_D")


def _guard(call: Callable[[], _T], default: _D) -> _T | _D:
    """`call()`, or `default` when the standard library's header accessors fail on hostile input:
    compat32 hands back Header objects for 8-bit values, and RFC 2231 sections that mix the
    numbered and unnumbered forms make email.utils.decode_params raise TypeError."""
    try:
        return call()
    except Exception:
        return default


@dataclass(frozen=True, slots=True)
class MimeSummary:
    attachments: tuple[Attachment, ...]
    truncated: bool


class _Walk:
    def __init__(self, message: bytes) -> None:
        self.message = message
        self.parts = 0
        self.truncated = False
        self.attachments: list[Attachment] = []
        self.listed_bytes = 0

    def headers_at(self, start: int, end: int) -> tuple[Message, int]:
        """Parse the header block of the part spanning [start, end); returns it and its body start."""
        limit = min(end, start + MAX_PART_HEADER_BYTES)
        if self.message.startswith(b"\r\n", start) or self.message.startswith(b"\n", start):
            # No headers at all: the part is text/plain (RFC 2046 5.1.1).
            return Message(), start + (2 if self.message.startswith(b"\r\n", start) else 1)
        match = _BLANK_LINE.search(self.message, start, limit)
        body = match.end() if match is not None else limit
        block = self.message[start : match.start() if match is not None else limit]
        return BytesHeaderParser(policy=compat32).parsebytes(block + b"\n\n"), body

    def part(self, headers: Message, body_start: int, body_end: int, depth: int) -> None:
        self.parts += 1
        content_type = _guard(headers.get_content_type, "application/octet-stream")
        if content_type.startswith("multipart/"):
            boundary = _guard(headers.get_boundary, None)
            if isinstance(boundary, str) and boundary and depth < MAX_DEPTH:
                self.multipart(boundary.encode("ascii", "replace"), body_start, body_end, depth + 1)
            elif depth >= MAX_DEPTH:
                self.truncated = True
            return
        if _MEDIA_TYPE.match(content_type) is None:
            content_type = "application/octet-stream"
        filename = _guard(headers.get_filename, None)
        disposition = _guard(headers.get_content_disposition, None)
        if filename is not None or disposition == "attachment":
            name = decode_text(str(filename or ""))[:255]
            self.listed_bytes += len(name.encode("utf-8")) + len(content_type)
            if self.listed_bytes > MAX_LISTED_BYTES:
                self.truncated = True
                return
            self.attachments.append(
                Attachment(filename=name, content_type=content_type, size=max(0, body_end - body_start))
            )

    def multipart(self, boundary: bytes, start: int, end: int, depth: int) -> None:
        delimiter = b"--" + boundary
        position = self.message.find(delimiter, start, end)
        while position != -1:
            if self.parts >= MAX_PARTS:
                self.truncated = True
                return
            line_end = self.message.find(b"\n", position, end)
            if line_end == -1 or self.message.startswith(b"--", position + len(delimiter)):
                return  # the close-delimiter, or a body that ends mid-line
            part_start = line_end + 1
            following = self.message.find(b"\n" + delimiter, part_start, end)
            part_end = following if following != -1 else end
            if part_end > part_start and self.message[part_end - 1 : part_end] == b"\r":
                part_end -= 1
            headers, body_start = self.headers_at(part_start, part_end)
            self.part(headers, body_start, part_end, depth)
            position = following + 1 if following != -1 else -1


def summarize_mime(message: bytes, headers: Message, body_start: int) -> MimeSummary:
    walk = _Walk(message)
    walk.part(headers, body_start, len(message), 0)
    return MimeSummary(tuple(walk.attachments), walk.truncated)
