from __future__ import annotations

import os

import aiohttp
import pytest

from tests.common import Account, login

pytestmark = pytest.mark.e2e


async def test_login_returns_a_token(http: aiohttp.ClientSession, account: Account) -> None:
    async with http.post("/api/v1/auth/login", json={"email": account.email, "password": account.password}) as r:
        assert r.status == 200
        body = await r.json()
    assert set(body) == {"token", "expiresAt"}
    assert body["token"].count(".") == 2


async def test_wrong_password_is_401(http: aiohttp.ClientSession, account: Account) -> None:
    async with http.post("/api/v1/auth/login", json={"email": account.email, "password": "wrong"}) as r:
        assert r.status == 401
        assert (await r.json()) == {"error": "invalid email or password"}


async def test_unknown_user_is_401(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/auth/login", json={"email": "nobody@example.test", "password": "x"}) as r:
        assert r.status == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body must be JSON"),
        (b"[1]", "JSON object"),
        (b'{"password": "x"}', "email must be an address"),
        (b'{"email": "a@example.test"}', "password must be"),
        (b'{"email": "a@example.test", "password": "x\\r\\nA1 LOGOUT"}', "forbidden characters"),
        (b'{"email": "a\\"@example.test", "password": "x"}', "email must be an address"),
    ],
)
async def test_bad_login_input_is_400(http: aiohttp.ClientSession, body: bytes, message: str) -> None:
    async with http.post("/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert message in (await r.json())["error"]


async def test_oversized_or_non_json_login_bodies_are_413_and_415(http: aiohttp.ClientSession) -> None:
    big = b'{"email": "' + b"a" * 70_000 + b'@example.test", "password": "x"}'
    async with http.post("/api/v1/auth/login", data=big, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert "larger than" in (await r.json())["error"]
    form = b"email=a%40example.test&password=x"
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/octet-stream"):
        async with http.post("/api/v1/auth/login", data=form, headers={"Content-Type": content_type}) as r:
            assert r.status == 415, content_type
            assert "application/json" in (await r.json())["error"]


async def test_health_reports_each_dependency(http: aiohttp.ClientSession) -> None:
    async with http.get("/health") as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["status"] == "ok" and body["checks"] == {"redis": "ok", "store": "ok", "imap": "ok"}
    # It names the store that answered: the stack's own FerretDB unless MONGODB_URL points elsewhere.
    expected = "MongoDB " if os.environ.get("MONGODB_URL") else "FerretDB v"
    assert body["store"].startswith(expected), body


async def test_token_is_usable_twice(http: aiohttp.ClientSession, account: Account) -> None:
    assert await login(http, account) != ""
