"""The MIME structure of a message: the tree, built and walked within bounds. Pure, no I/O.

`parse_tree` builds the message tree with the standard library's feed parser (policy
`email.policy.default`), stopping at MAX_PARSED_PARTS parts. `walk` lists its leaf parts in
document order, numbered like IMAP BODY[section] (RFC 3501 6.4.5), entering at most MAX_PARTS parts
and MAX_DEPTH levels of multipart (an encapsulated message/rfc822 is one leaf, not entered), with
each leaf's type, disposition, file name and Content-ID read once. `classify` picks the bodies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.feedparser import BytesFeedParser
from email.message import EmailMessage, Message
from email.policy import Policy

from bridge.message_content import part_filename
from bridge.message_headers import POLICY, guard, header_text

MAX_PARTS = 1000
MAX_DEPTH = 16
# Parsing itself stops after this many parts (see parse_tree). The margin over MAX_PARTS leaves room
# for the parts inside encapsulated messages and below MAX_DEPTH, which are built but not walked.
MAX_PARSED_PARTS = 2 * MAX_PARTS

# RFC 6838 4.2 restricted-name characters: anything else is not a media type we pass on.
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


@dataclass(frozen=True, slots=True)
class Leaf:
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


def parse_tree(raw: bytes) -> Message:
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
        message = EmailMessage(policy=POLICY)
        if root is None:
            root = message
        return message

    parser = BytesFeedParser(policy=POLICY.clone(message_factory=build))
    try:
        parser.feed(raw)
        return parser.close()
    except Exception:
        # _PartLimitReached, or RecursionError: the parser recurses once per nesting level, so a
        # few thousand nested multiparts exhaust the stack. Either way keep what was built.
        return root if root is not None else EmailMessage(policy=POLICY)


class _PartLimitReached(Exception):
    pass


def walk(message: Message) -> list[Leaf]:
    """The leaf parts in document order, numbered like IMAP sections, within MAX_PARTS/MAX_DEPTH."""
    leaves: list[Leaf] = []
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


def _describe(part: Message, part_id: str) -> Leaf:
    content_type = guard(part.get_content_type, "application/octet-stream")
    if content_type.startswith("multipart/"):
        # A multipart whose boundary was missing or never found is left as one unparsed body;
        # showing it as text (the RFC 2045 5.2 default) beats hiding it.
        content_type = "text/plain"
    if _MEDIA_TYPE.match(content_type) is None:
        content_type = "application/octet-stream"
    disposition = (guard(part.get_content_disposition, None) or "").strip().lower()
    if disposition not in ("inline", "attachment"):
        disposition = "attachment" if disposition else ""  # RFC 2183 2.8: unknown means attachment
    content_id = header_text(part, "Content-ID").strip().strip("<>").strip()
    return Leaf(
        part_id=part_id,
        part=part,
        content_type=content_type,
        disposition=disposition,
        filename=part_filename(part),
        content_id=content_id,
    )


def classify(leaves: list[Leaf]) -> tuple[Leaf | None, Leaf | None, list[Leaf]]:
    """Pick the first text/plain and first text/html body parts; every other leaf is an attachment."""
    text: Leaf | None = None
    html: Leaf | None = None
    attachments: list[Leaf] = []
    for leaf in leaves:
        if leaf.is_body and leaf.content_type == "text/plain" and text is None:
            text = leaf
        elif leaf.is_body and leaf.content_type == "text/html" and html is None:
            html = leaf
        else:
            attachments.append(leaf)
    return text, html, attachments
