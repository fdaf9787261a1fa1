"""No password, token or mail body reaches any log of the stack (bridge, Dovecot, Postfix, ...).

It runs last, so the logs it reads hold everything the session did, the hostile-input scenarios
included: besides its own secrets it looks for every session account's password and for anything
shaped like a JWT."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pytest

from tests.mailtools import send_smtp, wait_for_messages
from tests.reliability import Rig
from tests.socket_client import RecordingClient
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e

JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")


@pytest.mark.last
@pytest.mark.reliability(12, "Secrets: no password, token or mail body in any log")
async def test_logs_hold_no_secrets_or_bodies(rig: Rig) -> None:
    stack, http, scenario = rig.stack, rig.http, rig.scenario
    account, other_account = rig.account, rig.other_account
    scenario.load = "the logs of every service after the whole session"
    scenario.checked = (
        "a mail body (sent and received), every session account's password, a wrong password, the master"
        " password, the JWT secret, a token's signature and anything shaped like a JWT: in none of the logs."
    )
    body_marker = f"BODY-{uuid.uuid4().hex}"
    token = await rig.login()
    async with http.post("/api/v1/auth/login", json={"email": account.email, "password": "wrong-" + body_marker}) as r:
        assert r.status == 401
    client = RecordingClient()
    await client.connect(stack.web_url, token)
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, "s1", body_marker)])
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(
        "/api/v1/email/send", headers=headers, json={"to": [other_account.email], "subject": "s2", "body": body_marker}
    ) as r:
        assert r.status == 200, await r.text()
    await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1)
    mail = await client.wait_for("new_email", lambda e: e["subject"] == "s1")
    async with http.get(f"/api/v1/email/{mail['id']}", headers=headers) as r:
        assert body_marker in (await r.json())["text"]  # the body did travel...
    await client.close()
    await asyncio.sleep(0.5)

    secrets = json.loads((Path(stack.state_dir) / "secrets.json").read_text())
    forbidden = {
        "a mail body": body_marker,
        "a user's password": account.password,
        "the master password": secrets["master_password"],
        "the JWT secret": secrets["jwt_secret"],
        "a token": token.split(".")[2],  # its signature
    }
    for n, other in enumerate(rig.pool.created):
        forbidden[f"the password of session account {n}"] = other.password
    logs = {p.name: p.read_text(errors="replace") for p in Path(stack.log_dir).iterdir() if p.is_file()}
    assert {"bridge.out", "filter.out", "dovecot.log", "postfix.log"} <= set(logs)
    leaks = [f"{what} in {name}" for name, text in logs.items() for what, value in forbidden.items() if value in text]
    leaks += [f"a JWT-shaped string in {name}" for name, text in logs.items() if JWT_SHAPED.search(text)]
    scenario.cases = (len(forbidden) + 1) * len(logs)
    scenario.leaks = len(leaks)
    characters = sum(map(len, logs.values()))
    scenario.note(f"{len(forbidden) + 1} secrets looked for in {len(logs)} logs ({characters:,} characters).")
    assert leaks == []  # ...but never into a log
