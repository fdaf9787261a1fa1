#!/usr/bin/python3
"""mail-bridge Sieve notifier: the alternative to the Lua push hook, for deliveries only.

Run by Pigeonhole's extprograms (`execute :pipe`) at LMTP/LDA time, as the mail user, with the
message on stdin (see dovecot-conf/93-mail-bridge-sieve.conf). It publishes one `message.new`
event (docs/events.md) with the headers it can read. Sieve runs before the mail is stored, so there
is no UID yet: `uid` and `uidvalidity` are 0. Standard library only (it runs under /usr/bin/python3,
outside any virtualenv); the same bounded Redis exchange and the same spool as the Lua hook.

usage: mail-bridge-sieve-notify.py REDIS_HOST REDIS_PORT STREAM SPOOL_DIR [TIMEOUT_MS]
The account is taken from the environment Pigeonhole sets (USER, else RECIPIENT).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import sys
import time
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr, parsedate_to_datetime

MAX_HEADER_BYTES = 256 << 10
MAX_TEXT = 4096


def pack(value: object, out: list[bytes]) -> None:
    """A MessagePack writer for the types an event uses (msgpack.org spec)."""
    if value is None:
        out.append(b"\xc0")
    elif value is True or value is False:
        out.append(b"\xc3" if value else b"\xc2")
    elif isinstance(value, int):
        if 0 <= value < 0x80:
            out.append(struct.pack("B", value))
        elif 0 <= value < 2**64:
            out.append(struct.pack(">BQ", 0xCF, value))
        elif -32 <= value < 0:
            out.append(struct.pack("b", value))
        else:
            out.append(struct.pack(">Bq", 0xD3, value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "replace")
        n = len(data)
        if n < 32:
            out.append(struct.pack("B", 0xA0 | n))
        elif n < 0x100:
            out.append(struct.pack(">BB", 0xD9, n))
        elif n < 0x10000:
            out.append(struct.pack(">BH", 0xDA, n))
        else:
            out.append(struct.pack(">BI", 0xDB, n))
        out.append(data)
    elif isinstance(value, list | tuple):
        out.append(struct.pack(">BI", 0xDD, len(value)))
        for item in value:
            pack(item, out)
    elif isinstance(value, dict):
        out.append(struct.pack(">BI", 0xDF, len(value)))
        for key in sorted(value):
            pack(key, out)
            pack(value[key], out)
    else:
        raise TypeError(f"cannot pack {type(value).__name__}")


def packb(value: object) -> bytes:
    out: list[bytes] = []
    pack(value, out)
    return b"".join(out)


def text(raw: object, limit: int = MAX_TEXT) -> str:
    value = "" if raw is None else str(raw)
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:limit]


def decoded(raw: object) -> str:
    try:
        return text(make_header(decode_header(text(raw))))
    except Exception:  # any junk header: keep it raw
        return text(raw)


def build_event(message: bytes, account: str) -> dict[str, object]:
    end = message.find(b"\n\n", 0, MAX_HEADER_BYTES)
    end_crlf = message.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
    cut = min(x for x in (end, end_crlf, MAX_HEADER_BYTES) if x != -1)
    headers = BytesHeaderParser(policy=compat32).parsebytes(message[:cut] + b"\n\n")
    from_name, from_address = parseaddr(text(headers.get("From")))
    to_name, to_address = parseaddr(text(headers.get("To")))
    event: dict[str, object] = {
        "v": 1,
        "kind": "message.new",
        "key": f"sieve:{time.time_ns():x}-{secrets.token_hex(4)}",
        "ts": time.time_ns() // 1_000_000,
        "account": text(account, 512),
        "mailbox": "INBOX",
        "uidvalidity": 0,
        "uid": 0,
        "from": text(headers.get("From")),
        "from_address": text(from_address, 512),
        "from_name": decoded(from_name)[:512],
        "to": text(headers.get("To")),
        "to_address": text(to_address, 512),
        "to_name": decoded(to_name)[:512],
        "subject": decoded(headers.get("Subject"))[:2048],
        "message_id": text(headers.get("Message-ID"), 1024).strip(),
        "flags": [],
        "keywords": [],
    }
    try:
        date = parsedate_to_datetime(text(headers.get("Date")))
        event["date"] = int(date.timestamp())
        offset = date.utcoffset()
        event["tz"] = int(offset.total_seconds() // 60) if offset is not None else 0
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    return event


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def publish(host: str, port: int, stream: str, payload: bytes, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    try:
        for _attempt in range(2):
            with socket.create_connection((host, port), timeout=max(0.001, deadline - time.monotonic())) as sock:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(resp(b"XADD", stream.encode(), b"MAXLEN", b"~", b"1000000", b"*", b"e", payload))
                reply = b""
                while True:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                    if reply.startswith(b"$") and reply.count(b"\r\n") >= 2:
                        return True  # the new entry's id
                    if not reply.startswith(b"$") and b"\r\n" in reply:
                        break  # an error reply
            # Redis Cluster: the stream's slot is on another node, "-MOVED <slot> <host>:<port>"
            # (Redis Cluster specification, "Redirection and resharding"): try there, once.
            words = reply.split(b"\r\n", 1)[0].split()
            if len(words) != 3 or words[0] != b"-MOVED":
                return False
            moved_host, _, moved_port = words[2].decode().rpartition(":")
            host, port = (moved_host if moved_host not in ("", "?") else host), int(moved_port)
    except (OSError, ValueError):
        return False
    return False


def spool(spool_dir: str, stream: str, event: dict[str, object]) -> None:
    """The spool's protocol (bridge/spool.py): the .tmp first, then the marker raised as a new file
    renamed onto PENDING (never touched in place), then the data, then the rename to .mp."""
    name = os.path.join(spool_dir, f"{time.time_ns() // 1000:016d}-{secrets.randbits(32):08x}")
    try:
        with open(name + ".tmp", "xb") as f:
            marker = os.path.join(spool_dir, f".pending-{time.time_ns() // 1000:016d}-{secrets.randbits(32):08x}")
            open(marker, "x").close()
            os.replace(marker, os.path.join(spool_dir, "PENDING"))
            f.write(packb([stream, event]))
        os.replace(name + ".tmp", name + ".mp")
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(name + ".tmp")
        raise


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 0  # never fail the delivery over our own misconfiguration
    host, port, stream, spool_dir = argv[1], int(argv[2]), argv[3], argv[4]
    timeout_s = (int(argv[5]) if len(argv) == 6 else 100) / 1000
    account = os.environ.get("USER") or os.environ.get("RECIPIENT") or ""
    message = sys.stdin.buffer.read(MAX_HEADER_BYTES)
    event = build_event(message, account)
    pending = os.path.exists(os.path.join(spool_dir, "PENDING"))
    if pending or not publish(host, port, stream, packb(event), timeout_s):
        try:
            spool(spool_dir, stream, event)
        except OSError as exc:
            print(f"mail-bridge: LOST 1 event: cannot write spool {spool_dir}: {exc}", file=sys.stderr)
    # Sieve `execute :pipe` keeps writing the message to us: drain it so it sees no broken pipe.
    while sys.stdin.buffer.read(1 << 16):
        pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as exc:  # a notifier must never fail a delivery
        print(f"mail-bridge: sieve notifier failed: {exc!r}", file=sys.stderr)
        sys.exit(0)
