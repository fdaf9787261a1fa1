from __future__ import annotations

import asyncio

import aiohttp
import pytest
import socketio

from bridge.auth import TokenIssuer
from bridge.stack.launcher import StackInfo
from tests.common import Account, host_keys, host_token, login
from tests.mailtools import send_smtp
from tests.socket_client import RecordingClient
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c"])
async def test_socket_without_valid_token_is_refused(stack: StackInfo, token: str | None) -> None:
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(stack.web_url, token)
    assert not client.sio.connected


async def test_token_signed_with_another_key_is_refused(stack: StackInfo) -> None:
    forged, _ = TokenIssuer("x" * 48, "mail-bridge", "mail-bridge", 600).issue("alice@example.test", ())
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(stack.web_url, forged)


async def test_valid_token_connects(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> None:
    client = RecordingClient()
    await client.connect(stack.web_url, await login(http, account))
    assert client.sio.connected
    await client.close()


async def test_bearer_header_is_accepted(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> None:
    client = RecordingClient()
    token = await login(http, account)
    await client.sio.connect(
        stack.web_url, headers={"Authorization": f"Bearer {token}"}, transports=["websocket"], wait_timeout=5
    )
    assert client.sio.connected
    await client.close()


async def test_host_website_token_with_two_accounts(stack: StackInfo, account: Account, other_account: Account) -> None:
    """A token from the host website may grant several accounts: the socket hears all of them."""
    client = RecordingClient()
    await client.connect(stack.web_url, host_token("user-42", [account.email, other_account.email]))
    for target in (account, other_account):
        subject = f"to {target.email}"
        await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", target.email, subject)])
        mail = await client.wait_for("new_email", lambda e, s=subject: e["subject"] == s)
        assert mail["account"] == target.email
    await client.close()


async def test_host_token_signed_by_someone_else_is_refused(stack: StackInfo, account: Account) -> None:
    import jwt  # noqa: PLC0415

    impostor_key, _ = host_keys()
    now = int(__import__("time").time())
    forged = jwt.encode(
        {
            "iss": "https://host.test",
            "aud": "mail-bridge",
            "sub": "x",
            "accounts": [account.email],
            "iat": now,
            "exp": now + 600,
        },
        impostor_key,
        algorithm="RS256",
    )
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(stack.web_url, forged)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 1},  # long expired
        {"nbf": 2**40},  # not yet valid
        {"aud": "someone-else"},
        {"iss": "https://elsewhere.test"},
    ],
)
async def test_bad_host_tokens_are_refused_on_socket_and_rest(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, claims: dict[str, object]
) -> None:
    token = host_token("user-1", [account.email], **claims)
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(stack.web_url, token)
    async with http.get("/api/v1/email/inbox", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 401


async def test_alg_none_is_refused(stack: StackInfo, account: Account) -> None:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    def b64(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    body = {
        "iss": "mail-bridge",
        "aud": "mail-bridge",
        "sub": account.email,
        "accounts": [account.email],
        "iat": 1,
        "exp": 2**40,
    }
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(stack.web_url, f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(body)}.")


async def test_disallowed_origin_is_refused_at_the_handshake(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            stack.web_url,
            auth={"token": await login(http, account)},
            headers={"Origin": "https://evil.test"},
            transports=["websocket"],
            wait_timeout=5,
        )


async def test_a_socket_is_disconnected_when_its_token_expires(stack: StackInfo, account: Account) -> None:
    now = int(__import__("time").time())
    client = RecordingClient()
    await client.connect(stack.web_url, host_token("user-2", [account.email], exp=now + 2))
    assert client.sio.connected
    for _ in range(100):
        if not client.sio.connected:
            break
        await asyncio.sleep(0.1)
    assert not client.sio.connected
