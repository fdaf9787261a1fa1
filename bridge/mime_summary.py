"""Bounded MIME structure scan: which attachments a message carries. Pure, no I/O.

Walks multipart bodies (RFC 2046 5.1) by searching boundary lines in the original bytes, without
decoding or copying bodies: only each part's small header block is parsed. Work is bounded by
MAX_PARTS parts and MAX_DEPTH nesting levels, so a 10,000-part or deeply nested message costs
bounded time; what lies beyond is reported as truncated, never as an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from bridge.events import Attachment
from bridge.mail_headers import decode_text

MAX_PARTS = 1000
MAX_DEPTH = 8
MAX_PART_HEADER_BYTES = 16 << 10
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


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
        content_type = headers.get_content_type()
        if headers.get_content_maintype() == "multipart":
            boundary = headers.get_param("boundary")
            if isinstance(boundary, str) and boundary and depth < MAX_DEPTH:
                self.multipart(boundary.encode("ascii", "replace"), body_start, body_end, depth + 1)
            elif depth >= MAX_DEPTH:
                self.truncated = True
            return
        filename = headers.get_filename()
        disposition = (headers.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if filename is not None or disposition == "attachment":
            self.attachments.append(
                Attachment(
                    filename=decode_text(str(filename or ""))[:255],
                    content_type=content_type,
                    size=max(0, body_end - body_start),
                )
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
