"""The reliability suite's table: each scenario test records what it sent, saw and checked.

A test joins the suite with `@pytest.mark.reliability(number, "name")` (the numbers follow the
suite's list in docs/reliability.md) and takes the `scenario` fixture, whose fields it fills in as it
goes, so a test that fails half-way still shows how far it got. The row's result is the test's own
outcome. `--reliability-report PATH` writes the table after the run (`make reliability`);
`--reliability-full` runs each scenario at its full load instead of the fast one `make test` uses.

A scenario on the live stack takes the `rig` fixture instead: its row and its load together with the
stack, an HTTP session on the bridge, fresh accounts, and signing in (`Rig`).
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bridge.stack.launcher import Stack, StackInfo
from tests.common import Account, AccountPool, login
from tests.hostile import BridgeLog

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Scenario:
    number: int
    name: str
    load: str = ""
    checked: str = ""
    mails_sent: int | None = None
    mails_delivered: int | None = None
    events_expected: int | None = None
    events_received: int | None = None
    events_duplicated: int | None = None
    cases: int | None = None
    leaks: int | None = None  # another user's data seen (cross-user scenarios)
    notes: list[str] = field(default_factory=list)
    result: str = "not finished"
    seconds: float = 0.0

    def note(self, text: str) -> None:
        self.notes.append(text)


NONE = "\u2013"  # an en dash: this cell does not apply
_SCENARIO = pytest.StashKey[Scenario]()
_ROWS = pytest.StashKey[list[Scenario]]()
_STARTED = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption("--reliability-report", metavar="PATH", help="write the reliability table (markdown) here")
    group.addoption(
        "--reliability-full",
        action="store_true",
        help="run each reliability scenario at its full load (the fast subset runs inside make test)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(number, name): a scenario of the reliability suite")
    config.addinivalue_line("markers", "last: run after every other test (it checks what they all left behind)")
    config.stash[_ROWS] = []
    config.stash[_STARTED] = time.monotonic()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: order kept otherwise


@pytest.fixture(scope="session")
def reliability_full(pytestconfig: pytest.Config) -> bool:
    """True under `make reliability`: scenarios use their full load."""
    return bool(pytestconfig.getoption("--reliability-full"))


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    marker = request.node.get_closest_marker("reliability")
    if marker is None or len(marker.args) != 2:
        raise pytest.UsageError(f"{request.node.nodeid}: the scenario fixture needs @pytest.mark.reliability(n, name)")
    number, name = marker.args
    row = Scenario(int(number), str(name))
    request.node.stash[_SCENARIO] = row
    request.config.stash[_ROWS].append(row)
    started = time.monotonic()
    yield row
    row.seconds = time.monotonic() - started


@dataclass
class Rig:
    """What a scenario on the live stack works with: the session's stack and its launcher, an HTTP
    session on the bridge, fresh accounts (each taken when first asked for), the scenario's row, and
    whether it runs at full load."""

    stack: StackInfo
    launcher: Stack
    http: aiohttp.ClientSession
    pool: AccountPool
    scenario: Scenario
    full: bool  # True under `make reliability`: the scenario's full load

    @functools.cached_property
    def account(self) -> Account:
        return self.pool.take()

    @functools.cached_property
    def other_account(self) -> Account:
        return self.pool.take()

    def accounts(self, count: int) -> list[Account]:
        """`count` more fresh accounts."""
        return [self.pool.take() for _ in range(count)]

    async def login(self, account: Account | None = None) -> str:
        """A token for `account` (the rig's own by default), from the bridge's login."""
        return await login(self.http, account or self.account)

    async def headers(self, account: Account | None = None) -> dict[str, str]:
        """REST headers carrying a fresh token for `account` (the rig's own by default)."""
        return {"Authorization": f"Bearer {await self.login(account)}"}

    async def signed_in(self) -> tuple[BridgeLog, str]:
        """How a hostile-input scenario starts: the bridge's log from here on (what the scenario
        causes), and a token for the rig's account."""
        log = BridgeLog(self.stack)
        return log, await self.login()


@pytest.fixture
def rig(
    stack: StackInfo,
    stack_launcher: Stack,
    http: aiohttp.ClientSession,
    *,
    account_pool: AccountPool,
    scenario: Scenario,
    reliability_full: bool,
) -> Rig:
    return Rig(stack, stack_launcher, http, account_pool, scenario, reliability_full)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    row = item.stash.get(_SCENARIO, None)
    if row is not None:
        if report.failed:
            row.result = f"FAIL ({report.when})" if report.when != "call" else "FAIL"
        elif report.when == "call" and report.passed and row.result == "not finished":
            row.result = "pass"
        elif report.skipped:
            row.result = "skipped"
    return report  # type: ignore[return-value]


def _cell(*values: int | None) -> str:
    if all(v is None for v in values):
        return NONE
    return " / ".join(NONE if v is None else f"{v:,}" for v in values)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def render(rows: list[Scenario], *, full: bool, seconds: float, commit: str, when: datetime.datetime) -> str:
    ordered = sorted(rows, key=lambda r: (r.number, r.name))
    passed = sum(r.result == "pass" for r in ordered)
    lost = sum((r.mails_sent or 0) - (r.mails_delivered or 0) for r in ordered if r.mails_sent is not None)
    missing = sum(
        max(0, (r.events_expected or 0) - (r.events_received or 0)) for r in ordered if r.events_expected is not None
    )
    duplicated = sum(r.events_duplicated or 0 for r in ordered)
    cases = sum(r.cases or 0 for r in ordered)
    leaks = sum(r.leaks or 0 for r in ordered)
    lines = [
        "# Reliability and security",
        "",
        f"Generated by `make reliability` on {when:%Y-%m-%d %H:%M} UTC at commit `{commit}`"
        f" ({'full load' if full else 'fast subset'}; {seconds / 60:.1f} min on {os.cpu_count()} cores,"
        f" {platform.system()} {platform.release()}). Every row is one test of `tests/`, run against the real"
        " stack (Postfix, Dovecot, Redis, the store, the bridge and its filter as separate processes); the"
        " result is that test's own outcome. `make test` runs the same tests at a smaller load.",
        "",
        f"**{passed} of {len(ordered)} scenarios pass. Mails lost: {lost}. Events missing after resume: {missing}."
        f" Duplicates shown to a client: {duplicated}. Cross-user leaks: {leaks}. Hostile cases tried: {cases:,}.**",
        "",
        "| # | Scenario | Load | What was checked | Mails sent / delivered "
        "| Events expected / received / duplicated | Cases | Result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ordered:
        checked = r.checked + ("" if not r.notes else " " + " ".join(r.notes))
        lines.append(
            f"| {r.number} | {r.name} | {r.load or NONE} | {checked or NONE} "
            f"| {_cell(r.mails_sent, r.mails_delivered)} "
            f"| {_cell(r.events_expected, r.events_received, r.events_duplicated)} "
            f"| {_cell(r.cases)} | {r.result} ({r.seconds:.1f} s) |"
        )
    lines.append("")
    return "\n".join(lines)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--reliability-report")
    rows = session.config.stash[_ROWS]
    if not path or not rows:
        return
    text = render(
        rows,
        full=bool(session.config.getoption("--reliability-full")),
        seconds=time.monotonic() - session.config.stash[_STARTED],
        commit=_commit(),
        when=datetime.datetime.now(datetime.UTC),
    )
    Path(path).write_text(text)
