"""Scenario 9: hostile sends, over REST and the socket's send_email: header injection, thousands of
recipients, oversized attachments, a send flood. Nothing injected reaches a delivered message,
and no more mail goes out than the limit allows (counted over IMAP)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage

import aiohttp
import pytest

from bridge.stack.launcher import StackInfo
from tests.common import Account
from tests.hostile import ANSWER_CEILING_S, BridgeLog, Cases, call, clear_error, refused_ack, request
from tests.mailtools import imap_messages
from tests.reliability import Rig
from tests.socket_client import RecordingClient

pytestmark = pytest.mark.e2e

SEPARATORS = {"CRLF": "\r\n", "LF": "\n", "CR": "\r", "NEL": "\x85", "LINE SEPARATOR": "\u2028", "NUL": "\x00"}


def _messages(stack: StackInfo, account: Account, mailbox: str = "INBOX") -> list[EmailMessage]:
    return imap_messages(stack, account.email, account.password, mailbox)


async def _wait_for_count(stack: StackInfo, account: Account, count: int, timeout: float = 60) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    found = await asyncio.to_thread(_messages, stack, account)
    while len(found) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        found = await asyncio.to_thread(_messages, stack, account)
    await asyncio.sleep(1.0)  # room for one more than expected to arrive
    return await asyncio.to_thread(_messages, stack, account)


@pytest.fixture
async def sender(rig: Rig) -> AsyncIterator[RecordingClient]:
    """A socket of the rig's account, for the sends over Socket.IO."""
    client = RecordingClient()
    await client.connect(rig.stack.web_url, await rig.login())
    yield client
    await client.close()


