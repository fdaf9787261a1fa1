"""Session fixtures: the real stack, started once through the same launcher as `make run`.

Ports are picked free at start and the state lives in `test-stack` beside `make run`'s state (in the
checkout's var/, or under /var/tmp when the mail user cannot reach the checkout), so the tests can run
beside a `make run` stack. The session says where in one line, and removes it when every test passed.
Each test gets its own fresh mail account, so no test sees another's events.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser

from bridge.settings import DEFAULT_PORTS, StackSettings, suite_state_dir
from bridge.stack.launcher import Stack, StackInfo, free_ports

REPO = Path(__file__).resolve().parent.parent

# The reliability suite's table and its --reliability-* options (tests/reliability.py); the wheel,
# installed once per session for the tests that use it as an admin would (tests/wheel_install.py).
pytest_plugins = ["tests.reliability", "tests.wheel_install"]


def free_port() -> int:
    return free_ports(1)[0]


def stack_ports_env() -> dict[str, str]:
    ports = free_ports(len(DEFAULT_PORTS))
    return {f"BRIDGE_{name.upper()}_PORT": str(port) for name, port in zip(DEFAULT_PORTS, ports, strict=True)}


HOST_ISSUER = "https://host.test"


def _host_keys() -> tuple[str, str]:
    """An RSA key pair standing for the host website that issues its own tokens."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


# Two test runs at once (two people, or a person and a helper) each need their own state dir.
TEST_STATE = Path(os.environ.get("MAIL_BRIDGE_TEST_STATE") or suite_state_dir(REPO))
HOST_KEY_DIR = TEST_STATE


@pytest.fixture(scope="session")
def stack_settings(pytestconfig: pytest.Config) -> StackSettings:
    state = TEST_STATE
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # a fixture's output is captured otherwise
            if reporter._tw.width_of_current_line:  # after a file's dots: a line of its own
                reporter.write("\n")
            reporter.write_line(f"test stack state (logs, configs, mail): {state}")
    # Files, not module globals: the tests import this module a second time under another name.
    private, public = _host_keys()
    (state / "host-website.pem").write_text(public)
    (state / "host-website.key").write_text(private)
    env = stack_ports_env()
    env["BRIDGE_STATE_DIR"] = str(state)
    env["BRIDGE_HOST_JWT_ISSUER"] = HOST_ISSUER
    env["BRIDGE_HOST_JWT_KEY_FILE"] = str(state / "host-website.pem")
    env["BRIDGE_HOST_JWT_ALGORITHM"] = "RS256"
    return StackSettings.from_env({**os.environ, **env}, repo_dir=REPO)


@pytest.fixture(scope="session")
def stack_launcher(stack_settings: StackSettings, request: pytest.FixtureRequest) -> Iterator[Stack]:
    launcher = Stack(stack_settings)
    try:
        launcher.start()
        yield launcher
    finally:
        launcher.stop()
        # A failed run keeps its logs for whoever reads the failure; a clean one leaves nothing behind.
        if request.session.testsfailed == 0 and "MAIL_BRIDGE_TEST_STATE" not in os.environ:
            remove_suite_state(stack_settings.state_dir)


def remove_suite_state(state: Path) -> None:
    """Remove the suite's state; under /var/tmp also the checkout's directory there once it is empty
    (`make run` keeps its own state in it) and the `var` link that pointed to it."""
    shutil.rmtree(state, ignore_errors=True)
    root, link = state.parent, REPO / "var"
    if root != link and not any(root.iterdir()):
        root.rmdir()
        if link.is_symlink() and not link.exists():
            link.unlink()


@pytest.fixture(scope="session")
def stack(stack_launcher: Stack) -> StackInfo:
    assert stack_launcher.info is not None
    return stack_launcher.info


@pytest.fixture(scope="session")
def stack_secrets(stack: StackInfo) -> dict[str, object]:
    data: dict[str, object] = json.loads((Path(stack.state_dir) / "secrets.json").read_text())
    return data


@dataclass(frozen=True)
class Account:
    email: str
    password: str


class AccountPool:
    """Fresh accounts, created in batches (each batch costs Dovecot's one-second re-read)."""

    def __init__(self, launcher: Stack, batch: int = 40) -> None:
        self.launcher = launcher
        self.batch = batch
        self.free: list[Account] = []
        self.created: list[Account] = []  # every account of the session (the log hygiene test checks their passwords)

    def take(self) -> Account:
        if not self.free:
            fresh = [
                Account(f"t{uuid.uuid4().hex[:12]}@example.test", secrets.token_urlsafe(12)) for _ in range(self.batch)
            ]
            self.launcher.add_users({a.email: a.password for a in fresh})
            self.created.extend(fresh)
            self.free = fresh
        return self.free.pop()


@pytest.fixture(scope="session")
def account_pool(stack_launcher: Stack) -> AccountPool:
    return AccountPool(stack_launcher)


@pytest.fixture
def account(account_pool: AccountPool) -> Account:
    """A brand-new mail account, so this test's mailbox and events are its own."""
    return account_pool.take()


@pytest.fixture
def other_account(account_pool: AccountPool) -> Account:
    return account_pool.take()


@pytest.fixture
async def http(stack: StackInfo) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.web_url) as session:
        yield session


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless (tests/browser.py)."""
    from tests.browser import chromium  # noqa: PLC0415 (tests.browser imports this module)

    async with chromium() as launched:
        yield launched


@pytest.fixture
async def redis_client(stack: StackInfo) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


async def login(http: aiohttp.ClientSession, account: Account) -> str:
    async with http.post("/api/v1/auth/login", json={"email": account.email, "password": account.password}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    token: str = body["token"]
    return token


def host_token(subject: str, accounts: list[str], **claims: object) -> str:
    """A token as the host website would issue it (RS256, its own issuer)."""
    import time  # noqa: PLC0415

    import jwt  # noqa: PLC0415

    now = int(time.time())
    body = {
        "iss": HOST_ISSUER,
        "aud": "mail-bridge",
        "sub": subject,
        "accounts": accounts,
        "iat": now,
        "exp": now + 600,
    }
    private = (HOST_KEY_DIR / "host-website.key").read_text()
    return jwt.encode({**body, **claims}, private, algorithm="RS256")
