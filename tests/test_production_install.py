"""`mail-bridge install` on a copy of a typical Debian 12 virtual-mail server, then the server run from
the installed configs, with the bridge and the filter started as the installed units start them.
As the README's Production path has it: the `mail-bridge` of the wheel installed in a venv outside
the checkout (tests/wheel_install.py), run from outside the checkout; the units run that program.

The server (tests/mail_server_copy.py) already has what admins have: an amavis-style content filter
and a `sieve_before` spam rule that files tagged mail into Junk. After the install, through the
server's own port 25: a mail is delivered once and reaches a socket as `new_email`; spam still goes
to Junk; `message.new` and `mta.accepted` are on the streams; the body is read over REST (through
Dovecot's master user, so the master-user file is readable by Dovecot); a new user's first delivery
logs nothing. Then `--uninstall` puts both config directories back byte for byte.
Redis is this test's own; the store is the session's FerretDB, in a database of this test's own.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bridge import codec
from bridge.events import MessageNew, MtaAccepted
from bridge.stack.launcher import StackInfo, free_ports
from tests.mail_server_copy import DEFAULT_USERS, VirtualMailServer, scratch_mail_server
from tests.socket_client import RecordingClient
from tests.test_install import _same_tree
from tests.wheel_install import Installed, clean_env, run

pytestmark = pytest.mark.e2e

# Lines the logs may hold that are no fault: Dovecot's master on SIGTERM and on a reload.
EXPECTED_NOISE = ("Killed with signal 15", "SIGHUP received - reloading configuration")


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.split("=", 1)[1])


class Units:
    """The bridge's two units' commands, run as children with their EnvironmentFile (plus this
    test's own HTTP port and database), logging into the scratch root; stopped by PID."""

    def __init__(self, server: VirtualMailServer, overrides: dict[str, str]) -> None:
        self.server = server
        self.env = {**clean_env(), **_env_file(server.root / "mail-bridge" / "etc" / "mail-bridge.env"), **overrides}
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for name in ("mail-bridge-filter", "mail-bridge"):
            argv = _exec_start(self.server.root / "mail-bridge" / "systemd" / f"{name}.service")
            with open(self.server.log_dir / f"{name}.out", "ab") as out:
                self.processes.append(
                    subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd="/")
                )

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@pytest.fixture
def own_redis() -> Iterator[int]:
    port = free_ports(1)[0]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        ping = ["redis-cli", "-p", str(port), "ping"]
        while subprocess.run(ping, capture_output=True, check=False).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _wait_healthy(url: str, units: Units, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            assert all(p.poll() is None for p in units.processes), "a unit exited; see its .out in the scratch log dir"
            try:
                async with http.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the bridge did not become healthy"
            await asyncio.sleep(0.2)


async def _stream_events(redis_port: int, stream: str) -> list[object]:
    client = aioredis.Redis(port=redis_port)
    try:
        return [codec.decode(fields[b"e"]) for _id, fields in await client.xrange(stream)]
    finally:
        await client.aclose()


async def _until(probe: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _install(installed: Installed, server: VirtualMailServer, *extra: str) -> subprocess.CompletedProcess[str]:
    """The wheel's `mail-bridge install`, pointed at the copy (its flags as the harness gives them)."""
    flags = server.install_command(*extra)[server.install_command().index("install") + 1 :]
    return run([installed.command("mail-bridge"), "install", *flags], installed.outside, timeout=180)


def test_install_on_a_virtual_mail_server_keeps_the_admins_setup_and_reaches_the_browser(
    stack: StackInfo, own_redis: int, installed: Installed
) -> None:
    with scratch_mail_server({**DEFAULT_USERS, "carol": "carol-Pw-3"}) as server:
        before = server.root / "before"
        shutil.copytree(server.dovecot_dir, before / "dovecot", symlinks=True)
        shutil.copytree(server.postfix_dir, before / "postfix", symlinks=True)
        flags = ("--chain-content-filter", f"--redis-port={own_redis}", f"--mongodb-url={stack.mongodb_url}")
        done = _install(installed, server, "--yes", *flags)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (
            f"ExecStart={installed.command('mail-bridge')} filter"
            in (server.root / "mail-bridge" / "systemd" / "mail-bridge-filter.service").read_text()
        )
        server.start()
        mark = server.log_mark()
        http_port = free_ports(1)[0]
        units = Units(
            server, {"BRIDGE_HTTP_PORT": str(http_port), "BRIDGE_MONGODB_DATABASE": f"prod{uuid.uuid4().hex[:8]}"}
        )
        try:
            units.start()
            asyncio.run(_browser_path(server, units, own_redis, f"http://127.0.0.1:{http_port}"))
        finally:
            units.stop()
            server.stop()
        noise = [line for line in server.errors_in_logs(mark) if not any(n in line for n in EXPECTED_NOISE)]
        assert noise == [], "\n".join(noise)

        removed = _install(installed, server, "--uninstall", "--no-reload")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert _same_tree(server.dovecot_dir, before / "dovecot") == []
        assert _same_tree(server.postfix_dir, before / "postfix") == []


async def _filter_ready(units: Units, timeout: float = 60) -> None:
    """The filter answers its 220 banner: mail sent before that would be deferred (4xx) and wait for
    Postfix's next queue run, minutes later (correct, but not what this test looks at)."""
    deadline = time.monotonic() + timeout
    while True:
        assert all(p.poll() is None for p in units.processes), "a unit exited; see its .out in the scratch log dir"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(units.env["BRIDGE_FILTER_PORT"]))
            banner = await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"QUIT\r\n")
            writer.close()
            if banner.startswith(b"220"):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the filter did not answer"
        await asyncio.sleep(0.2)