def _pid_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.reliability(9, "Sending: header injection")
async def test_header_injection_never_reaches_a_delivered_message(rig: Rig, sender: RecordingClient) -> None:
    stack, http, scenario, other_account = rig.stack, rig.http, rig.scenario, rig.other_account
    victim = rig.pool.take()  # the address every injection tries to add
    headers = await rig.headers()
    to = other_account.email
    injected = f"Bcc: {victim.email}"
    cases = Cases()

    def payloads(sep: str) -> dict[str, dict[str, object]]:
        attach = {"contentType": "text/plain", "content": base64.b64encode(b"x").decode()}
        return {
            "subject": {"to": [to], "subject": f"hi{sep}{injected}"},
            "subject, header after": {"to": [to], "subject": f"hi{sep}X-Injected: yes"},
            "to": {"to": [f"{to}{sep}{injected}"], "subject": "hi"},
            "to, RCPT smuggling": {"to": [f"{to}>{sep}RCPT TO:<{victim.email}"], "subject": "hi"},
            "cc": {"to": [to], "cc": [f"{to}{sep}{injected}"], "subject": "hi"},
            "bcc": {"to": [to], "bcc": [f"{to}{sep}X-Injected: yes"], "subject": "hi"},
            "display name": {"to": [f'"Bob{sep}{injected}" <{to}>'], "subject": "hi"},
            "bare display name": {"to": [f"Bob{sep}X-Injected: yes <{to}>"], "subject": "hi"},
            "attachment filename": {
                "to": [to],
                "subject": "hi",
                "attachments": [{**attach, "filename": f"a{sep}{injected}"}],
            },
            "attachment content type": {
                "to": [to],
                "subject": "hi",
                "attachments": [{**attach, "filename": "a.txt", "contentType": f"text/plain{sep}{injected}"}],
            },
            "inReplyTo": {"to": [to], "subject": "hi", "inReplyTo": f"<a@b>{sep}{injected}"},
        }

    # The fast run tries the line breaks that matter most; the full run every kind.
    separators = SEPARATORS if rig.full else {k: SEPARATORS[k] for k in ("CRLF", "LF", "NEL", "LINE SEPARATOR")}
    for sep_name, sep in separators.items():
        for field, payload in payloads(sep).items():
            answer = await request(http, "POST", "/api/v1/email/send", headers=headers, json=payload)
            cases.check(f"REST {field} {sep_name}", clear_error(answer, 400), (answer.status, answer.body))
            ack = await call(sender.sio, "send_email", payload)
            cases.check(f"socket {field} {sep_name}", refused_ack(ack), ack)
            answer = await request(http, "POST", "/api/v1/drafts", headers=headers, json=payload)
            cases.check(f"draft {field} {sep_name}", clear_error(answer, 400), (answer.status, answer.body))
    # A lone surrogate (valid JSON escape, no Unicode text) in each header field.
    for field in ("subject", "to", "filename"):
        raw = {
            "subject": f'{{"to": ["{to}"], "subject": "x\\udcff"}}',
            "to": '{"to": ["x\\udcff <' + to + '>"]}',
            "filename": f'{{"to": ["{to}"], "attachments": [{{"filename": "a\\udcff", "content": "eA=="}}]}}',
        }[field]
        answer = await request(
            http, "POST", "/api/v1/email/send", headers={**headers, "Content-Type": "application/json"}, data=raw
        )
        cases.check(f"REST lone surrogate in {field}", clear_error(answer, 400), (answer.status, answer.body))

    # What may go through: header-like text without a line break, quotes and commas in a name.
    tag = uuid.uuid4().hex[:8]
    legit = {
        "to": [f'"Bob, {injected}" <{to}>'],
        "subject": f"{tag} {injected} X-Injected: yes",
        "body": f"{injected}\r\nX-Injected: yes\r\n\r\nbody",
        "attachments": [{"filename": f"{tag} {injected}.txt", "content": base64.b64encode(b"x").decode()}],
    }
    answer = await request(http, "POST", "/api/v1/email/send", headers=headers, json=legit)
    assert answer.status == 200, answer.text
    ack = await call(sender.sio, "send_email", {**legit, "subject": f"{tag} socket {injected}"})
    assert isinstance(ack, dict) and ack.get("ok") is True, ack
    delivered = await _wait_for_count(stack, other_account, 2)
    scenario.mails_sent, scenario.mails_delivered = 2, len(delivered)
    for mail in delivered:
        cases.check("delivered: no injected header", mail["X-Injected"] is None and mail["Bcc"] is None, mail.items())
        cases.check("delivered: subject intact", str(mail["Subject"]).startswith(tag), mail["Subject"])
        names = [part.get_filename() for part in mail.iter_attachments()]
        cases.check("delivered: filename intact", names == [f"{tag} {injected}.txt"], names)
    victim_mail = await asyncio.to_thread(_messages, stack, victim)
    cases.check("the victim received nothing", victim_mail == [], [m["Subject"] for m in victim_mail])
    scenario.cases = cases.tried
    scenario.load = f"1 sender, {len(separators)} kinds of line break x 11 fields x 3 routes, 2 legitimate sends"
    scenario.checked = (
        "CR, LF, CRLF, NEL, U+2028 and NUL injected into subject, to, cc, bcc, display name, attachment filename "
        "and type, inReplyTo (REST send, socket send_email, drafts) and lone surrogates: each refused 400 or an "
        "error ack; the delivered mails (IMAP) carry no injected header, the victim got nothing."
    )
    assert len(delivered) == 2
    cases.assert_all_refused()


