"""Scenario 14: a password-guessing flood while other users sign in and receive mail.

Guessers, each from an address of its own, try passwords for two accounts and one that does not
exist, without pause, while other users (each from their own address) sign in again and again and
receive mail on their sockets, and the guessed accounts' owners sign in from home. The requests
stand for a reverse proxy on the bridge's host that names each client in X-Forwarded-For
(tests/test_login_limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from dataclasses import dataclass

import aiohttp
import pytest

from tests.common import Account
from tests.mailtools import send_smtp, short_mail
from tests.reliability import Rig
from tests.socket_client import RecordingClient
from tests.test_login_limits import (
    PROMPT_S,
    Attempt,
    DovecotLog,
    LogSince,
    attempt,
    client_ipv4,
    client_ipv6,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PER_ADDRESS = 10  # BRIDGE_LOGIN_FAILURES_PER_ADDRESS's default, which the node keeps
REFUSED = {"error": "invalid email or password"}
LIMITED = {
    "too many failed logins from this address; try again later",
    "too many failed logins for this account; try again later",
}


@dataclass(frozen=True)
class Load:
    users: int
    rounds: int  # each user signs in and gets a mail once per round
    pause_s: float  # between rounds
    guessers: int  # addresses guessing at once, each for one wave
    waves: int  # the guessers move on to fresh addresses this often (guessing from many addresses)
    wave_s: float
    workers: int = 16  # guesses in flight per guessing address; a 429 is answered without Dovecot, at once
    after_429_s: float = 0.05  # and the next guess follows it this soon


FAST = Load(users=4, rounds=3, pause_s=1.0, guessers=3, waves=1, wave_s=0)
# 32 addresses x 10 guesses judged by Dovecot, over 3 accounts: past the per-account limit (50).
FULL = Load(users=16, rounds=10, pause_s=2.0, guessers=4, waves=8, wave_s=4.0, after_429_s=0.1)


@dataclass
class Guess:
    guesser: str
    account: str
    password: str
    answer: Attempt


@pytest.mark.reliability(14, "Login: a guessing flood while other users sign in and receive mail")
async def test_a_guessing_flood_while_other_users_sign_in_and_receive_mail(rig: Rig) -> None:
    stack, scenario = rig.stack, rig.scenario
    gateway = stack.web_url
    load = FULL if rig.full else FAST
    users = rig.accounts(load.users)
    victims = rig.accounts(2)
    ghost = f"nobody-{secrets.token_hex(6)}@example.test"
    targets = [victims[0].email, victims[1].email, ghost]
    at = {a.email: client_ipv6() for a in users + victims}  # each user's and each owner's own address
    guessers = [client_ipv4() for _ in range(load.guessers * load.waves)]
    scenario.load = (
        f"{len(guessers)} guessing addresses ({load.guessers} at a time), {load.workers} guesses in flight from"
        f" each, against 2 accounts and one that does not exist; {load.users} other users, each signing in"
        f" and getting a mail {load.rounds} times"
    )
    log = LogSince(stack, "bridge.out")
    dovecot = DovecotLog(stack)
    guesses: list[Guess] = []
    logins: list[Attempt] = []
    sent: dict[str, list[str]] = {u.email: [] for u in users}
    clients: dict[str, RecordingClient] = {}
    tokens: list[str] = []

    async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as bad:

        async def sign_in(user: Account) -> Attempt:
            answer = await attempt(http, gateway, user.email, user.password, at[user.email])
            logins.append(answer)
            assert answer.status == 200, answer
            assert isinstance(answer.body, dict)
            tokens.append(answer.body["token"])
            return answer

        for owner in victims:  # the owners have signed in from home before
            await sign_in(owner)
        for user in users:
            first = await sign_in(user)
            assert isinstance(first.body, dict)
            clients[user.email] = client = RecordingClient()
            await client.connect(gateway, first.body["token"])

        done = asyncio.Event()

        async def guessing(guesser: str, worker: int, until: asyncio.Event) -> None:
            n = worker
            while not until.is_set():
                account, password = targets[n % len(targets)], f"guess-{secrets.token_hex(6)}"
                answer = await attempt(bad, gateway, account, password, guesser)
                guesses.append(Guess(guesser, account, password, answer))
                if answer.status == 429:
                    await asyncio.sleep(load.after_429_s)
                n += 1

        async def flooding() -> None:
            """Waves of guessing addresses; each wave's guessers stop when the next begins."""
            workers: list[asyncio.Task[None]] = []
            for wave in range(load.waves):
                last = wave == load.waves - 1
                until = done if last else asyncio.Event()
                workers += [
                    asyncio.create_task(guessing(guesser, w, until))
                    for guesser in guessers[wave * load.guessers : (wave + 1) * load.guessers]
                    for w in range(load.workers)
                ]
                if not last:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), load.wave_s)
                    until.set()
            await asyncio.gather(*workers)

        flood = asyncio.create_task(flooding())
        try:
            await asyncio.sleep(0.5)  # the flood is on
            for round_ in range(load.rounds):
                for user in users:
                    await sign_in(user)
                mails = []
                for user in users:
                    subject = f"round {round_} for {user.email} {secrets.token_hex(3)}"
                    sent[user.email].append(subject)
                    mails.append(short_mail(user.email, subject))
                await asyncio.to_thread(send_smtp, stack, mails)
                await asyncio.sleep(load.pause_s)
            for owner in victims:  # whatever the guessers did, from home
                await sign_in(owner)
            for user in users:
                for subject in sent[user.email]:
                    await clients[user.email].wait_for("new_email", lambda m, s=subject: m.get("subject") == s, 30)
        finally:
            done.set()
            await flood
            for client in clients.values():
                await client.close()
        async with http.get(f"{gateway}/health") as r:
            assert r.status == 200, await r.text()

    scenario.cases = len(guesses)
    scenario.mails_sent = scenario.events_expected = sum(len(s) for s in sent.values())
    received = {
        email: Counter(m.get("subject") for name, m in client.events if name == "new_email")
        for email, client in clients.items()
    }
    scenario.mails_delivered = scenario.events_received = sum(
        1 for email, subjects in sent.items() for s in subjects if received[email][s]
    )
    scenario.events_duplicated = sum(count - 1 for counts in received.values() for count in counts.values())
    scenario.leaks = sum(
        1
        for email, client in clients.items()
        for name, m in client.events
        if name == "new_email" and (m.get("account") != email or m.get("subject") not in sent[email])
    )
    slowest = max(a.seconds for a in logins)
    statuses = Counter(g.answer.status for g in guesses)
    held = sum(1 for g in guesses if isinstance(g.answer.body, dict) and "account" in g.answer.body.get("error", ""))
    scenario.note(
        f"{len(guesses):,} guesses: {statuses[401]} refused by Dovecot, {statuses[429]:,} answered 429 before it"
        f" ({held:,} of them by the per-account limit); {len(logins)} sign-ins of the others, the slowest in"
        f" {slowest * 1000:.0f} ms."
    )

    assert scenario.mails_delivered == scenario.mails_sent and scenario.events_duplicated == 0, received
    assert scenario.leaks == 0
    assert slowest < PROMPT_S, sorted(a.seconds for a in logins)[-5:]
    assert set(statuses) == {401, 429}, statuses
    if len(guessers) * PER_ADDRESS > 50 * len(targets):  # BRIDGE_LOGIN_FAILURES_PER_ACCOUNT's default
        assert held > 0, "guessing from many addresses never met the per-account limit"
    for guesser in guessers:  # no address had more than its limit of guesses judged by Dovecot
        judged = [g for g in guesses if g.guesser == guesser and g.answer.status == 401]
        assert len(judged) <= PER_ADDRESS, (guesser, len(judged))
        assert len(dovecot.logins(guesser)) <= PER_ADDRESS, dovecot.logins(guesser)
    for g in guesses:  # the same answers whether the account exists or not, and 429s say when to retry
        if g.answer.status == 401:
            assert g.answer.body == REFUSED, g
        else:
            assert isinstance(g.answer.body, dict) and g.answer.body["error"] in LIMITED, g
            assert g.answer.retry_after is not None and int(g.answer.retry_after) >= 1, g
    for user in users + victims:  # Dovecot saw each user from their own address
        assert any(f"user=<{user.email}>" in line for line in dovecot.logins(at[user.email])), user.email
    text = log.since()
    errors = [line for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    assert not errors, errors[:10]
    secrets_seen = [s for s in [*(a.password for a in users + victims), *(g.password for g in guesses)] if s in text]
    secrets_seen += [t for t in tokens if t[20:60] in text]
    assert not secrets_seen, secrets_seen[:5]
    scenario.checked = (
        "Every other user's sign-in answered 200 within 2 s during the flood (Dovecot saw each from their own"
        " address), every mail reached its user's socket once and no one else's, the guessed accounts' owners"
        " signed in from home (at full load past the per-account limit, which holds an account for new"
        " addresses only); no guessing address had more than 10 guesses judged by Dovecot (the rest 429"
        " with Retry-After, before Dovecot), the same answers for an account that does not exist, no ERROR"
        " logged, no password or token in the bridge's logs."
    )
