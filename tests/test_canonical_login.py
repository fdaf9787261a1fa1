"""One name per account: a login in another spelling (ALICE@EXAMPLE.TEST) is the account Dovecot
names (alice@example.test) everywhere, in the token, the socket's room, the index and the resume log,
so that session sees its mail."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import jwt

from bridge.auth import TokenIssuer
from bridge.stack.launcher import StackInfo
from tests.common import Account
from tests.mailtools import send_smtp, short_mail
from tests.socket_client import RecordingClient


def test_canonical_account_lowercases_ascii_only_as_dovecot_does() -> None:
    from bridge.auth import canonical_account  # noqa: PLC0415 (new: the other tests run without it)

    # Dovecot's default auth_username_format is %Lu: ASCII letters lowercased, nothing else touched.
    assert canonical_account("Alice.Smith@Example.TEST") == "alice.smith@example.test"
    assert canonical_account("ÉLODIE@EXAMPLE.TEST") == "Élodie@example.test"


def test_tokens_grant_accounts_by_their_canonical_name() -> None:
    issuer = TokenIssuer(secret="s" * 40, issuer="mail-bridge", audience="mail-bridge", ttl_s=600)
    token, _ = issuer.issue("Host-User-1", ("ALICE@Example.Test", "bob@example.test"))
    identity = issuer.verify(token)
    assert identity.accounts == ("alice@example.test", "bob@example.test")
    assert identity.subject == "Host-User-1"  # a host website's own user id: not an address, kept as it is


async def test_a_login_in_upper_case_is_the_canonical_account(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    typed = account.email.upper()
    async with http.post("/api/v1/auth/login", json={"email": typed, "password": account.password}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["accounts"]) == (account.email, [account.email])
    auth = {"Authorization": f"Bearer {token}"}
    async with http.get("/api/v1/me", headers=auth) as r:
        assert (await r.json())["accounts"] == [account.email]

    client = RecordingClient()
    await client.connect(stack.web_url, token)
    try:
        subject = f"canonical {uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(send_smtp, stack, [short_mail(account.email, subject)])
        mail = await client.wait_for("new_email", lambda m: m.get("subject") == subject, timeout=20)
        assert mail["account"] == account.email
    finally:
        await client.close()

    deadline = time.monotonic() + 20
    while True:
        async with http.get("/api/v1/email/inbox", headers=auth) as r:
            assert r.status == 200, await r.text()
            listed = await r.json()
        subjects = [item["subject"] for item in listed["emails"]]
        if subject in subjects:
            break
        assert time.monotonic() < deadline, f"{subject!r} not in the session's inbox: {listed}"
        await asyncio.sleep(0.2)