@pytest.mark.reliability(9, "Sending: thousands of recipients")
async def test_thousands_of_recipients_are_refused_at_once(rig: Rig, sender: RecordingClient) -> None:
    http, scenario, other_account = rig.http, rig.scenario, rig.other_account
    log = BridgeLog(rig.stack)
    headers = await rig.headers()
    other_headers = await rig.headers(other_account)
    counts = [101, 1000, 5000, 200_000] + ([1_000_000] if rig.full else [])
    scenario.load = f"recipient lists of {', '.join(f'{n:,}' for n in counts)}, REST and socket"
    cases = Cases()
    slowest_other = 0.0
    for n in counts:
        addresses = [f"r{i}@example.test" for i in range(n)]
        for field in ("to", "bcc"):
            payload = (
                {field: addresses, "subject": "many"}
                if field == "to"
                else {"to": [other_account.email], field: addresses}
            )
            sending = asyncio.create_task(request(http, "POST", "/api/v1/email/send", headers=headers, json=payload))
            answer = await sending
            ok = clear_error(answer, 400) and "at most 100 recipients" in answer.body["error"]
            cases.check(f"REST {n:,} in {field}", ok, (answer.status, answer.body, answer.seconds))
            # Another user is served meanwhile, and at once.
            me = await request(http, "GET", "/api/v1/me", headers=other_headers)
            slowest_other = max(slowest_other, me.seconds)
        if n <= 20_000:  # the socket takes at most 1 MiB a packet
            ack = await call(sender.sio, "send_email", {"to": addresses, "subject": "many"})
            cases.check(f"socket {n:,}", refused_ack(ack) and "at most 100 recipients" in ack["error"], ack)
    # Comma-separated inside items: counted after parsing.
    packed = [", ".join(f"r{i}.{j}@example.test" for j in range(30)) for i in range(10)]
    answer = await request(http, "POST", "/api/v1/email/send", headers=headers, json={"to": packed})
    cases.check("REST 300 addresses in 10 items", clear_error(answer, 400), answer.body)
    scenario.cases = cases.tried
    scenario.note(f"Another user's slowest /me right after a refusal: {slowest_other * 1000:.0f} ms.")
    scenario.checked = (
        "Recipient lists over 100 (to, cc and bcc together) refused with 400 and the limit in the message, before "
        "parsing the list; nothing sent; no ERROR logged."
    )
    cases.assert_all_refused()
    assert slowest_other < ANSWER_CEILING_S
    assert not log.errors(), log.errors()[:5]


