"""Scenario 8: user A goes after user B's mail with every id, room, event and origin trick it has;
A sees nothing of B, and B's mail is exactly as it was (checked over IMAP)."""

from __future__ import annotations

import asyncio
import imaplib
import json
import uuid
from typing import Any

import aiohttp
import pytest

from bridge.stack.launcher import StackInfo
from tests.common import Account
from tests.hostile import Answer, Cases, call, clear_error, refused_ack, request, socket_refusal
from tests.mailtools import send_smtp
from tests.reliability import Rig
from tests.socket_client import RecordingClient
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


def _imap_state(stack: StackInfo, account: Account) -> dict[str, list[tuple[str, str]]]:
    """(Subject, FLAGS) of every message in each of the account's mailboxes, as Dovecot has them."""
    found: dict[str, list[tuple[str, str]]] = {}
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        imap.login(account.email, account.password)
        _status, boxes = imap.list()
        for line in boxes:
            name = line.decode().rsplit(" ", 1)[-1].strip('"') if isinstance(line, bytes) else ""
            status, data = imap.select(f'"{name}"', readonly=True)
            if status != "OK" or data[0] == b"0":
                found[name] = []
                continue
            _status, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            items = []
            for item in data:
                if isinstance(item, tuple):
                    flags = item[0].decode().split("FLAGS (", 1)[1].split(")", 1)[0]
                    # \Recent is session state (RFC 3501; gone in RFC 9051): whichever session
                    # selects the mailbox first, B's or the bridge's, takes it. Not a change to B's mail.
                    flags = " ".join(f for f in flags.split() if f != "\\Recent")
                    subject = item[1].decode().split(":", 1)[1].strip()
                    items.append((subject, flags))
            found[name] = sorted(items)
    return found


async def _indexed(http: aiohttp.ClientSession, token: str, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        answer = await request(http, "GET", "/api/v1/email/inbox", headers={"Authorization": f"Bearer {token}"})
        assert isinstance(answer.body, dict) and "emails" in answer.body, (answer.status, answer.body)
        emails: list[dict[str, Any]] = answer.body["emails"]
        if len(emails) >= count:
            return emails
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} mails not indexed")


