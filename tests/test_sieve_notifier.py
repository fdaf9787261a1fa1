"""The Sieve notifier (the alternative to the Lua hook), run as Pigeonhole runs it: message on stdin."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from bridge import codec
from bridge.events import MessageNew
from bridge.spool import SpoolDrainer
from bridge.stack.launcher import StackInfo
from tests.common import REPO, free_port

pytestmark = pytest.mark.e2e

NOTIFIER = REPO / "hooks" / "mail-bridge-sieve-notify.py"
MESSAGE = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@outside.test>\r\nTo: Alice <alice@example.test>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <s1@outside.test>\r\n"
    b"Date: Sun, 29 Nov 2026 07:00:00 +0100\r\n\r\n" + b"body line\r\n" * 10_000
)


def run(host: str, port: int, stream: str, spool: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["/usr/bin/python3", str(NOTIFIER), host, str(port), stream, str(spool), "100"],
        input=MESSAGE,
        env={"USER": "alice@example.test", "RECIPIENT": "alice@example.test", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_publishes_a_message_new_event(stack: StackInfo, tmp_path: Path) -> None:
    stream = f"test:sieve:{uuid.uuid4().hex[:8]}"
    host, port = stack.redis_url.split("//")[1].split("/")[0].split(":")
    result = run(host, int(port), stream, tmp_path)
    assert result.returncode == 0, result.stderr
    client = redis.Redis.from_url(stack.redis_url)
    ((_entry_id, fields),) = client.xrange(stream)
    client.delete(stream)
    event = codec.decode(fields[b"e"])
    assert isinstance(event, MessageNew)
    assert (event.account, event.mailbox, event.uid, event.uidvalidity) == ("alice@example.test", "INBOX", 0, 0)
    assert (event.from_name, event.from_address, event.subject) == ("Jürgen", "j@outside.test", "Grüße")
    assert (event.message_id, event.date, event.tz) == ("<s1@outside.test>", 1795932000, 60)


async def test_spools_when_redis_is_unreachable(stack: StackInfo, tmp_path: Path) -> None:
    result = run("127.0.0.1", free_port(), "mail:dovecot", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "PENDING").exists()
    (spooled,) = tmp_path.glob("*.mp")
    drainer = SpoolDrainer(None, tmp_path, 1000)  # type: ignore[arg-type]  # reading only
    records, bad = drainer._records(spooled)
    assert bad == 0
    ((stream, event),) = records
    assert stream == "mail:dovecot" and isinstance(event, MessageNew) and event.subject == "Grüße"
