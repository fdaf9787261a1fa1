"""Password guessing against one account locks no one else out.

Logins are limited per client address and per account (429 with Retry-After, before Dovecot is
asked), and Dovecot is told each client's own address (IMAP ID `x-originating-ip` from an address in
its `login_trusted_networks`), so its auth penalty slows the guesser, not every user of the bridge.

The tests stand for a reverse proxy on the bridge's host (127.0.0.1, which the bridge trusts by
default: BRIDGE_TRUSTED_PROXIES), naming each client in X-Forwarded-For, so each request can come
from a client address of its own.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge.stack.launcher import Stack, StackInfo
from tests.common import Account, free_port

pytestmark = pytest.mark.timeout(240)  # e2e: each test that takes the stack's fixtures (conftest)

PROMPT_S = 2.0  # a login of someone else during a flood answers within this


def client_ipv4() -> str:
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"


def client_ipv6() -> str:
    """An address in a /64 of its own (the bridge counts an IPv6 client by its /64)."""
    return f"2001:db8:{secrets.randbits(16):x}:{secrets.randbits(16):x}::{1 + secrets.randbits(12):x}"


@dataclass
class Attempt:
    status: int
    body: object
    retry_after: str | None
    seconds: float


async def attempt(http: aiohttp.ClientSession, url: str, email: str, password: str, address: str | None) -> Attempt:
    headers = {"X-Forwarded-For": address} if address else {}
    started = time.monotonic()
    async with http.post(f"{url}/api/v1/auth/login", json={"email": email, "password": password}, headers=headers) as r:
        body = await r.json()
        return Attempt(r.status, body, r.headers.get("Retry-After"), time.monotonic() - started)


class LogSince:
    """What a service of the stack logged from now on."""

    def __init__(self, stack: StackInfo, name: str) -> None:
        self.path = Path(stack.log_dir) / name
        self.start = self.path.stat().st_size

    def since(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace")


class DovecotLog(LogSince):
    def __init__(self, stack: StackInfo) -> None:
        super().__init__(stack, "dovecot.log")

    def logins(self, address: str) -> list[str]:
        """imap-login's lines about logins from `address` (successful or not)."""
        return [line for line in self.since().splitlines() if "imap-login:" in line and f"rip={address}," in line]


def node(launcher: Stack, number: int, **env: str) -> Iterator[str]:
    url = launcher.add_bridge_node(number, env)
    try:
        yield url
    finally:
        launcher.remove_service(f"bridge-{number}")


@pytest.fixture
def proxied(stack: StackInfo) -> str:
    """The session's bridge, with the default limits, reached through the proxy."""
    return stack.web_url


@pytest.fixture(scope="module")
def elsewhere(stack_launcher: Stack) -> Iterator[str]:
    """A bridge whose proxy is on another host: its loopback peers are clients like any other."""
    yield from node(stack_launcher, 71, BRIDGE_TRUSTED_PROXIES="192.0.2.80")


@pytest.fixture(scope="module")
def strict_account(stack_launcher: Stack) -> Iterator[str]:
    """A bridge that takes 5 failed logins per account and hour (50 by default)."""
    yield from node(stack_launcher, 72, BRIDGE_LOGIN_FAILURES_PER_ACCOUNT="5")


