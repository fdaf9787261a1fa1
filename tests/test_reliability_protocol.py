"""Scenario 11: protocol abuse. Every Socket.IO action with wrong types, giant packets, unknown and
reserved event names, floods, malformed Engine.IO/Socket.IO frames on a raw websocket; on REST,
wrong JSON, giant bodies, wrong content types, path traversal, huge query strings. Each gets a clear
refusal, never a 500 or an internal error; the bridge stays healthy and serves a normal client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from bridge.browser_events import EmailRef, email_id
from tests.common import host_token
from tests.hostile import (
    ANSWER_CEILING_S,
    Cases,
    RawSocket,
    call,
    clear_error,
    health_ok,
    refused_ack,
    request,
)
from tests.mailtools import send_smtp
from tests.reliability import Rig
from tests.socket_client import RecordingClient
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e

ACTIONS = ("join_email", "typing", "mark_read", "send_email")
WRONG_VALUES: list[Any] = [
    None,
    0,
    -1.5,
    True,
    "",
    "x",
    "x" * 200_000,
    [],
    [1, "a", None],
    {},
    {"a": {"b": {"c": [1, {"d": None}]}}},
    {"emailId": None},
    {"emailId": 5},
    {"emailId": ["a"]},
    {"emailId": {"x": 1}},
    {"emailId": "x" * 5000},
    {"emailId": "AAAA"},
    {"emailId": "../../etc/passwd"},
    {"address": None},
    {"address": 5},
    {"address": ["a@example.test"]},
    {"address": "x" * 1000},
    {"to": 5},
    {"to": [None]},
    {"to": [{"a": 1}]},
    {"to": "a@example.test", "subject": ["x"]},
    {"to": "a@example.test", "body": 5},
    {"to": "a@example.test", "html": {"x": 1}},
    {"to": "a@example.test", "attachments": {"a": 1}},
    {"to": "a@example.test", "attachments": [None]},
    {"to": "a@example.test", "attachments": [{"uploadId": None}]},
    {"to": "a@example.test", "inReplyTo": 5},
    {"account": 5},
    {"account": ["x"]},
    {"account": {"a": 1}},
    {"draftId": 5},
    {"draftId": ["x"]},
    {"emailId": "AAAA", "read": "yes"},
    {"emailId": "AAAA", "typing": {"x": 1}},
]


@pytest.mark.reliability(11, "Protocol: socket actions with wrong input")
async def test_every_socket_action_refuses_wrong_input(rig: Rig) -> None:
    stack, scenario, account = rig.stack, rig.scenario, rig.account
    log, token = await rig.signed_in()
    # Several sockets, taken in turn: each has its own action allowance (10/s, 30 at once), which is
    # not what these cases test.
    pool = [RecordingClient() for _ in range(6)]
    for member in pool:
        await member.connect(stack.web_url, token)
    client = pool[0]
    cases = Cases()
    for action in ACTIONS:
        for n, value in enumerate(WRONG_VALUES):
            ack = await call(pool[n % len(pool)].sio, action, value)
            cases.check(f"{action}({json.dumps(value)[:40]})", refused_ack(ack), ack)
        ack = await call(client.sio, action)  # no argument at all
        cases.check(f"{action}()", refused_ack(ack), ack)
        ack = await call(client.sio, action, ({"emailId": "AAAA"}, "second", 3))  # three arguments
        cases.check(f"{action}(three arguments)", refused_ack(ack), ack)
    for unknown in ("unknown", "email_read", "new_email", "admin", "__proto__", "message", "x" * 300):
        ack = await call(client.sio, unknown, {"a": 1})
        cases.check(f"unknown event {unknown[:20]!r}", refused_ack(ack) and "unknown event" in ack["error"], ack)
    for reserved in ("connect", "disconnect"):
        ack = await call(client.sio, reserved, {"token": token})
        cases.check(f"reserved event {reserved!r}", refused_ack(ack) and "reserved" in ack["error"], ack)
    cases.check("socket still connected", client.sio.connected, "disconnected")
    ack = await call(client.sio, "join_email", {"address": account.email})
    cases.check("a valid action afterwards", isinstance(ack, dict) and ack.get("ok") is True, ack)
    for member in pool:
        await member.close()

    # A "disconnect" event must not make the bridge forget the socket: it is still cut off when
    # its token expires (the event used to cancel that timer), and still counts against the limit.
    short = RecordingClient()
    await short.connect(stack.web_url, host_token("user-x", [account.email], exp=int(time.time()) + 3))
    await call(short.sio, "disconnect")
    for _ in range(100):
        if not short.sio.connected:
            break
        await asyncio.sleep(0.1)
    cases.check("a socket that sent 'disconnect' is still cut off at its token's expiry", not short.sio.connected, "")
    sockets = []
    refused_at = None
    for n in range(25):  # BRIDGE_MAX_SOCKETS_PER_USER is 20
        extra = RecordingClient()
        try:
            await extra.connect(stack.web_url, token)
        except Exception:  # the refusal: python-socketio's ConnectionError
            refused_at = n
            break
        sockets.append(extra)
        await call(extra.sio, "disconnect")
    cases.check("'disconnect' events do not lift the per-user socket limit", refused_at == 20, refused_at)
    for extra in sockets:
        await extra.close()
    scenario.cases = cases.tried
    scenario.load = f"1 account, {len(ACTIONS)} actions x {len(WRONG_VALUES) + 2} wrong inputs, unknown/reserved names"
    scenario.checked = (
        "join_email, typing, mark_read and send_email with None, numbers, lists, nested objects, 200 kB strings, "
        "wrong keys and wrong arity; unknown and reserved event names: each an error ack saying why (never an "
        "internal error), the socket kept; a 'disconnect' event neither keeps a socket past its token nor lifts "
        "the socket limit; no ERROR logged."
    )
    cases.assert_all_refused()
    assert not log.errors(), log.errors()[:10]


@pytest.mark.reliability(11, "Protocol: giant packets and floods")
async def test_giant_packets_and_floods_leave_other_users_served(rig: Rig) -> None:
    stack, http, scenario = rig.stack, rig.http, rig.scenario
    account, other_account = rig.account, rig.other_account
    log, token = await rig.signed_in()
    other_token = await rig.login(other_account)
    cases = Cases()
    # Over max_http_buffer_size (1 MiB): that socket is dropped, the bridge lives.
    for action in ACTIONS:
        victim = RecordingClient()
        await victim.connect(stack.web_url, token)
        await victim.sio.emit(action, {"emailId": "x" * (1 << 20), "to": ["a@example.test"]})
        for _ in range(50):
            if not victim.sio.connected:
                break
            await asyncio.sleep(0.1)
        cases.check(f"{action} with 1 MiB: socket dropped", not victim.sio.connected, "still connected")
        await victim.close()
    cases.check("healthy after giant packets", await health_ok(http), "health")

    # A flood of events from one user while another user's acks and mail keep coming.
    flood = 20_000 if rig.full else 2_000
    attacker = RecordingClient()
    await attacker.connect(stack.web_url, token)
    bystander = RecordingClient()
    await bystander.connect(stack.web_url, other_token)
    my_id = email_id(EmailRef(account.email, "INBOX", 1, 1))
    limited = 0
    other_ack_s: list[float] = []
    done = asyncio.Event()

    async def attack() -> None:
        nonlocal limited
        names = ("typing", "mark_read", "join_email", "no_such_event")
        for start in range(0, flood, 200):
            batch = [
                attacker.sio.call(names[i % 4], {"emailId": my_id, "address": account.email}, timeout=30)
                for i in range(start, min(flood, start + 200))
            ]
            for ack in await asyncio.gather(*batch):
                if refused_ack(ack) and ack["error"] in ("too many requests", "typing too fast"):
                    limited += 1
        done.set()

    async def bystand() -> None:
        while not done.is_set():
            started = time.monotonic()
            ack = await bystander.sio.call("join_email", {"address": other_account.email}, timeout=ANSWER_CEILING_S)
            assert isinstance(ack, dict) and ack.get("ok") is True, ack
            other_ack_s.append(time.monotonic() - started)
            await asyncio.sleep(0.15)  # within its own action allowance (10 a second)

    subject = f"during the flood {time.time()}"
    sent_at = time.monotonic()
    attack_task = asyncio.create_task(attack())
    bystander_task = asyncio.create_task(bystand())
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", other_account.email, subject)])
    await bystander.wait_for("new_email", lambda e: e["subject"] == subject, timeout=30)
    mail_s = time.monotonic() - sent_at
    await attack_task
    await bystander_task
    cases.check("the flood was rate limited", limited > 0, limited)
    cases.check("the attacker's socket is still served", attacker.sio.connected, "")
    slowest = max(other_ack_s, default=0.0)
    cases.check("the other user's acks came within the ceiling", len(other_ack_s) > 0 and slowest < 5.0, slowest)
    cases.check("the other user's mail came within the ceiling", mail_s < 15.0, mail_s)
    await attacker.close()
    await bystander.close()
    cases.check("healthy after the flood", await health_ok(http), "health")
    scenario.cases = cases.tried - 3 + flood  # each flood event is a case; the summaries are not
    scenario.load = f"4 packets over 1 MiB, then {flood:,} events from one socket beside another user's"
    scenario.events_expected, scenario.events_received = 1, 1
    scenario.note(
        f"{limited:,} of {flood:,} flood events rate-limited; the other user's slowest ack "
        f"{slowest * 1000:.0f} ms over {len(other_ack_s)} acks, its mail in {mail_s * 1000:.0f} ms."
    )
    scenario.checked = (
        "A packet over 1 MiB drops that socket only; a flood of events is answered 'too many requests' while "
        "another user's acks and new mail arrive within generous ceilings; /health stays OK; no ERROR logged."
    )
    cases.assert_all_refused()
    assert not log.errors(), log.errors()[:10]


RAW_FRAMES: dict[str, list[str | bytes]] = {
    "empty Engine.IO frame": [""],
    "text that is no packet": ["hello"],
    "unknown Engine.IO type": ["9"],
    "a second open": ["0"],
    "binary frame": [b"\x00\xff" * 16],
    "unknown Socket.IO type": ["49"],
    "event that is not JSON": ["42not json"],
    "event with no name": ["42[]"],
    "event that is an object": ['42{"a":1}'],
    "event with a number for a name": ['42[5,"x"]'],
    "event null": ["42null"],
    "event nested 100,000 deep": ["42[" + "[" * 100_000 + "]" * 100_000 + "]"],
    "ack id of 5,000 digits": ["42" + "9" * 5000 + '["typing",{}]'],
    "binary event": ['451-["typing",{"_placeholder":true,"num":0}]'],
    "binary event then junk": ['451-["typing",{"_placeholder":true,"num":0}]', b"\x00\x01"],
    "CONNECT_ERROR from a client": ['44{"message":"x"}'],
    "event over 1 MiB": ['42["typing","' + "x" * (1 << 20) + '"]'],
    "ack for nothing": ["4399[1]"],
    "connect again": ['40{"token":"x"}'],
    "connect to another namespace": ['40/admin,{"token":"x"}'],
    "event to another namespace": ['42/admin,["typing",{}]'],
}


@pytest.mark.reliability(11, "Protocol: malformed Engine.IO/Socket.IO frames")
async def test_malformed_frames_on_a_raw_websocket(rig: Rig) -> None:
    stack, http, scenario, account = rig.stack, rig.http, rig.scenario, rig.account
    log, token = await rig.signed_in()
    cases = Cases()
    outcomes: dict[str, str] = {}
    for name, frames in RAW_FRAMES.items():
        raw = await RawSocket.open(http, stack, token)
        for frame in frames:
            if isinstance(frame, bytes):
                await raw.ws.send_bytes(frame)
            else:
                await raw.ws.send_str(frame)
        # Either the connection is dropped, or the frame was ignored and the socket still works.
        if await raw.dropped(timeout=1.0 if rig.full else 0.4):
            outcomes[name] = "dropped"
            ok = True
        else:
            answer = await raw.ack('4211["join_email",{"address":"x@example.test"}]')
            outcomes[name] = "ignored"
            ok = answer is not None and answer.startswith("4311[") and '"ok":false' in answer
        cases.check(name, ok, outcomes[name])
        await raw.close()
        # The bridge still takes a fresh connection at once.
        fresh = await RawSocket.open(http, stack, token)
        answer = await fresh.ack('421["join_email",{"address":"' + account.email + '"}]')
        cases.check(f"after {name}: a new socket works", answer is not None and '"ok":true' in answer, answer)
        await fresh.close()
    cases.check("healthy after the frames", await health_ok(http), "health")
    errors = log.errors()
    cases.check("no ERROR or traceback logged", not errors, errors[:5])
    scenario.cases = cases.tried
    scenario.load = f"{len(RAW_FRAMES)} malformed frames, each on its own raw websocket"
    dropped = sum(v == "dropped" for v in outcomes.values())
    scenario.note(f"{dropped} dropped the connection, {len(outcomes) - dropped} were ignored with the socket working.")
    scenario.checked = (
        "Empty, non-packet, unknown-type, binary, non-JSON, nameless, 100,000-deep, long-id, CONNECT_ERROR and "
        "over-1-MiB frames: the connection is closed or the frame ignored, a new socket works at once, no ERROR "
        "or traceback in the log (malformed frames are one WARNING line without their bytes)."
    )
    cases.assert_all_refused()


@pytest.mark.reliability(11, "Protocol: REST abuse")
async def test_rest_abuse_gets_clear_4xx_json(rig: Rig) -> None:
    http, scenario, account = rig.http, rig.scenario, rig.account
    log, token = await rig.signed_in()
    auth = {"Authorization": f"Bearer {token}"}
    as_json = {**auth, "Content-Type": "application/json"}
    mine = email_id(EmailRef(account.email, "INBOX", 1, 1))
    cases = Cases()

    async def expect(case: str, method: str, url: str, statuses: tuple[int, ...], **kwargs: Any) -> None:
        answer = await request(http, method, url, **kwargs)
        cases.check(case, clear_error(answer, *statuses), (answer.status, answer.content_type, answer.text[:120]))

    json_routes = [
        ("POST", f"/api/v1/email/{mine}/flags"),
        ("POST", f"/api/v1/email/{mine}/move"),
        ("PUT", "/api/v1/settings"),
        ("POST", "/api/v1/email/send"),
        ("POST", "/api/v1/drafts"),
        ("POST", "/api/v1/auth/login"),
    ]
    bodies: dict[str, bytes] = {
        "empty": b"",
        "not JSON": b"not json",
        "truncated": b'{"a":',
        "a list": b"[1,2]",
        "null": b"null",
        "a number": b"5",
        "a string": b'"s"',
        "invalid UTF-8": b"\xff\xfe{}",
        "nested 20,000 deep": b"[" * 20_000 + b"]" * 20_000,
        "a lone surrogate": b'{"subject": "x\\udcff", "add": ["\\udcff"], "mailbox": "\\udcff", "email": "\\udcff"}',
        "wrong types": b'{"add": "x", "remove": 5, "mailbox": [], "to": 5, "theme": 1, "email": 5, "password": []}',
        "nested objects": b'{"add": [{"a": 1}], "mailbox": {"$ne": 1}, "to": [{"x": 1}], "theme": {"$set": 1}}',
    }
    for method, url in json_routes:
        for name, body in bodies.items():
            statuses = (400, 404) if "/email/" in url and "send" not in url else (400, 403)
            await expect(f"{method} {url[:30]} {name}", method, url, statuses, headers=as_json, data=body)
        await expect(
            f"{method} {url[:30]} over 64 kB" if "send" not in url else f"{method} {url[:30]} over 40 MiB",
            method,
            url,
            (413,),
            headers=as_json,
            data=b'{"a": "' + b"x" * ((41 << 20) if "send" in url or "drafts" in url else (65 << 10)) + b'"}',
        )
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            await expect(
                f"{method} {url[:30]} as {content_type}",
                method,
                url,
                (415,),
                headers={**auth, "Content-Type": content_type},
                data=b'{"add": ["\\\\Seen"]}',
            )
    traversal = [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "....",
        "%00%00%00%00",
        "a" * 3000,
        "AAAA",
        email_id(EmailRef(account.email, "../../etc", 1, 1)),
        email_id(EmailRef(account.email, "INBOX\r\nA1 LOGOUT", 1, 1)),
        email_id(EmailRef(account.email, "INBOX", -1, -5)),
        email_id(EmailRef(account.email, "INBOX", 2**63, 2**63)),
    ]
    for ref in traversal:
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/attachments/2"), ("GET", "/attachments/..")):
            await expect(
                f"{method} id {ref[:20]}{suffix}", method, f"/api/v1/email/{ref}{suffix}", (400, 404), headers=auth
            )
        await expect(
            f"flags id {ref[:20]}",
            "POST",
            f"/api/v1/email/{ref}/flags",
            (400, 404),
            headers=auth,
            json={"add": ["\\Seen"]},
        )
    for mailbox in ("../x", "INBOX/../..", "\r\nA1 LOGOUT", "x" * 2000, '"', "*"):
        await expect(
            f"move to {mailbox[:12]!r}",
            "POST",
            f"/api/v1/email/{mine}/move",
            (400, 404),
            headers=auth,
            json={"mailbox": mailbox},
        )
    queries = [
        "/api/v1/email/inbox?limit=abc",
        "/api/v1/email/inbox?limit=99999999999999999999999",
        "/api/v1/email/inbox?limit=-1",
        "/api/v1/email/inbox?cursor=!!!",
        "/api/v1/email/inbox?cursor=" + "A" * 5000,
        "/api/v1/email/inbox?filter=bogus",
        "/api/v1/email/inbox?q=" + "(" * 2000,
        "/api/v1/email/search?q=" + "x" * 7000,
        "/api/v1/email/search?q=before:99999999-99-99",
        "/api/v1/email/search?q=label:%00",
        "/api/v1/email/search",
        "/api/v1/contacts?limit=1e3",
        "/api/v1/contacts?q=" + "a" * 5000,
        f"/api/v1/email/{mine}?remoteImages=yes",
        "/api/v1/uploads?filename=../../x",
    ]
    for url in queries:
        method = "POST" if "uploads" in url else "GET"
        await expect(f"{method} {url[:50]}", method, url, (400,), headers=auth, data=b"x" if method == "POST" else None)
    await expect("no such route", "GET", "/api/v1/nothing-here", (404,), headers=auth)
    await expect("method not allowed", "PATCH", "/api/v1/settings", (405,), headers=auth, json={})
    # Past aiohttp's 8190-byte request line: its HTTP parser answers 400 before any handler (text,
    # not JSON: nothing of the bridge runs). Counted as a case; a 5xx or a hang would fail it.
    for size in (9000, 100_000) + ((1_000_000,) if rig.full else ()):
        answer = await request(http, "GET", "/api/v1/email/inbox?q=" + "x" * size, headers=auth)
        cases.check(
            f"query string of {size:,} bytes", answer.status in (400, 414, 431), (answer.status, answer.text[:80])
        )

    cases.check("healthy after the abuse", await health_ok(http), "health")
    normal = await request(http, "GET", "/api/v1/email/inbox", headers=auth)
    cases.check("a normal request works", normal.status == 200 and "emails" in normal.body, normal.text[:100])
    errors = log.errors()
    cases.check("no ERROR or traceback logged", not errors, errors[:5])
    scenario.cases = cases.tried
    scenario.load = f"1 account, {cases.tried} REST requests"
    scenario.checked = (
        "Wrong JSON types, invalid JSON and UTF-8, 100,000-deep nesting, lone surrogates, bodies over 64 kB / "
        "40 MiB (413), non-JSON content types (415), traversal and malformed ids, IMAP-injecting mailbox names, "
        "bad and huge query strings, unknown routes and methods: each a 4xx JSON error (query strings past the "
        "HTTP parser's 8 kB: its own 400), no 5xx, no ERROR logged, /health OK and a normal request served."
    )
    cases.assert_all_refused()
