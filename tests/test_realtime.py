from __future__ import annotations

import aiohttp
import pytest
import socketio

from bridge.auth import TokenIssuer
from bridge.stack.launcher import StackInfo
from tests.conftest import Account, login
from tests.socket_client import RecordingClient

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
