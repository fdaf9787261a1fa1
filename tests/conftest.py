"""Session fixtures: the real stack, started once through the same launcher as `make run`.

Ports are picked free at start and the state lives in `test-stack` beside `make run`'s state (in the
checkout's var/, or under /var/tmp when the mail user cannot reach the checkout), so the tests can run
beside a `make run` stack. The session says where in one line, and removes it when every test passed.
Each test gets its own fresh mail account, so no test sees another's events.

A test that takes any of these fixtures (directly or through another fixture) is marked `e2e` here,
at collection, so `pytest -m "not e2e"` (`make test-unit`) runs the pure tests alone and never starts
the stack. A test that starts servers of its own (Redis, Dovecot, Postfix, the store, Chromium)
without them carries `@pytest.mark.e2e` itself; one that forgets fails, naming the program.
This module holds fixtures and hooks only: what tests share besides them is in tests/common.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser

from bridge.settings import StackSettings
from bridge.stack.launcher import Stack, StackInfo
from bridge.store import Store
from tests.browser import chromium
from tests.common import (
    HOST_ISSUER,
    REPO,
    TEST_STATE,
    Account,
    AccountPool,
    host_keys,
    remove_suite_state,
    stack_ports_env,
)
from tests.push_receiver import receiver_origin

# The reliability suite's table and its --reliability-* options (tests/reliability.py); the wheel,
# installed once per session for the tests that use it as an admin would (tests/wheel_install.py).
pytest_plugins = ["tests.reliability", "tests.wheel_install"]

# The fixtures below that reach the live stack (or a browser): a test whose fixture closure holds one is e2e.
LIVE_FIXTURES = frozenset(
    {
        "stack_settings",
        "stack_launcher",
        "stack",
        "stack_secrets",
        "account_pool",
        "account",
        "other_account",
        "http",
        "browser",
        "redis_client",
    }
)

# Programs of the live services: a test not marked e2e that starts one has forgotten its mark.
LIVE_PROGRAMS = frozenset(
    {
        "redis-server",
        "redis-cli",
        "redis-sentinel",
        "dovecot",
        "doveadm",
        "doveconf",
        "sievec",
        "postfix",
        "postconf",
        "postalias",
        "postmap",
        "postqueue",
        "postsuper",
        "sendmail",
        "ferretdb",
        "chromium",
    }
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") is None and LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


_PURE_TEST: list[str] = []  # the node id of the test not marked e2e whose set-up or body is running


def _program(args: tuple[object, ...]) -> str:
    """The program a `subprocess.Popen` audit event starts: (executable, args, cwd, env)."""
    executable, argv = args[0], args[1]
    if executable is None and isinstance(argv, str | bytes):  # a command line (shell=True)
        executable = (os.fsdecode(argv).split() or [""])[0]
    elif executable is None:
        executable = next(iter(argv), "")  # type: ignore[call-overload]
    return os.path.basename(os.fsdecode(executable))  # type: ignore[arg-type]


def _refuse_live_programs(event: str, args: tuple[object, ...]) -> None:
    if event == "subprocess.Popen" and _PURE_TEST and (program := _program(args)) in LIVE_PROGRAMS:
        pytest.fail(f"{_PURE_TEST[0]} starts {program}, a live service: mark it @pytest.mark.e2e", pytrace=False)


@contextlib.contextmanager
def _guarded(item: pytest.Item) -> Iterator[None]:
    """While a test not marked e2e sets up and runs (not while it tears down: the session's stack
    may stop then), starting a live service's program fails it."""
    if item.get_closest_marker("e2e") is not None:
        yield
        return
    _PURE_TEST.append(item.nodeid)
    try:
        yield
    finally:
        _PURE_TEST.clear()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--lighthouse-report", metavar="PATH", help="write Lighthouse's scores on the inbox here (markdown)"
    )


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_refuse_live_programs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


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
    # Files: the bridge reads the public key, tests/common.py's host_token the private one.
    private, public = host_keys()
    (state / "host-website.pem").write_text(public)
    (state / "host-website.key").write_text(private)
    env = stack_ports_env()
    env["BRIDGE_STATE_DIR"] = str(state)
    env["BRIDGE_HOST_JWT_ISSUER"] = HOST_ISSUER
    env["BRIDGE_HOST_JWT_KEY_FILE"] = str(state / "host-website.pem")
    env["BRIDGE_HOST_JWT_ALGORITHM"] = "RS256"
    # Web Push may reach the tests' local push service (tests/push_receiver.py), and nothing else local.
    env["BRIDGE_PUSH_ALLOWED_ORIGINS"] = receiver_origin()
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


@pytest.fixture(scope="session")
def stack(stack_launcher: Stack) -> StackInfo:
    assert stack_launcher.info is not None
    return stack_launcher.info


@pytest.fixture(scope="session")
def stack_secrets(stack: StackInfo) -> dict[str, object]:
    data: dict[str, object] = json.loads((Path(stack.state_dir) / "secrets.json").read_text())
    return data


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
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def store(stack: StackInfo) -> AsyncIterator[Store]:
    """The metadata store of the session's stack, opened for one test."""
    store = Store(stack.mongodb_url, "mailbridge")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def redis_client(stack: StackInfo) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()
