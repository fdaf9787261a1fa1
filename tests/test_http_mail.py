"""The REST API on the real stack: listings from the index, bodies over IMAP, send, flags, move, delete,
contacts, draft autosave."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import time
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest

from bridge.browser_events import EmailRef, email_id
from bridge.stack.launcher import StackInfo
from tests.common import Account, host_token, login
from tests.mailtools import imap_messages, send_smtp, wait_for_messages
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
    async with http.post("/api/v1/mailboxes/read", headers=headers, json={"mailbox": "INBOX"}) as r:
        assert (r.status, await r.json()) == (200, {"ok": True})
    for _ in range(100):
        unread = await get_json(http, "/api/v1/email/inbox", headers, filter="unread")
        if not unread["emails"]:
            break
        await asyncio.sleep(0.1)
    assert unread["emails"] == []
    # A standard folder not made yet has nothing to mark; a name that is no mailbox name is refused.
    async with http.post("/api/v1/mailboxes/read", headers=headers, json={"mailbox": "Junk"}) as r:
        assert r.status == 200, await r.text()
    async with http.post("/api/v1/mailboxes/read", headers=headers, json={"mailbox": ""}) as r:
        assert r.status == 400


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
    # The filter read the sender's login from Postfix's Received: field, and took it out of the copy
    # that travels on: recipients do not learn it.
    (delivered,) = await asyncio.to_thread(imap_messages, stack, other_account.email, other_account.password)
    received = " ".join(str(value) for value in delivered.get_all("Received") or [])
    assert "ESMTPA" in received and "Authenticated sender" not in received

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
        f"/api/v1/email/{emails['move me']['id']}/move", headers=headers, json={"mailbox": "Projects"}
    ) as r:
        assert r.status == 404  # no such folder: a clear error, nothing moved
    await client.sio.call("mark_read", {"emailId": emails["move me"]["id"]}, timeout=15)
    async with http.delete(f"/api/v1/email/{emails['delete me']['id']}", headers=headers) as r:
        assert r.status == 200, await r.text()
        deleted = await r.json()
    trashed = await client.wait_for("new_email", lambda e: e["mailbox"] == "Trash")
    assert trashed["subject"] == "delete me"
    # Where it went, for an undo to move it back.
    assert (deleted["fromMailbox"], deleted["toMailbox"], deleted["newEmailId"]) == ("INBOX", "Trash", trashed["id"])
    await client.wait_for("email_deleted", lambda e: e["emailId"] == emails["delete me"]["id"])
    async with http.delete(f"/api/v1/email/{trashed['id']}", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json()) == {"ok": True, "newEmailId": None}  # gone for good: nothing to undo
    await client.wait_for("email_deleted", lambda e: e["emailId"] == trashed["id"])
    # A standard folder not made yet (every client lists it: bridge.mailbox_order) is made by a move.
    async with http.post(
        f"/api/v1/email/{emails['move me']['id']}/move", headers=headers, json={"mailbox": "Junk"}
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["toMailbox"] == "Junk"
    await client.wait_for("new_email", lambda e: e["mailbox"] == "Junk" and e["subject"] == "move me")
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
    # The backfill marks the account indexed after its last write, so the mark may trail the listing.
    accounts = client["mailbridge"]["accounts"]
    for _ in range(300):
        if ((await accounts.find_one({"account": account.email})) or {}).get("indexed") is True:
            break
        await asyncio.sleep(0.1)
    assert ((await accounts.find_one({"account": account.email})) or {}).get("indexed") is True
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


async def test_me_describes_the_token(http: aiohttp.ClientSession, account: Account, other_account: Account) -> None:
    token = await login(http, account)
    async with http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        me = await r.json()
    assert set(me) == {"subject", "accounts", "expiresAt"}
    assert me["subject"] == account.email and me["accounts"] == [account.email]
    assert isinstance(me["expiresAt"], int) and me["expiresAt"] > time.time()
    host = host_token("user-42", [account.email, other_account.email])
    async with http.get("/api/v1/me", headers={"Authorization": f"Bearer {host}"}) as r:
        assert (await r.json())["accounts"] == [account.email, other_account.email]
        assert (await r.json())["subject"] == "user-42"
    async with http.get("/api/v1/me") as r:
        assert r.status == 401


async def first_email(http: aiohttp.ClientSession, headers: dict[str, str], mailbox: str = "INBOX") -> Any:
    for _ in range(100):
        listing = await get_json(http, "/api/v1/email/inbox", headers, mailbox=mailbox)
        if listing["emails"]:
            return listing["emails"][0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing indexed in {mailbox}")


async def test_remote_images_are_shown_only_when_asked_for(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "News <news@outside.test>", account.email, "pictures"
    m.set_content("plain")
    m.add_alternative('<p>Look<img src="https://example.test/x.png" alt="x"></p>', subtype="html")
    await asyncio.to_thread(send_smtp, stack, [m])
    headers = await authed(http, account)
    url = f"/api/v1/email/{(await first_email(http, headers))['id']}"

    blocked = await get_json(http, url, headers)
    assert blocked["blockedRemoteImages"] == 1 and "example.test" not in blocked["html"]
    shown = await get_json(http, url, headers, remoteImages="1")
    assert shown["blockedRemoteImages"] == 0 and 'src="https://example.test/x.png"' in shown["html"]
    assert {k: v for k, v in shown.items() if k not in ("html", "blockedRemoteImages")} == {
        k: v for k, v in blocked.items() if k not in ("html", "blockedRemoteImages")
    }
    # Each variant is cached under its own key: asking for one never answers the other.
    assert (await get_json(http, url, headers))["blockedRemoteImages"] == 1
    assert (await get_json(http, url, headers, remoteImages="0"))["blockedRemoteImages"] == 1
    assert (await get_json(http, url, headers, remoteImages="1"))["blockedRemoteImages"] == 0
    for bad in ("yes", "true", "2", ""):
        async with http.get(url, headers=headers, params={"remoteImages": bad}) as r:
            assert r.status == 400, bad
            assert "remoteImages" in (await r.json())["error"]


def dated(sender: str, to: str, subject: str, date: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Date"] = sender, to, subject, date
    m.set_content("hello")
    return m


async def contacts(http: aiohttp.ClientSession, headers: dict[str, str], **params: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = (await get_json(http, "/api/v1/contacts", headers, **params))["contacts"]
    return found


async def test_contacts_complete_from_past_correspondents(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    await asyncio.to_thread(
        send_smtp,
        stack,
        [
            dated("Carol Danvers <carol@outside.test>", account.email, "c1", "Thu, 01 Jan 2026 10:00:00 +0000"),
            dated("Dave Smith <Dave.Smith@outside.test>", account.email, "d1", "Fri, 02 Jan 2026 10:00:00 +0000"),
            dated("carol@outside.test", account.email, "c2", "Sat, 03 Jan 2026 10:00:00 +0000"),
            dated(f"Me Myself <{account.email}>", account.email, "self", "Sun, 04 Jan 2026 10:00:00 +0000"),
            dated("Eve Other <eve@elsewhere.test>", other_account.email, "e1", "Sun, 04 Jan 2026 10:00:00 +0000"),
        ],
    )
    headers = await authed(http, account)
    for _ in range(100):  # the index follows the events: wait for all four
        if len((await get_json(http, "/api/v1/email/inbox", headers))["emails"]) == 4:
            break
        await asyncio.sleep(0.1)
    everyone = await contacts(http, headers)
    # Newest first, each address once (the newest mail had no name: an older one's is used), never
    # the account itself, never another account's correspondents.
    assert everyone == [
        {"name": "Carol Danvers", "address": "carol@outside.test"},
        {"name": "Dave Smith", "address": "Dave.Smith@outside.test"},
    ]
    assert await contacts(http, headers, limit="1") == everyone[:1]
    assert [c["address"] for c in await contacts(http, headers, q="CAR")] == ["carol@outside.test"]
    assert [c["address"] for c in await contacts(http, headers, q="dave.s")] == ["Dave.Smith@outside.test"]
    assert [c["address"] for c in await contacts(http, headers, q="smi")] == ["Dave.Smith@outside.test"]
    assert [c["address"] for c in await contacts(http, headers, q="carol danv")] == ["carol@outside.test"]
    for nothing in ("outside", "anvers", "eve", "me", "(", ".*", "[a-z]"):  # prefixes only, regex escaped
        assert await contacts(http, headers, q=nothing) == [], nothing
    for params in ({"limit": "0"}, {"limit": "51"}, {"limit": "x"}, {"q": "a" * 101}):
        async with http.get("/api/v1/contacts", headers=headers, params=params) as r:
            assert r.status == 400, params
    async with http.get("/api/v1/contacts", headers=headers, params={"account": other_account.email}) as r:
        assert r.status == 403

    # Recipients of what the account sent (the local stack delivers to example.test only).
    payload = {"to": [f"Frank Sentman <{other_account.email}>"], "subject": "out", "body": "x"}
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 200, await r.text()
    for _ in range(100):
        found = await contacts(http, headers, q="sentm")
        if found:
            break
        await asyncio.sleep(0.1)
    assert found == [{"name": "Frank Sentman", "address": other_account.email}]
    assert [c["address"] for c in await contacts(http, headers, q="fr")] == [other_account.email]
    assert [c["address"] for c in await contacts(http, headers)] == [
        other_account.email,  # sent today, after the mail dated January 2026
        "carol@outside.test",
        "Dave.Smith@outside.test",
    ]
    other_headers = await authed(http, other_account)
    for _ in range(100):
        theirs = await contacts(http, other_headers)
        if len(theirs) == 2:
            break
        await asyncio.sleep(0.1)
    assert theirs == [
        {"name": "", "address": account.email},  # who just wrote to it
        {"name": "Eve Other", "address": "eve@elsewhere.test"},
    ]


def imap_subjects(stack: StackInfo, account: Account, mailbox: str) -> list[str]:
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        imap.login(account.email, account.password)
        status, data = imap.select(mailbox, readonly=True)
        if status != "OK" or data[0] == b"0":
            return []
        _status, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [str(message_from_bytes(item[1])["Subject"]) for item in data if isinstance(item, tuple)]


async def save_draft(http: aiohttp.ClientSession, headers: dict[str, str], **body: Any) -> Any:
    async with http.post("/api/v1/drafts", headers=headers, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_autosave_replaces_the_previous_draft(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    headers = await authed(http, account)
    first = await save_draft(http, headers, subject="v1", body="first words")
    assert first["saved"] is True and first["emailId"]
    second = await save_draft(http, headers, subject="v2", body="more words", replaces=first["emailId"])
    assert second["emailId"] and second["emailId"] != first["emailId"]
    assert await asyncio.to_thread(imap_subjects, stack, account, "Drafts") == ["v2"]
    body = await get_json(http, f"/api/v1/email/{second['emailId']}", headers)
    assert (body["subject"], body["text"].strip(), body["messageId"]) == ("v2", "more words", second["messageId"])
    async with http.get(f"/api/v1/email/{first['emailId']}", headers=headers) as r:
        assert r.status == 404

    # Another device's autosave got there first: the old draft is gone, and that is no error.
    third = await save_draft(http, headers, subject="v3", replaces=first["emailId"])
    assert sorted(await asyncio.to_thread(imap_subjects, stack, account, "Drafts")) == ["v2", "v3"]

    await deliver_and_wait(stack, http, account, "not a draft")
    inbox_id = (await first_email(http, headers))["id"]
    theirs = email_id(EmailRef(other_account.email, "Drafts", 1, 1))
    for replaces, status in [(inbox_id, 400), ("garbage!", 400), (theirs, 404), (42, 400)]:
        async with http.post("/api/v1/drafts", headers=headers, json={"subject": "v4", "replaces": replaces}) as r:
            assert r.status == status, (replaces, await r.text())
    assert sorted(await asyncio.to_thread(imap_subjects, stack, account, "Drafts")) == ["v2", "v3"]
    assert await asyncio.to_thread(imap_subjects, stack, account, "INBOX") == ["not a draft"]

    # Sending a draft removes it (and only it).
    payload = {"to": [other_account.email], "subject": "v3 sent", "body": "done", "draftId": third["emailId"]}
    async with http.post("/api/v1/email/send", headers=headers, json={**payload, "draftId": inbox_id}) as r:
        assert r.status == 400  # only a draft may be named, and nothing is sent
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 200, await r.text()
        sent = await r.json()
    assert await asyncio.to_thread(imap_subjects, stack, account, "Drafts") == ["v2"]
    assert await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1) == [
        sent["messageId"]
    ]
    # A draft that is gone by the time the mail is sent does not fail the send.
    async with http.post("/api/v1/email/send", headers=headers, json={**payload, "subject": "again"}) as r:
        assert r.status == 200, await r.text()
    assert await asyncio.to_thread(imap_subjects, stack, account, "Drafts") == ["v2"]


async def test_folders_are_made_renamed_and_deleted_and_the_standard_ones_stay(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    await deliver_and_wait(stack, http, account, "file me")
    headers = await authed(http, account)

    async def names() -> list[str]:
        return [b["name"] for b in (await get_json(http, "/api/v1/mailboxes", headers))["mailboxes"]]

    async with http.post("/api/v1/mailboxes", headers=headers, json={"name": "Projects"}) as r:
        assert (r.status, await r.json()) == (200, {"ok": True, "name": "Projects"})
    assert (await names())[6:] == ["Projects"]  # after the six standard folders
    async with http.post("/api/v1/mailboxes", headers=headers, json={"name": "Projects"}) as r:
        assert r.status == 400 and "could not be made" in (await r.json())["error"]
    mail = (await get_json(http, "/api/v1/email/inbox", headers))["emails"][0]
    async with http.post(f"/api/v1/email/{mail['id']}/move", headers=headers, json={"mailbox": "Projects"}) as r:
        assert r.status == 200, await r.text()

    async with http.patch("/api/v1/mailboxes", headers=headers, json={"name": "Projects", "newName": "Work/2026"}) as r:
        assert (r.status, await r.json()) == (200, {"ok": True, "name": "Work/2026"})
    assert "Work/2026" in await names() and "Projects" not in await names()
    for _ in range(100):  # the rename's event moves the index's documents
        moved = (await get_json(http, "/api/v1/email/inbox", headers, mailbox="Work/2026"))["emails"]
        if moved:
            break
        await asyncio.sleep(0.1)
    assert [m["subject"] for m in moved] == ["file me"]

    for bad, why in (
        ({"name": "Trash", "newName": "Bin"}, "standard folder"),
        ({"name": "Work/2026", "newName": "Sent"}, "standard folder's name"),
        ({"name": "Work/2026", "newName": "a*b"}, "without control characters"),
    ):
        async with http.patch("/api/v1/mailboxes", headers=headers, json=bad) as r:
            assert r.status == 400 and why in (await r.json())["error"], bad
    async with http.delete("/api/v1/mailboxes", headers=headers, params={"name": "INBOX"}) as r:
        assert r.status == 400
    async with http.delete("/api/v1/mailboxes", headers=headers, params={"name": "Work/2026"}) as r:
        assert (r.status, await r.json()) == (200, {"ok": True})
    assert "Work/2026" not in await names()
