"""Staged attachment uploads on the real stack: upload once, attach by id to drafts and sends."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bridge.compose import MAX_ATTACHMENT_BYTES, Attachment
from bridge.errors import RateLimited
from bridge.stack.launcher import StackInfo
from bridge.uploads import Uploads
from tests.common import Account
from tests.mailtools import imap_messages, wait_for_messages
from tests.socket_client import RecordingClient
from tests.test_http_mail import authed, get_json

pytestmark = pytest.mark.e2e

PAYLOAD = b"%PDF-1.4\x00\xff binary \r\n bytes" * 100


async def upload(
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    data: Any,
    filename: str = "report.pdf",
    content_type: str | None = "application/pdf",
    **params: str,
) -> tuple[int, Any]:
    sent_headers = {**headers, **({"Content-Type": content_type} if content_type is not None else {})}
    async with http.post(
        "/api/v1/uploads", headers=sent_headers, params={"filename": filename, **params}, data=data
    ) as r:
        return r.status, await r.json()


def received(stack: StackInfo, account: Account, mailbox: str = "INBOX") -> list[EmailMessage]:
    return imap_messages(stack, account.email, account.password, mailbox)


def attachments_of(message: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    found = []
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append((part.get_filename(), part.get_content_type(), payload))
    return found


async def test_upload_then_send_by_id(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    headers = await authed(http, account)
    status, staged = await upload(http, headers, PAYLOAD, filename="Bericht März.pdf")
    assert status == 201, staged
    assert set(staged) == {"id", "filename", "contentType", "size"}
    assert (staged["filename"], staged["contentType"], staged["size"]) == (
        "Bericht März.pdf",
        "application/pdf",
        len(PAYLOAD),
    )
    payload = {
        "to": [other_account.email],
        "subject": "with an upload",
        "body": "see attached",
        "attachments": [
            {"uploadId": staged["id"]},
            {"filename": "inline.txt", "contentType": "text/plain", "content": base64.b64encode(b"inline").decode()},
        ],
    }
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 200, await r.text()
        sent = await r.json()
    assert await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1) == [
        sent["messageId"]
    ]
    (mail,) = await asyncio.to_thread(received, stack, other_account)
    assert attachments_of(mail) == [
        ("Bericht März.pdf", "application/pdf", PAYLOAD),
        ("inline.txt", "text/plain", b"inline"),
    ]
    (copy,) = await asyncio.to_thread(received, stack, account, "Sent")
    assert attachments_of(copy)[0][2] == PAYLOAD
    # The mail is out: its upload is spent, so a repeated send is refused rather than doubled.
    async with http.post("/api/v1/email/send", headers=headers, json=payload) as r:
        assert r.status == 400
        assert (await r.json())["error"] == f"attachment upload {staged['id']} not found or expired"


async def test_drafts_and_socket_sends_take_upload_ids(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    headers = await authed(http, account)
    status, staged = await upload(http, headers, b"a,b\n1,2\n", filename="data.csv", content_type="text/csv")
    assert status == 201, staged
    attachments = [{"uploadId": staged["id"]}]
    for subject in ("draft 1", "draft 2"):  # autosaves: the same upload, as often as needed
        async with http.post(
            "/api/v1/drafts", headers=headers, json={"subject": subject, "attachments": attachments}
        ) as r:
            assert r.status == 200, await r.text()
            saved = await r.json()
    body = await get_json(http, f"/api/v1/email/{saved['emailId']}", headers)
    assert [(a["filename"], a["content_type"], a["size"]) for a in body["attachments"]] == [("data.csv", "text/csv", 8)]

    client = RecordingClient()
    await client.connect(stack.web_url, headers["Authorization"][7:])
    ack = await client.sio.call(
        "send_email",
        {"to": [other_account.email], "subject": "over the socket", "attachments": attachments},
        timeout=30,
    )
    await client.close()
    assert ack["ok"] is True, ack
    await asyncio.to_thread(wait_for_messages, stack, other_account.email, other_account.password, 1)
    (mail,) = await asyncio.to_thread(received, stack, other_account)
    assert attachments_of(mail) == [("data.csv", "text/csv", b"a,b\n1,2\n")]


async def test_other_accounts_unknown_and_malformed_ids_are_refused(
    http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    mine, theirs = await authed(http, account), await authed(http, other_account)
    status, their_upload = await upload(http, theirs, b"secret")
    assert status == 201
    unknown = "A" * 24
    for upload_id, error in [
        (their_upload["id"], f"attachment upload {their_upload['id']} not found or expired"),
        (unknown, f"attachment upload {unknown} not found or expired"),
        ("../../x", "attachment uploadId is invalid"),
        (7, "attachment uploadId is invalid"),
    ]:
        for url in ("/api/v1/email/send", "/api/v1/drafts"):
            body = {"to": [other_account.email], "subject": "x", "attachments": [{"uploadId": upload_id}]}
            async with http.post(url, headers=mine, json=body) as r:
                assert r.status == 400, (url, upload_id)
                assert (await r.json())["error"] == error
    status, refused = await upload(http, mine, b"x", account=other_account.email)
    assert status == 403, refused


@pytest.mark.parametrize(
    ("filename", "content_type", "message"),
    [
        ("", "text/plain", "filename"),
        ("../etc/passwd", "text/plain", "filename"),
        ("a\\b", "text/plain", "filename"),
        ("x" * 256, "text/plain", "filename"),
        ("ok.txt", "not a type", "contentType"),
        ("ok.txt", "text/plain/x", "contentType"),
    ],
)
async def test_bad_names_and_types_are_refused(
    http: aiohttp.ClientSession, account: Account, filename: str, content_type: str, message: str
) -> None:
    headers = await authed(http, account)
    status, body = await upload(http, headers, b"x", filename=filename, content_type=content_type)
    assert status == 400, body
    assert message in body["error"]


async def test_missing_content_type_is_octet_stream_and_parameters_are_dropped(
    http: aiohttp.ClientSession, account: Account
) -> None:
    headers = await authed(http, account)
    status, staged = await upload(http, headers, b"hello", filename="a.txt", content_type="Text/Plain; charset=utf-8")
    assert (status, staged["contentType"]) == (201, "text/plain")
    async with http.post(
        "/api/v1/uploads", headers={**headers, "Content-Type": ""}, params={"filename": "a.bin"}, data=b""
    ) as r:
        assert r.status == 201
        assert (await r.json())["contentType"] == "application/octet-stream"
        assert (await r.json())["size"] == 0


async def test_an_upload_of_the_largest_size_is_taken_and_one_byte_more_refused(
    http: aiohttp.ClientSession, account: Account
) -> None:
    headers = await authed(http, account)
    status, staged = await upload(http, headers, b"\x01" * MAX_ATTACHMENT_BYTES)
    assert (status, staged.get("size")) == (201, MAX_ATTACHMENT_BYTES), staged
    status, body = await upload(http, headers, b"\x01" * (MAX_ATTACHMENT_BYTES + 1))
    assert status == 413
    assert body == {"error": f"upload larger than {MAX_ATTACHMENT_BYTES} bytes"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while it is read
        for _ in range(MAX_ATTACHMENT_BYTES // (1 << 20) + 1):
            yield b"\x02" * (1 << 20)

    status, body = await upload(http, headers, chunks())
    assert status == 413, body


async def test_pending_uploads_of_an_account_are_bounded(redis_client: aioredis.Redis) -> None:
    """Uploads a mail has not yet carried away count against the account's budget in Redis."""
    uploads = Uploads(redis_client, f"test-{uuid.uuid4().hex[:8]}", max_pending_bytes=10)
    first = await uploads.stage("a@example.test", Attachment("a.txt", "text/plain", b"123456"))
    with pytest.raises(RateLimited) as refused:
        await uploads.stage("A@example.test", Attachment("b.txt", "text/plain", b"123456"))
    assert 1 <= refused.value.retry_after_s <= 24 * 3600
    other = await uploads.stage("b@example.test", Attachment("b.txt", "text/plain", b"123456"))  # its own budget
    assert await uploads.resolve("b@example.test", [first.id, other.id]) == {
        other.id: Attachment("b.txt", "text/plain", b"123456")
    }
    await uploads.discard("a@example.test", [first.id])
    assert await uploads.resolve("a@example.test", [first.id]) == {}
    await uploads.stage("a@example.test", Attachment("b.txt", "text/plain", b"123456"))
