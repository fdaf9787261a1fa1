"""The REST API on the real stack: listings from the index, bodies over IMAP, send, flags, move, delete."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import uuid
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest

from bridge.browser_events import EmailRef, email_id
from bridge.stack.launcher import StackInfo
from tests.conftest import Account, login
from tests.mailtools import send_smtp, wait_for_messages
from tests.socket_client import RecordingClient
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


async def authed(http: aiohttp.ClientSession, account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {await login(http, account)}"}


async def deliver_and_wait(stack: StackInfo, http: aiohttp.ClientSession, account: Account, *subjects: str) -> None:
    await asyncio.to_thread(send_smtp, stack, [message("carol@outside.test", account.email, s) for s in subjects])
    headers = await authed(http, account)
    for _ in range(100):  # the index follows the events: wait until it lists them all
        async with http.get("/api/v1/email/inbox", headers=headers, params={"limit": "200"}) as r:
            listed = {e["subject"] for e in (await r.json())["emails"]}
        if set(subjects) <= listed:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not indexed: {set(subjects) - listed}")


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str], **params: str) -> Any:
    async with http.get(url, headers=headers, params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_requests_without_a_valid_token_are_401(http: aiohttp.ClientSession) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        async with http.get("/api/v1/email/inbox", headers=headers) as r:
            assert r.status == 401


async def test_listing_pages_newest_first_and_filters(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    await deliver_and_wait(stack, http, account, "one", "two", "three")
    headers = await authed(http, account)
    first = await get_json(http, "/api/v1/email/inbox", headers, limit="2")
    assert len(first["emails"]) == 2 and first["nextCursor"]
    second = await get_json(http, "/api/v1/email/inbox", headers, limit="2", cursor=first["nextCursor"])
    assert len(second["emails"]) == 1 and second["nextCursor"] is None
    everything = first["emails"] + second["emails"]
    assert sorted(e["subject"] for e in everything) == ["one", "three", "two"]
    assert [e["uid"] for e in everything] == sorted((e["uid"] for e in everything), reverse=True)
    assert all(e["unread"] for e in everything)

    read = everything[0]
    async with http.post(f"/api/v1/email/{read['id']}/flags", headers=headers, json={"add": ["\\Seen"]}) as r:
        assert r.status == 200, await r.text()
    for _ in range(100):
        unread = await get_json(http, "/api/v1/email/inbox", headers, filter="unread")
        if len(unread["emails"]) == 2:
            break
        await asyncio.sleep(0.1)
    assert read["id"] not in {e["id"] for e in unread["emails"]}
    found = await get_json(http, "/api/v1/email/search", headers, q="subject:three")
    assert [e["subject"] for e in found["emails"]] == ["three"]
    boxes = await get_json(http, "/api/v1/mailboxes", headers)
    inbox = next(b for b in boxes["mailboxes"] if b["name"] == "INBOX")
    assert (inbox["total"], inbox["unread"]) == (3, 2)


async def test_one_message_with_sanitised_html_and_attachments(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Carol <carol@outside.test>", account.email, "rich"
    m.set_content("plain version")
    m.add_alternative(
        '<p onclick="evil()">Hi <b>there</b><script>alert(1)</script><img src="http://x.test/t.png"></p>',
        subtype="html",
    )
    m.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="report.pdf")
    await asyncio.to_thread(send_smtp, stack, [m])
    await deliver_and_wait(stack, http, account)
    headers = await authed(http, account)
    for _ in range(100):
        listing = await get_json(http, "/api/v1/email/inbox", headers)
        if listing["emails"]:
            break
        await asyncio.sleep(0.1)
    item = listing["emails"][0]
    body = await get_json(http, f"/api/v1/email/{item['id']}", headers)
    assert body["text"].strip() == "plain version"
    assert "<b>there</b>" in body["html"]
    assert "script" not in body["html"].lower() and "onclick" not in body["html"].lower()
    assert body["blockedRemoteImages"] == 1
    (attachment,) = body["attachments"]
    assert attachment["filename"] == "report.pdf"
    async with http.get(attachment["url"], headers=headers) as r:
        assert r.status == 200
        assert await r.read() == b"%PDF-1.4 fake"
        assert "attachment" in r.headers["Content-Disposition"]


async def test_other_users_ids_and_accounts_are_refused(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    headers = await authed(http, account)
    theirs = email_id(EmailRef(other_account.email, "INBOX", 1, 1))
    for method, url in [
        ("GET", f"/api/v1/email/{theirs}"),
        ("DELETE", f"/api/v1/email/{theirs}"),
        ("GET", f"/api/v1/email/{theirs}/attachments/2"),
    ]:
        async with http.request(method, url, headers=headers) as r:
            assert r.status == 404, (method, url)
            assert (await r.json()) == {"error": "no such email"}
    async with http.post(f"/api/v1/email/{theirs}/move", headers=headers, json={"mailbox": "Archive"}) as r:
        assert r.status == 404
    async with http.get("/api/v1/email/inbox", headers=headers, params={"account": other_account.email}) as r:
        assert r.status == 403
    mine_missing = email_id(EmailRef(account.email, "INBOX", 1, 12345))
    async with http.get(f"/api/v1/email/{mine_missing}", headers=headers) as r:
        assert r.status == 404 and (await r.json()) == {"error": "no such email"}


async def test_send_delivers_saves_to_sent_and_tells_the_sender(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    headers = await authed(http, account)
    sender = RecordingClient()
    await sender.connect(stack.web_url, headers["Authorization"][7:])
    subject = f"hello {uuid.uuid4().hex[:6]}"
    payload = {
        "to": [other_account.email],
        "subject": subject,
        "body": "Hi!",
        "html": "<p>Hi!</p>",
        "attachments": [
            {"filename": "a.txt", "contentType": "text/plain", "content": base64.b64encode(b"abc").decode()}
        ],
    }
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 200, await r.text()
        sent = await r.json()
    assert sent["success"] is True and sent["savedToSent"] is True
    assert await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1) == [
        sent["messageId"]
    ]
    await sender.wait_for("email_sent", lambda e: e["messageId"] == sent["messageId"])
    await sender.close()

    def sent_folder() -> int:
        with imaplib.IMAP4(stack.imap["host"], stack.imap["port"]) as imap:
            imap.login(account.email, account.password)
            _status, data = imap.select("Sent", readonly=True)
            return int(data[0])

    assert await asyncio.to_thread(sent_folder) == 1


@pytest.mark.parametrize(
    ("payload", "message_part"),
    [
        ({"to": ["a@example.test"], "subject": "x\r\nBcc: victim@example.test"}, "line breaks"),
        ({"to": ["a@example.test\r\nRCPT TO:<x@y>"], "subject": "x"}, "invalid address"),
        ({"to": [f"r{n}@example.test" for n in range(101)], "subject": "x"}, "at most 100 recipients"),
        ({"to": [], "subject": "x"}, "at least one recipient"),
        ({"to": ["not-an-address"], "subject": "x"}, "invalid address"),
        ({"to": ["a@example.test"], "inReplyTo": "nope"}, "inReplyTo"),
        ({"to": ["a@example.test"], "attachments": [{"filename": "../x", "content": "YQ=="}]}, "filename"),
        ({"to": ["a@example.test"], "attachments": [{"filename": "x", "content": "%%%"}]}, "base64"),
    ],
)
async def test_send_refuses_bad_input(
    http: aiohttp.ClientSession, account: Account, payload: dict[str, Any], message_part: str
) -> None:
    headers = await authed(http, account)
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 400
        assert message_part in (await r.json())["error"]


async def test_move_and_delete_report_back_as_events(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    await deliver_and_wait(stack, http, account, "move me", "delete me")
    headers = await authed(http, account)
    client = RecordingClient()
    await client.connect(stack.web_url, headers["Authorization"][7:])
    emails = {e["subject"]: e for e in (await get_json(http, "/api/v1/email/inbox", headers))["emails"]}
    async with http.post(
        f"/api/v1/email/{emails['move me']['id']}/move", headers=headers, json={"mailbox": "Archive"}
    ) as r:
        assert r.status == 404  # no Archive yet: a clear error, nothing moved
    await client.sio.call("mark_read", {"emailId": emails["move me"]["id"]}, timeout=15)
    async with http.delete(f"/api/v1/email/{emails['delete me']['id']}", headers=headers) as r:
        assert r.status == 200, await r.text()
    trashed = await client.wait_for("new_email", lambda e: e["mailbox"] == "Trash")
    assert trashed["subject"] == "delete me"
    await client.wait_for("email_deleted", lambda e: e["emailId"] == emails["delete me"]["id"])
    async with http.delete(f"/api/v1/email/{trashed['id']}", headers=headers) as r:
        assert r.status == 200, await r.text()
    await client.wait_for("email_deleted", lambda e: e["emailId"] == trashed["id"])
    await client.close()


async def test_settings_round_trip(http: aiohttp.ClientSession, account: Account) -> None:
    headers = await authed(http, account)
    async with http.put("/api/v1/settings", headers=headers, json={"signature": "-- A", "notifications": True}) as r:
        assert r.status == 200
        assert (await r.json())["settings"] == {"signature": "-- A", "notifications": True}
    async with http.put("/api/v1/settings", headers=headers, json={"colour": "red"}) as r:
        assert r.status == 400
    async with http.put("/api/v1/settings", headers=headers, json={"notifications": "yes"}) as r:
        assert r.status == 400


async def test_foreign_origins_are_refused_and_floods_get_429(http: aiohttp.ClientSession, account: Account) -> None:
    headers = await authed(http, account)
    async with http.get("/api/v1/settings", headers={**headers, "Origin": "https://evil.test"}) as r:
        assert r.status == 403
    statuses = []
    for _ in range(100):
        async with http.get("/api/v1/settings", headers=headers) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                break
    assert statuses[-1] == 429


async def test_mail_from_before_the_bridge_is_indexed_on_first_login(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    """Mail the index never heard of (here: its documents removed before the account's first login)
    is backfilled from IMAP at that login."""
    from pymongo import AsyncMongoClient  # noqa: PLC0415

    await asyncio.to_thread(
        send_smtp, stack, [message("carol@outside.test", account.email, s) for s in ("old one", "old two")]
    )
    await asyncio.to_thread(wait_for_messages, stack, account.email, account.password, 2)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_url)
    messages = client["mailbridge"]["messages"]
    for _ in range(100):  # let the index consumer finish, then forget what it wrote
        if await messages.count_documents({"account": account.email}) == 2:
            break
        await asyncio.sleep(0.1)
    await messages.delete_many({"account": account.email})
    headers = await authed(http, account)  # the first login starts the backfill
    for _ in range(100):
        listing = await get_json(http, "/api/v1/email/inbox", headers)
        if len(listing["emails"]) == 2:
            break
        await asyncio.sleep(0.1)
    assert sorted(e["subject"] for e in listing["emails"]) == ["old one", "old two"]
    assert (await client["mailbridge"]["accounts"].find_one({"account": account.email}))["indexed"] is True
    await client.close()


async def test_archive_is_one_move_event(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> None:
    await deliver_and_wait(stack, http, account, "archive me")
    headers = await authed(http, account)
    client = RecordingClient()
    await client.connect(stack.web_url, headers["Authorization"][7:])
    (mail,) = (await get_json(http, "/api/v1/email/inbox", headers))["emails"]
    async with http.post(f"/api/v1/email/{mail['id']}/archive", headers=headers) as r:
        assert r.status == 200, await r.text()
        moved = await r.json()
    event = await client.wait_for("email_moved", lambda e: e["emailId"] == mail["id"])
    assert (event["fromMailbox"], event["toMailbox"]) == ("INBOX", "Archive")
    assert event["newEmailId"] == moved["newEmailId"]
    arrived = await client.wait_for("new_email", lambda e: e["mailbox"] == "Archive")
    assert arrived["id"] == moved["newEmailId"]
    body = await get_json(http, f"/api/v1/email/{moved['newEmailId']}", headers)
    assert body["subject"] == "archive me"
    await client.close()


async def test_draft_is_saved_to_drafts(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> None:
    headers = await authed(http, account)
    client = RecordingClient()
    await client.connect(stack.web_url, headers["Authorization"][7:])
    async with http.post("/api/v1/drafts", headers=headers, json={"subject": "half written", "body": "to be"}) as r:
        assert r.status == 200, await r.text()
        saved = await r.json()
    draft = await client.wait_for("new_email", lambda e: e["mailbox"] == "Drafts")
    assert draft["subject"] == "half written" and draft["messageId"] == saved["messageId"]
    assert "\\Draft" in draft["flags"] and draft["unread"] is False
    await client.close()


async def test_metrics_count_what_happened(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> None:
    await deliver_and_wait(stack, http, account, "counted")
    async with http.get("/metrics") as r:
        assert r.status == 200
        text = await r.text()
    assert 'mailbridge_events_relayed_total{event="new_email"}' in text
    count = next(line for line in text.splitlines() if line.startswith("mailbridge_relay_latency_seconds_count"))
    assert float(count.split()[-1]) >= 1
    assert "mailbridge_sockets_connected" in text
    assert 'mailbridge_stream_lag_entries{group="bridge",stream="mail:dovecot"}' in text
