"""Redis replies as text: the one helper for a reply value that may be bytes or str.

redis-py returns bytes from a client made without `decode_responses` (the bridge's own) and str from
one made with it; code reading stream ids, keys and names out of replies takes either, so it does
not depend on how the client it was handed was made.
"""

from __future__ import annotations


def text(value: bytes | str) -> str:
    """`value` as str (bytes are UTF-8: ids, keys and names the bridge wrote)."""
    return value.decode() if isinstance(value, bytes) else value