async def _browser_path(server: VirtualMailServer, units: Units, redis_port: int, web_url: str) -> None:
    await _wait_healthy(web_url, units)
    await _filter_ready(units)
    alice = server.address("alice")
    async with aiohttp.ClientSession(web_url) as http:
        async with http.post("/api/v1/auth/login", json={"email": alice, "password": DEFAULT_USERS["alice"]}) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["token"]
        socket = RecordingClient()
        await socket.connect(web_url, token)
        try:
            subject = f"hello {uuid.uuid4().hex[:6]}"
            message_id = await asyncio.to_thread(
                server.send, "carol@example.net", ["alice"], subject, "Noon at the usual place.\n"
            )
            try:
                new = await socket.wait_for("new_email", lambda e: e["subject"] == subject, timeout=30)
            except TimeoutError:
                raise AssertionError(f"no new_email for {subject!r}; the logs:\n{server.logs()[-6000:]}") from None
        finally:
            await socket.close()
        # Delivered once (through our filter, then the admin's, then Dovecot), a new user's first mail.
        assert len(await asyncio.to_thread(server.wait_for_messages, "alice", 1)) == 1
        assert new["messageId"] == message_id
        # The body, fetched over IMAP with Dovecot's master user.
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"/api/v1/email/{new['id']}", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert "Noon at the usual place." in (await r.json())["text"]
        # Sent from the browser: through the server's submission service, which demands STARTTLS
        # before AUTH (the installer found that and said so in the env file), to a user on the server.
        assert units.env["BRIDGE_SUBMISSION_STARTTLS"] == "yes"
        payload = {"to": [server.address("carol")], "subject": "from the web", "body": "Sent from a browser."}
        async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
            assert r.status == 200, await r.text()
        assert len(await asyncio.to_thread(server.wait_for_messages, "carol", 1)) == 1

    # Bob has never logged in: this is a new user's first delivery, through the dedupe script (the
    # logs are checked for its errors afterwards).
    assert not server.home("bob").exists()
    await asyncio.to_thread(server.send, "carol@example.net", ["bob"], "welcome")
    assert len(await asyncio.to_thread(server.wait_for_messages, "bob", 1)) == 1
    # The admin's spam rule still files tagged mail into Junk.
    await asyncio.to_thread(server.send, "spammer@example.net", ["bob"], "[SPAM] cheap watches")
    await asyncio.to_thread(server.wait_for_messages, "bob", 1, "Junk")
    assert len(server.maildir_messages("bob")) == 1

    async def on_streams() -> bool:
        dovecot = await _stream_events(redis_port, "mail:dovecot")
        postfix = await _stream_events(redis_port, "mail:postfix")
        return any(
            isinstance(e, MessageNew) and e.message_id == message_id and e.account == alice for e in dovecot
        ) and any(isinstance(e, MtaAccepted) and e.message_id == message_id and alice in e.rcpt_to for e in postfix)

    await _until(on_streams)
