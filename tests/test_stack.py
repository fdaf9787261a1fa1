"""The launcher: what `make run` and the fixtures share."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis

from bridge.settings import StackSettings, suite_state_dir
from bridge.stack.launcher import Stack, StackError, StackInfo, free_ports
from bridge.stack.render import world_traversable
from tests.common import REPO, stack_ports_env
from tests.mailtools import imap_message_ids, send_smtp

pytestmark = pytest.mark.e2e


def banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        return sock.recv(100)


def test_stack_json_describes_a_running_stack(stack: StackInfo) -> None:
    data = json.loads((Path(stack.state_dir) / "stack.json").read_text())
    for key in ("web_url", "smtp", "submission", "imap", "redis_url", "mongodb_url", "users"):
        assert key in data
    assert {u["email"] for u in data["users"]} == {"alice@example.test", "bob@example.test"}
    assert all(len(u["password"]) >= 12 for u in data["users"])
    assert banner(stack.smtp["host"], stack.smtp["port"]).startswith(b"220")
    assert banner(stack.submission["host"], stack.submission["port"]).startswith(b"220")
    assert banner(stack.imap["host"], stack.imap["port"]).startswith(b"* OK")


def test_the_suite_stack_lives_where_the_mail_user_reaches(stack: StackInfo) -> None:
    state = Path(stack.state_dir)
    assert world_traversable(state)
    if "MAIL_BRIDGE_TEST_STATE" not in os.environ:  # a state directory named by hand is where it was named
        assert state == suite_state_dir(REPO)
        # `var` in the checkout is that place, or links to it.
        assert (REPO / "var").resolve() == state.parent.resolve()


def _settings_with(base: StackSettings, tmp_path: Path, **ports: int) -> StackSettings:
    fresh = dict(zip(base.ports, free_ports(len(base.ports)), strict=True))
    fresh.update(ports)
    return replace(base, ports=fresh, state_dir=tmp_path / "state")


def test_port_in_use_is_one_clear_error(stack_settings: StackSettings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher = Stack(_settings_with(stack_settings, tmp_path, smtp=port))
        with pytest.raises(StackError, match=f"port already in use on 127.0.0.1: {port} \\(BRIDGE_SMTP_PORT\\)"):
            launcher.start()
        launcher.stop()
    assert not launcher.services


def test_missing_store_binary_is_one_clear_error(stack_settings: StackSettings, tmp_path: Path) -> None:
    settings = replace(_settings_with(stack_settings, tmp_path), ferretdb_bin=tmp_path / "no-ferretdb")
    with pytest.raises(StackError, match=r"no-ferretdb.*make setup"):
        Stack(settings).start()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("interrupt_after_s", [0.8, None])
def test_run_command_stops_everything_it_started(
    stack_settings: StackSettings, tmp_path: Path, interrupt_after_s: float | None
) -> None:
    """`mail-bridge stack` interrupted mid-start, or after it is up, leaves no process behind."""
    # Beside the suite's stack: Dovecot's mail user must be able to reach it (pytest's tmp is private).
    state = stack_settings.state_dir.parent / f"test-run-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BRIDGE_STATE_DIR": str(state)}
    env.update(stack_ports_env())
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "stack"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if interrupt_after_s is None:
        deadline = time.monotonic() + 60
        while not (state / "stack.json").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "stack did not come up"
            time.sleep(0.1)
        assert _processes_mentioning(str(state)), "services should be running"
    else:
        time.sleep(interrupt_after_s)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert _processes_mentioning(str(state)) == []
    assert not (state / "stack.json").exists()
    shutil.rmtree(state, ignore_errors=True)


@contextmanager
def bare_stack(stack_settings: StackSettings, *parts: str) -> Iterator[tuple[Stack, StackInfo, Path]]:
    """A bare stack (BRIDGE_STACK_BARE) of its own, keeping `parts` of ours; removed afterwards."""
    state = stack_settings.state_dir.parent / f"test-bare-{uuid.uuid4().hex[:8]}"
    ports = dict(zip(stack_settings.ports, free_ports(len(stack_settings.ports)), strict=True))
    settings = replace(stack_settings, ports=ports, state_dir=state, bare=True, bare_with=frozenset(parts))
    launcher = Stack(settings)
    try:
        yield launcher, launcher.start(), state
    finally:
        launcher.stop()
        shutil.rmtree(state, ignore_errors=True)


def plain_mail(to: str, subject: str) -> tuple[EmailMessage, str]:
    message_id = f"<{subject}-{uuid.uuid4().hex}@outside.test>"
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "carol@outside.test", to, subject, message_id
    m.set_content(f"delivered by a {subject} stack\n")
    return m, message_id


def test_a_bare_stack_is_dovecot_and_postfix_alone(stack_settings: StackSettings) -> None:
    """BRIDGE_STACK_BARE (the benchmark's baseline): mail goes Postfix → LMTP → Dovecot as before
    mail-bridge, with no content filter, push hook or dedupe script, and no Redis, store or bridge."""
    with bare_stack(stack_settings) as (launcher, info, state):
        assert sorted(s.name for s in launcher.services) == ["dovecot", "postfix"]
        main_cf = (state / "postfix" / "etc" / "main.cf").read_text()
        master_cf = (state / "postfix" / "etc" / "master.cf").read_text()
        assert "content_filter" not in main_cf and "_destination_recipient_limit" not in main_cf
        assert "mail-bridge unix" not in master_cf and "mail-bridge-cleanup" not in master_cf
        dovecot_conf = "".join(p.read_text() for p in (state / "dovecot").glob("9*.conf"))
        assert "push_notification" not in dovecot_conf and "sieve" not in dovecot_conf
        user = info.users[0]
        m, message_id = plain_mail(user["email"], "bare")
        send_smtp(info, [m])
        deadline = time.monotonic() + 30
        while message_id not in imap_message_ids(info, user["email"], user["password"]):
            assert time.monotonic() < deadline, "not delivered"
            time.sleep(0.2)


def test_a_bare_stack_can_keep_our_push_hook_alone(stack_settings: StackSettings) -> None:
    """BRIDGE_STACK_BARE_WITH=hook (the benchmark prices each part of ours alone): Redis and the
    hook, which writes each delivery's event to a stream; no filter, dedupe script or bridge."""
    with bare_stack(stack_settings, "hook") as (launcher, info, state):
        assert sorted(s.name for s in launcher.services) == ["dovecot", "postfix", "redis"]
        assert "push_notification" in (state / "dovecot" / "90-mail-bridge.conf").read_text()
        assert "sieve" not in (state / "dovecot" / "92-mail-bridge-dedupe.conf").read_text()
        assert "content_filter" not in (state / "postfix" / "etc" / "main.cf").read_text()
        m, message_id = plain_mail(info.users[0]["email"], "hook")
        send_smtp(info, [m])
        client = redis.Redis.from_url(info.redis_url)
        deadline = time.monotonic() + 30
        while not any(message_id.encode() in entry for entry in _stream_entries(client)):
            assert time.monotonic() < deadline, "no event on a stream"
            time.sleep(0.2)
        client.close()


def _stream_entries(client: redis.Redis) -> list[bytes]:
    """Every entry of every stream in Redis, its fields and values joined."""
    return [
        b"".join([*fields.keys(), *fields.values()])
        for stream in client.scan_iter(_type="stream")
        for _entry_id, fields in client.xrange(stream)
    ]