@pytest.mark.reliability(8, "Cross-user: A against B's mail")
async def test_another_users_mail_is_out_of_reach(rig: Rig) -> None:
    stack, http, scenario = rig.stack, rig.http, rig.scenario
    a, b = rig.account, rig.other_account
    n_mails = 10 if rig.full else 3
    scenario.load = f"2 accounts, {n_mails} mails of B's, attacked over REST and Socket.IO"
    tag = uuid.uuid4().hex[:8]
    subjects = [f"B-secret-{tag}-{i}" for i in range(n_mails)]
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", b.email, s) for s in subjects])
    scenario.mails_sent = n_mails
    token_a, token_b = await rig.login(a), await rig.login(b)
    as_a = {"Authorization": f"Bearer {token_a}"}
    b_mails = await _indexed(http, token_b, n_mails)
    b_ids = [m["id"] for m in b_mails]
    before = await asyncio.to_thread(_imap_state, stack, b)
    scenario.mails_delivered = len(before.get("INBOX", []))
    assert sorted(s for s, _f in before["INBOX"]) == sorted(subjects)

    # What would betray B: B's address, B's subjects, B's email ids.
    secrets = [b.email.lower(), f"B-secret-{tag}".lower(), *(i.lower() for i in b_ids)]
    leaks: list[str] = []

    def seen(where: str, data: object) -> None:
        text = json.dumps(data, default=str).lower() if not isinstance(data, str) else data.lower()
        for secret in secrets:
            if secret in text:
                leaks.append(f"{where}: {text[:200]}")

    # B's own sessions: one to watch for user_typing, and B's newest event id for A to replay from.
    b_socket = RecordingClient()
    await b_socket.connect(stack.web_url, token_b)
    b_point = await b_socket.wait_for("resume_point")
    a_socket = RecordingClient()
    await a_socket.connect(stack.web_url, token_a)
    cases = Cases()

    def answered(case: str, answer: Answer, *statuses: int) -> None:
        seen(f"REST {case}", answer.text)
        cases.check(case, clear_error(answer, *statuses), (answer.status, answer.body))

    # Socket: B's room, B's ids in every action, typing into B's thread.
    for address in (b.email, b.email.upper(), f" {b.email}", {"address": b.email}):
        ack = await call(a_socket.sio, "join_email", address, timeout=10)
        seen("join_email ack", ack)
        cases.check(f"join_email {address!r}", refused_ack(ack), ack)
    for email_id in b_ids:
        for event, payload in (
            ("mark_read", {"emailId": email_id}),
            ("mark_read", {"emailId": email_id, "read": False}),
            ("typing", {"emailId": email_id}),
            ("typing", {"emailId": email_id, "typing": False}),
        ):
            ack = await call(a_socket.sio, event, payload, timeout=10)
            seen(f"{event} ack", ack)
            cases.check(f"socket {event} on B's id", refused_ack(ack) and "too many" not in ack["error"], ack)
    ack = await call(a_socket.sio, "send_email", {"to": [a.email], "account": b.email, "subject": "x"}, timeout=10)
    cases.check("socket send_email as B", refused_ack(ack), ack)

    # REST: B's ids on every route, B's account on every route that takes one.
    for email_id in b_ids:
        answered("GET B's email", await request(http, "GET", f"/api/v1/email/{email_id}", headers=as_a), 404)
        answered(
            "GET B's attachment",
            await request(http, "GET", f"/api/v1/email/{email_id}/attachments/2", headers=as_a),
            404,
        )
        for flags in ({"add": ["\\Seen"]}, {"add": ["\\Deleted", "\\Flagged"]}, {"remove": ["\\Recent"]}):
            answered(
                "flag B's email",
                await request(http, "POST", f"/api/v1/email/{email_id}/flags", headers=as_a, json=flags),
                404,
            )
        for box in ("Trash", "INBOX", "Archive"):
            answered(
                f"move B's email to {box}",
                await request(http, "POST", f"/api/v1/email/{email_id}/move", headers=as_a, json={"mailbox": box}),
                404,
            )
        answered(
            "archive B's email", await request(http, "POST", f"/api/v1/email/{email_id}/archive", headers=as_a), 404
        )
        answered("delete B's email", await request(http, "DELETE", f"/api/v1/email/{email_id}", headers=as_a), 404)
        answered(
            "send with B's email as draftId",
            await request(
                http, "POST", "/api/v1/email/send", headers=as_a, json={"to": [a.email], "draftId": email_id}
            ),
            404,
        )
        answered(
            "draft replacing B's email",
            await request(http, "POST", "/api/v1/drafts", headers=as_a, json={"subject": "x", "replaces": email_id}),
            404,
        )
    for url in (
        "/api/v1/email/inbox",
        "/api/v1/email/search?q=B-secret",
        "/api/v1/mailboxes",
        "/api/v1/contacts",
        "/api/v1/settings",
    ):
        sep = "&" if "?" in url else "?"
        for spelled in (b.email, b.email.upper()):
            answered(f"GET {url} as B", await request(http, "GET", f"{url}{sep}account={spelled}", headers=as_a), 403)
    answered(
        "PUT settings as B",
        await request(http, "PUT", f"/api/v1/settings?account={b.email}", headers=as_a, json={"theme": "x"}),
        403,
    )
    for route in ("/api/v1/email/send", "/api/v1/drafts"):
        answered(
            f"{route} as B",
            await request(http, "POST", route, headers=as_a, json={"to": [a.email], "account": b.email}),
            403,
        )
    answered(
        "upload as B",
        await request(http, "POST", f"/api/v1/uploads?filename=a.txt&account={b.email}", headers=as_a, data=b"x"),
        403,
    )
    # B's staged upload, named in A's send: not found for A.
    staged = await request(
        http, "POST", "/api/v1/uploads?filename=b.txt", headers={"Authorization": f"Bearer {token_b}"}, data=b"B's"
    )
    assert staged.status == 201, staged.text
    answered(
        "send with B's upload",
        await request(
            http,
            "POST",
            "/api/v1/email/send",
            headers=as_a,
            json={"to": [a.email], "attachments": [{"uploadId": staged.body["id"]}]},
        ),
        400,
    )
    # A search of A's own mail that names B's mailbox or folder: still only A's index.
    search = await request(http, "GET", "/api/v1/email/search", params={"q": f"B-secret-{tag}"}, headers=as_a)
    seen("search", search.text)
    cases.check("search for B's subjects", search.status == 200 and search.body["emails"] == [], search.body)

    # Origins: a foreign one on the REST API and on the socket handshake.
    for origin in ("https://evil.test", "null", stack.web_url + ".evil.test"):
        answered(
            f"REST Origin {origin}", await request(http, "GET", "/api/v1/me", headers={**as_a, "Origin": origin}), 403
        )
        refusal, _ = await socket_refusal(stack.web_url, {"token": token_a}, headers={"Origin": origin})
        cases.check(f"socket Origin {origin}", refusal is not None, refusal)

    # A reconnects with B's event ids (as a string, and per account) to have B's log replayed.
    b_event = b_point["eventId"]
    resumed = []
    for last in ("0-0", b_event, {b.email: "0-0"}, {b.email: "0-0", a.email: "0-0"}, {b.email.upper(): "0-0"}):
        client = RecordingClient()
        await client.sio.connect(
            stack.web_url, auth={"token": token_a, "lastEventId": last}, transports=["websocket"], wait_timeout=5
        )
        resumed.append(client)
        cases.check(f"resume with lastEventId {last!r}", client.sio.connected, "not connected")

    # B's own activity meanwhile: B's sessions must hear it, A's must not.
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", b.email, f"B-secret-{tag}-late")])
    await b_socket.wait_for("new_email", lambda e: e["subject"] == f"B-secret-{tag}-late")
    await asyncio.sleep(1.0)  # room for a stray event to reach A
    typing_seen_by_b = [d for name, d in b_socket.events if name == "user_typing"]
    cases.check("B's socket got no user_typing from A", typing_seen_by_b == [], typing_seen_by_b)
    for client in [a_socket, *resumed]:
        for name, data in client.events:
            seen(f"A's socket event {name}", data)
        await client.close()
    await b_socket.close()

    after = await asyncio.to_thread(_imap_state, stack, b)
    after_inbox = [item for item in after["INBOX"] if not item[0].endswith("-late")]
    cases.check("B's INBOX unchanged (subjects and flags)", after_inbox == before["INBOX"], (before, after))
    for box, items in after.items():
        if box != "INBOX":
            cases.check(f"B's {box} unchanged", items == before.get(box, []), items)
    scenario.cases = cases.tried
    scenario.leaks = len(leaks)
    scenario.checked = (
        "As A: B's room, B's ids over REST (read, attachment, flags, move, archive, delete, draftId, replaces) and "
        "the socket (mark_read, typing), B's account on every route, B's upload, foreign Origins, resume from B's "
        "event ids; each refused (404 like a missing id, 403 for B's account), A saw nothing of B, B heard no "
        "typing, B's mail unchanged over IMAP."
    )
    assert not leaks, leaks[:10]
    cases.assert_all_refused()