@pytest.mark.reliability(9, "Sending: oversized attachments")
async def test_oversized_attachments_are_413_without_buffering_everything(rig: Rig, sender: RecordingClient) -> None:
    stack, http, scenario, other_account = rig.stack, rig.http, rig.scenario, rig.other_account
    headers = await rig.headers()
    cases = Cases()
    limit = 25 << 20
    just_over = base64.b64encode(b"\0" * (limit + 1)).decode()
    answer = await request(
        http,
        "POST",
        "/api/v1/email/send",
        headers=headers,
        json={"to": [other_account.email], "attachments": [{"filename": "big.bin", "content": just_over}]},
    )
    cases.check("REST inline attachment over 25 MiB", clear_error(answer, 413), (answer.status, answer.body))
    halves = base64.b64encode(b"\0" * (limit // 2 + 1)).decode()
    answer = await request(
        http,
        "POST",
        "/api/v1/email/send",
        headers=headers,
        json={
            "to": [other_account.email],
            "attachments": [{"filename": "a.bin", "content": halves}, {"filename": "b.bin", "content": halves}],
        },
    )
    cases.check("REST two attachments together over 25 MiB", clear_error(answer, 413), (answer.status, answer.body))
    answer = await request(http, "POST", "/api/v1/uploads?filename=big.bin", headers=headers, data=b"\0" * (limit + 1))
    cases.check("upload over 25 MiB", clear_error(answer, 413), (answer.status, answer.body))
    # A body that announces 41 MiB (and never sends them): refused by its length alone. On a
    # connection of its own, since the lie leaves that connection useless for a next request.
    async with aiohttp.ClientSession(base_url=stack.web_url) as once:
        answer = await request(
            once,
            "POST",
            "/api/v1/email/send",
            headers={**headers, "Content-Type": "application/json", "Content-Length": str(41 << 20)},
            data=b"{",
        )
    cases.check("send body announcing 41 MiB", answer.status == 413, (answer.status, answer.text[:100]))

    # A body with no length, streamed far past the limit: refused once over it, memory bounded.
    pid = rig.launcher.service("bridge").process.pid  # type: ignore[union-attr]
    streamed_mib = 400 if rig.full else 60  # past the 40 MiB body limit either way
    rss_before = _pid_rss_kib(pid)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"to": ["' + other_account.email.encode() + b'"], "body": "'
        chunk = b"x" * (1 << 20)
        for _ in range(streamed_mib):
            sent += len(chunk)
            yield chunk
        yield b'"}'

    for route in ("/api/v1/email/send", "/api/v1/uploads?filename=s.bin"):
        sent = 0
        try:
            answer = await request(
                http, "POST", route, headers={**headers, "Content-Type": "application/json"}, data=body()
            )
            ok = clear_error(answer, 413)
            detail: object = (answer.status, answer.body)
        except aiohttp.ClientError as exc:  # the bridge answered and closed while we were still sending
            ok, detail = sent < streamed_mib << 20, f"{exc!r} after {sent >> 20} MiB"
        cases.check(f"chunked {streamed_mib} MiB to {route}", ok, detail)
    growth_mib = (_pid_rss_kib(pid) - rss_before) / 1024
    cases.check(
        "bridge memory grew by less than the streamed bodies", growth_mib < streamed_mib, f"{growth_mib:.0f} MiB"
    )
    # The socket: a send over its 1 MiB packet limit drops that socket only.
    big = base64.b64encode(b"\0" * (1 << 20)).decode()
    try:
        await sender.sio.call(
            "send_email",
            {"to": [other_account.email], "attachments": [{"filename": "a", "content": big}]},
            timeout=5,
        )
        dropped = False
    except Exception:  # python-socketio raises a timeout or a disconnection
        dropped = True
    for _ in range(50):
        if not sender.sio.connected:
            break
        await asyncio.sleep(0.1)
    cases.check("socket send over 1 MiB drops the socket", dropped and not sender.sio.connected, sender.sio.connected)
    nothing = await asyncio.to_thread(_messages, stack, other_account)
    cases.check("nothing was delivered", nothing == [], len(nothing))
    scenario.cases = cases.tried
    scenario.load = f"25 MiB + 1 byte attachments, a 41 MiB announced body, {streamed_mib} MiB streamed twice"
    scenario.note(f"Bridge memory growth after the streamed bodies: {growth_mib:.0f} MiB.")
    scenario.checked = (
        "Attachments over the 25 MiB limit (inline, two halves, upload) 413 with the limit in the message; bodies "
        "over 40 MiB refused by their length or once read past it (memory bounded); a socket packet over 1 MiB "
        "drops that socket; nothing delivered."
    )
    cases.assert_all_refused()


@pytest.mark.reliability(9, "Sending: send-rate flood")
async def test_send_flood_is_held_to_the_limit(rig: Rig, sender: RecordingClient) -> None:
    stack, http, scenario, other_account = rig.stack, rig.http, rig.scenario, rig.other_account
    headers = await rig.headers()
    flood = 120 if rig.full else 30
    per_minute, burst = 30, 10  # BRIDGE_SEND_PER_MINUTE's default, burst a third of it (bridge/app.py)
    accepted = refused = 0
    wrong: list[object] = []
    started = time.monotonic()

    async def one(i: int) -> None:
        nonlocal accepted, refused
        payload = {"to": [other_account.email], "subject": f"flood {i}", "body": "x"}
        if i % 2:
            ack = await sender.sio.call("send_email", payload, timeout=30)
            if isinstance(ack, dict) and ack.get("ok") is True:
                accepted += 1
            elif refused_ack(ack) and (
                ack["error"] == "too many requests" or ack["error"].startswith("sending too fast")
            ):
                refused += 1
                if ack.get("retryAfter") is None:
                    wrong.append(ack)
            else:
                wrong.append(ack)
            return
        answer = await request(http, "POST", "/api/v1/email/send", headers=headers, json=payload, retry_429=False)
        if answer.status == 200:
            accepted += 1
        elif clear_error(answer, 429) and int(answer.retry_after or 0) >= 1:
            refused += 1
        else:
            wrong.append((answer.status, answer.body, answer.retry_after))

    await asyncio.gather(*(one(i) for i in range(flood)))
    elapsed = time.monotonic() - started
    allowed = burst + int(elapsed * per_minute / 60) + 1
    delivered = await _wait_for_count(stack, other_account, accepted)
    scenario.load = f"{flood} sends at once, half REST, half socket"
    scenario.mails_sent = accepted
    scenario.mails_delivered = len(delivered)
    scenario.cases = flood
    scenario.note(f"{accepted} accepted, {refused} refused with 429 / an error ack and retryAfter in {elapsed:.1f} s.")
    scenario.checked = (
        f"A flood of sends is held to the sending limit ({per_minute}/min, {burst} at once): the rest 429 with "
        "Retry-After (or an error ack with retryAfter), and exactly the accepted mails are delivered (IMAP)."
    )
    assert not wrong, wrong[:5]
    assert accepted + refused == flood
    assert 1 <= accepted <= allowed, (accepted, allowed)
    assert len(delivered) == accepted