def test_the_client_address_is_the_peer_unless_a_trusted_proxy_forwarded_it() -> None:
    from bridge.http_api import client_address, limit_key, trusted_networks  # noqa: PLC0415 (new)

    proxies = trusted_networks(("127.0.0.1", "10.1.0.0/16"))
    assert client_address("203.0.113.9", ["198.51.100.7"], proxies) == "203.0.113.9"  # not a proxy: header ignored
    assert client_address("127.0.0.1", [], proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", ["198.51.100.7"], proxies) == "198.51.100.7"
    # Read from the right: the client may have sent a header of its own, which the proxy extended.
    assert client_address("127.0.0.1", ["1.2.3.4, 198.51.100.7"], proxies) == "198.51.100.7"
    assert client_address("127.0.0.1", ["1.2.3.4", "198.51.100.7, 10.1.2.3"], proxies) == "198.51.100.7"
    # Garbage where the client's address should be: the last hop that can be named.
    assert client_address("127.0.0.1", ["not-an-address"], proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", ["198.51.100.7, junk, 10.1.2.3"], proxies) == "10.1.2.3"
    assert client_address("::ffff:127.0.0.1", ["2001:DB8::1"], proxies) == "2001:db8::1"
    assert client_address(None, ["198.51.100.7"], proxies) == "unknown"
    # An IPv6 client is counted by its /64: one subscriber's whole network is one key.
    assert limit_key("2001:db8:1:2:3:4:5:6") == limit_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert limit_key("198.51.100.7") == "198.51.100.7"


def test_login_settings_are_read_and_checked() -> None:
    from bridge.errors import ConfigError  # noqa: PLC0415
    from bridge.settings import Settings  # noqa: PLC0415

    good = {"BRIDGE_JWT_SECRET": "x" * 40, "BRIDGE_IMAP_MASTER_USER": "bridge", "BRIDGE_IMAP_MASTER_PASSWORD": "s"}
    defaults = Settings.from_env(good)
    assert defaults.trusted_proxies == ("127.0.0.1", "::1")  # a proxy on the same host
    assert (defaults.login_failures_per_address, defaults.login_failures_per_account) == (10, 50)
    chosen = Settings.from_env(
        {
            **good,
            "BRIDGE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1",
            "BRIDGE_LOGIN_FAILURES_PER_ADDRESS": "3",
            "BRIDGE_LOGIN_FAILURES_PER_ACCOUNT": "7",
        }
    )
    assert chosen.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    assert (chosen.login_failures_per_address, chosen.login_failures_per_account) == (3, 7)
    for env, message in (
        ({"BRIDGE_TRUSTED_PROXIES": "127.0.0.1,nginx"}, "BRIDGE_TRUSTED_PROXIES: 'nginx'"),
        ({"BRIDGE_LOGIN_FAILURES_PER_ADDRESS": "0"}, "BRIDGE_LOGIN_FAILURES_PER_ADDRESS"),
        ({"BRIDGE_LOGIN_FAILURES_PER_ACCOUNT": "many"}, "BRIDGE_LOGIN_FAILURES_PER_ACCOUNT"),
    ):
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({**good, **env})


async def test_logins_go_on_unlimited_while_redis_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    """Dovecot's own penalty, per client, still slows guessing; a Redis outage does not stop logins."""
    import redis.asyncio as aioredis  # noqa: PLC0415

    from bridge.rate_limit import LoginLimits  # noqa: PLC0415

    nowhere = aioredis.Redis(port=free_port(), socket_connect_timeout=1)
    limits = LoginLimits(nowhere, "mail", per_address=1, per_account=1)
    try:
        for _ in range(3):
            attempt = await limits.begin("192.0.2.1", "alice@example.test")
            assert attempt.charged == 0
            await limits.succeeded(attempt)
    finally:
        await nowhere.aclose()
    assert "login limits unavailable" in caplog.text


async def test_a_guessing_flood_on_one_account_leaves_other_users_alone(
    stack: StackInfo, proxied: str, account: Account, other_account: Account
) -> None:
    victim, alice = account, other_account
    guesser, alice_at, victim_at = client_ipv4(), client_ipv6(), client_ipv6()
    dovecot = DovecotLog(stack)
    async with aiohttp.ClientSession() as http:
        flood = [
            asyncio.create_task(attempt(http, proxied, victim.email, f"guess-{n}-{secrets.token_hex(4)}", guesser))
            for n in range(40)
        ]
        await asyncio.sleep(0.5)  # the flood is at Dovecot (each refusal takes its auth_failure_delay)
        during = await attempt(http, proxied, alice.email, alice.password, alice_at)
        answers = await asyncio.gather(*flood)
        after = await attempt(http, proxied, alice.email, alice.password, alice_at)
        victim_after = await attempt(http, proxied, victim.email, victim.password, victim_at)

    for name, answer in (("during", during), ("after", after), ("the victim after", victim_after)):
        assert answer.status == 200 and answer.seconds < PROMPT_S, (name, answer)
    statuses = sorted(a.status for a in answers)
    refused = [a for a in answers if a.status == 401]
    limited = [a for a in answers if a.status == 429]
    assert len(refused) + len(limited) == len(answers), statuses
    assert len(refused) <= 10 and len(limited) >= 30, statuses  # BRIDGE_LOGIN_FAILURES_PER_ADDRESS: 10
    for answer in limited:
        assert answer.retry_after is not None and int(answer.retry_after) >= 1, answer
        assert isinstance(answer.body, dict) and "too many failed logins" in answer.body["error"], answer
    # Dovecot saw each client by its own address, and never saw the guesses that were limited.
    assert dovecot.logins(alice_at) and dovecot.logins(victim_at), dovecot.since()[-2000:]
    assert 1 <= len(dovecot.logins(guesser)) <= len(refused), dovecot.logins(guesser)


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    stack: StackInfo, proxied: str, elsewhere: str, account: Account
) -> None:
    behind_proxy, spoofed = client_ipv6(), client_ipv6()
    dovecot = DovecotLog(stack)
    async with aiohttp.ClientSession() as http:
        assert (await attempt(http, proxied, account.email, account.password, behind_proxy)).status == 200
        # A bridge whose proxy is elsewhere: a client naming another address is still itself.
        assert (await attempt(http, elsewhere, account.email, account.password, spoofed)).status == 200
    assert dovecot.logins(behind_proxy), dovecot.since()[-2000:]
    assert spoofed not in dovecot.since()


async def test_guessing_from_many_addresses_holds_the_account_but_not_for_its_owner(
    strict_account: str, account: Account, other_account: Account
) -> None:
    home = client_ipv6()
    guessers = [client_ipv4() for _ in range(6)]
    async with aiohttp.ClientSession() as http:
        # Successes never count: the owner signs in from home more often than any limit allows failures.
        for _ in range(12):
            answer = await attempt(http, strict_account, account.email, account.password, home)
            assert answer.status == 200, answer
        # Five guesses from five addresses, each in another spelling of the account: one account.
        spellings = [account.email.upper(), account.email.title(), account.email, account.email.swapcase()]
        guesses = await asyncio.gather(
            *(attempt(http, strict_account, spellings[n % len(spellings)], f"guess-{n}", guessers[n]) for n in range(5))
        )
        assert [g.status for g in guesses] == [401] * 5, guesses
        sixth = await attempt(http, strict_account, account.email, "guess-6", guessers[5])
        assert sixth.status == 429 and sixth.retry_after is not None and int(sixth.retry_after) >= 1, sixth
        # The account is held for addresses it never signed in from, even with the right password...
        newcomer = await attempt(http, strict_account, account.email, account.password, client_ipv6())
        assert newcomer.status == 429, newcomer
        # ...but its owner, from where they signed in before, gets in at once.
        owner = await attempt(http, strict_account, account.email, account.password, home)
        assert owner.status == 200 and owner.seconds < PROMPT_S, owner
        # And a guessing address is not held for another account.
        other = await attempt(http, strict_account, other_account.email, other_account.password, guessers[0])
        assert other.status == 200, other


async def test_a_client_dovecot_holds_after_its_own_failures_still_gets_its_answer(
    proxied: str, account: Account
) -> None:
    """Dovecot delays a client's logins after its failures (auth penalty: 4, 8, then 15 s, plus
    auth_failure_delay's 2 s for a failure): the bridge waits for the answer rather than report a
    Dovecot that does not answer (503 after its 10 s IMAP timeout)."""
    address = client_ipv6()
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            wrong = await attempt(http, proxied, account.email, f"typo-{n}", address)
            assert wrong.status == 401, wrong
        right = await attempt(http, proxied, account.email, account.password, address)
    assert right.status == 200 and right.seconds > 10, right  # Dovecot held it for 15 s
