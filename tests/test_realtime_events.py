"""Browser events end to end: every kind, resume by lastEventId, read sync, typing, client actions."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bridge.browser_events import EmailRef, email_id
from bridge.stack.launcher import StackInfo
from tests.common import Account, login
from tests.socket_client import RecordingClient
from tests.test_e2e_mail import message, send_smtp

pytestmark = pytest.mark.e2e


async def client_for(stack: StackInfo, http: aiohttp.ClientSession, account: Account, **auth: Any) -> RecordingClient:
    client = RecordingClient()
    token = await login(http, account)
    await client.sio.connect(stack.web_url, auth={"token": token, **auth}, transports=["websocket"], wait_timeout=5)
    return client


async def deliver(stack: StackInfo, to: str, subject: str) -> None:
    await asyncio.to_thread(send_smtp, stack, message("carol@outside.test", to, subject))


def imap_session(stack: StackInfo, account: Account) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10)
    imap.login(account.email, account.password)
    imap.select("INBOX")
    return imap


async def test_resume_replays_missed_events_in_order_without_duplicates(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    first = await client_for(stack, http, account)
    await deliver(stack, account.email, "before")
    seen = await first.wait_for("new_email", lambda e: e["subject"] == "before")
    await first.close()

    missed = [f"missed {n}" for n in range(3)]
    watcher = await client_for(stack, http, account)  # tells us when the missed mails have arrived
    for subject in missed:
        await deliver(stack, account.email, subject)
    for subject in missed:
        await watcher.wait_for("new_email", lambda e, s=subject: e["subject"] == s)
    await watcher.close()

    resumed = await client_for(stack, http, account, lastEventId=seen["eventId"])
    await resumed.wait_for("new_email", lambda e: e["subject"] == missed[-1])
    await deliver(stack, account.email, "live")
    await resumed.wait_for("new_email", lambda e: e["subject"] == "live")
    await asyncio.sleep(0.3)
    await resumed.close()

    mails = [e for name, e in resumed.events if name == "new_email"]
    # Everything missed, then the live one; nothing from before the seam, nothing twice, in the
    # mailbox's order (Postfix may deliver the three in any order).
    assert sorted(e["subject"] for e in mails[:3]) == missed and mails[3]["subject"] == "live"
    assert [e["uid"] for e in mails] == sorted(e["uid"] for e in mails)
    ids = [e["eventId"] for _name, e in resumed.events]
    assert len(ids) == len(set(ids))
    assert not [name for name, _e in resumed.events if name == "resync"]


async def test_resume_from_beyond_the_log_asks_for_resync(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, redis_client: aioredis.Redis
) -> None:
    client = await client_for(stack, http, account)
    await deliver(stack, account.email, "soon trimmed")
    old = await client.wait_for("new_email", lambda e: e["subject"] == "soon trimmed")
    await client.close()
    await deliver(stack, account.email, "after trim point")
    await asyncio.sleep(1)
    await redis_client.xtrim(f"mail:browser:{account.email}", maxlen=0)  # the log forgets everything

    resumed = await client_for(stack, http, account, lastEventId=old["eventId"])
    notice = await resumed.wait_for("resync")
    assert notice["account"] == account.email
    garbage = await client_for(stack, http, account, lastEventId="yesterday")
    assert (await garbage.wait_for("resync"))["reason"] == "unknown lastEventId"
    await resumed.close()
    await garbage.close()


async def test_a_socket_that_saw_no_event_still_resumes_from_where_it_joined(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, redis_client: aioredis.Redis
) -> None:
    # A brand-new account has no log: the point is "0-0", and resuming from it replays the log whole.
    quiet = await client_for(stack, http, account)
    point = await quiet.wait_for("resume_point")
    assert point == {"account": account.email, "eventId": "0-0"}
    await quiet.close()
    watcher = await client_for(stack, http, account)
    await deliver(stack, account.email, "while away 1")
    await watcher.wait_for("new_email", lambda e: e["subject"] == "while away 1")
    # The index's unread_count comes after the relay's new_email (its own consumer group): let it
    # land, so the log's newest entry below is the last one for a while.
    await watcher.wait_for("unread_count", lambda e: e["mailbox"] == "INBOX" and e["total"] == 1)
    resumed = await client_for(stack, http, account, lastEventId={account.email: point["eventId"]})
    await resumed.wait_for("new_email", lambda e: e["subject"] == "while away 1")
    assert not [name for name, _e in resumed.events if name in ("resync", "resume_point")]
    await resumed.close()

    # With a log: the point is its newest entry, so only what comes after is replayed.
    second = await client_for(stack, http, account)
    later = await second.wait_for("resume_point")
    newest = await redis_client.xrevrange(f"mail:browser:{account.email}", count=1)
    assert later["eventId"] == newest[0][0].decode()
    await second.close()
    await deliver(stack, account.email, "while away 2")
    await watcher.wait_for("new_email", lambda e: e["subject"] == "while away 2")
    again = await client_for(stack, http, account, lastEventId={account.email: later["eventId"]})
    await again.wait_for("new_email", lambda e: e["subject"] == "while away 2")
    await asyncio.sleep(0.3)
    subjects = [e.get("subject") for name, e in again.events if name == "new_email"]
    assert subjects == ["while away 2"]
    await again.close()
    await watcher.close()

    # Trimmed since "0-0": no longer the whole story, so resync.
    await redis_client.xtrim(f"mail:browser:{account.email}", maxlen=0)
    trimmed = await client_for(stack, http, account, lastEventId={account.email: "0-0"})
    assert (await trimmed.wait_for("resync"))["reason"] == "gap older than the log"
    await trimmed.close()


async def test_read_in_an_imap_client_reaches_every_device(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    phone, laptop = await client_for(stack, http, account), await client_for(stack, http, account)
    await deliver(stack, account.email, "read me")
    mail = await phone.wait_for("new_email", lambda e: e["subject"] == "read me")
    imap = await asyncio.to_thread(imap_session, stack, account)
    await asyncio.to_thread(imap.uid, "STORE", str(mail["uid"]), "+FLAGS", "(\\Seen)")
    for device in (phone, laptop):
        read = await device.wait_for("email_read", lambda e: e["emailId"] == mail["id"])
        assert read["readAt"].endswith("Z") and read["eventId"]
    await asyncio.to_thread(imap.uid, "STORE", str(mail["uid"]), "-FLAGS", "(\\Seen)")
    unread = await laptop.wait_for("email_flags", lambda e: e["removed"] == ["\\Seen"])
    assert unread["unread"] is True
    await asyncio.to_thread(imap.logout)
    await phone.close()
    await laptop.close()


async def test_mark_read_from_a_socket_goes_through_imap_to_every_device(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    phone, laptop = await client_for(stack, http, account), await client_for(stack, http, account)
    await deliver(stack, account.email, "mark me")
    mail = await phone.wait_for("new_email", lambda e: e["subject"] == "mark me")
    ack = await phone.sio.call("mark_read", {"emailId": mail["id"]}, timeout=15)
    assert ack == {"ok": True}
    await laptop.wait_for("email_read", lambda e: e["emailId"] == mail["id"])
    ack = await phone.sio.call("mark_read", {"emailId": mail["id"], "read": False}, timeout=15)
    assert ack == {"ok": True}
    await laptop.wait_for("email_flags", lambda e: e["emailId"] == mail["id"] and e.get("unread") is True)
    await phone.close()
    await laptop.close()


async def test_flags_moves_deletes_and_mailboxes_become_browser_events(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    client = await client_for(stack, http, account)
    await deliver(stack, account.email, "organise me")
    mail = await client.wait_for("new_email", lambda e: e["subject"] == "organise me")
    imap = await asyncio.to_thread(imap_session, stack, account)
    await asyncio.to_thread(imap.uid, "STORE", str(mail["uid"]), "+FLAGS", "(\\Flagged work)")
    flagged = await client.wait_for("email_flags", lambda e: "\\Flagged" in e["added"])
    assert flagged["added"] == ["\\Flagged", "work"] and flagged["emailId"] == mail["id"]
    await asyncio.to_thread(imap.create, "Projects")
    created = await client.wait_for("mailbox_updated", lambda e: e["mailbox"] == "Projects")
    assert created["action"] == "created"
    await asyncio.to_thread(imap.uid, "MOVE", str(mail["uid"]), "Projects")
    arrived = await client.wait_for("new_email", lambda e: e["mailbox"] == "Projects")
    assert arrived["source"] == "appended" and arrived["subject"] == "organise me"
    gone = await client.wait_for("email_deleted", lambda e: e["emailId"] == mail["id"])
    assert gone["mailbox"] == "INBOX"
    await asyncio.to_thread(imap.rename, "Projects", "Archive")
    renamed = await client.wait_for("mailbox_updated", lambda e: e["action"] == "renamed")
    assert (renamed["mailbox"], renamed["oldMailbox"]) == ("Archive", "Projects")
    await asyncio.to_thread(imap.logout)
    await client.close()


async def test_typing_reaches_the_users_other_devices_only(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    me, my_other_device = await client_for(stack, http, account), await client_for(stack, http, account)
    stranger = await client_for(stack, http, other_account)
    some_email = email_id(EmailRef(account.email, "INBOX", 1, 1))
    assert await me.sio.call("typing", {"emailId": some_email}, timeout=10) == {"ok": True}
    typing = await my_other_device.wait_for("user_typing")
    assert typing == {"user": account.email, "emailId": some_email, "typing": True}
    await asyncio.sleep(0.3)
    assert not [n for n, _ in stranger.events if n == "user_typing"]
    assert not [n for n, _ in me.events if n == "user_typing"]
    # Typing into someone else's thread is refused like a thread that does not exist.
    theirs = email_id(EmailRef(other_account.email, "INBOX", 1, 1))
    assert await me.sio.call("typing", {"emailId": theirs}, timeout=10) == {"ok": False, "error": "no such email"}
    for client in (me, my_other_device, stranger):
        await client.close()


async def test_cross_user_actions_are_refused(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    me = await client_for(stack, http, account)
    assert await me.sio.call("join_email", {"address": account.email}, timeout=10) == {
        "ok": True,
        "address": account.email,
    }
    refused = await me.sio.call("join_email", {"address": other_account.email}, timeout=10)
    assert refused["ok"] is False
    theirs = email_id(EmailRef(other_account.email, "INBOX", 1, 1))
    assert await me.sio.call("mark_read", {"emailId": theirs}, timeout=10) == {"ok": False, "error": "no such email"}
    missing = email_id(EmailRef(account.email, "INBOX", 1, 999))
    assert await me.sio.call("mark_read", {"emailId": missing}, timeout=15) == {"ok": False, "error": "no such email"}
    for bad in [None, "x", {"emailId": 5}, {"emailId": "!!!"}, {"emailId": "a" * 5000}]:
        answer = await me.sio.call("mark_read", bad, timeout=10)
        assert answer["ok"] is False and answer["error"]
    await me.close()


async def test_sending_through_submission_tells_the_senders_devices(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    sender = await client_for(stack, http, account)
    subject = f"sent {uuid.uuid4().hex[:6]}"
    m = message(account.email, other_account.email, subject)

    def submit() -> None:
        with smtplib.SMTP(stack.submission["host"], stack.submission["port"], timeout=10) as smtp:
            smtp.login(account.email, account.password)
            smtp.send_message(m)

    await asyncio.to_thread(submit)
    sent = await sender.wait_for("email_sent", lambda e: e["subject"] == subject)
    assert sent["success"] is True and sent["messageId"] == m["Message-ID"] and sent["to"] == [other_account.email]
    await sender.close()


async def test_unread_counts_follow_deliveries_and_reads(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    client = await client_for(stack, http, account)
    await deliver(stack, account.email, "count me")
    mail = await client.wait_for("new_email", lambda e: e["subject"] == "count me")
    counted = await client.wait_for("unread_count", lambda e: e["mailbox"] == "INBOX" and e["total"] == 1)
    assert counted["unread"] == 1 and counted["account"] == account.email and counted["eventId"]
    assert await client.sio.call("mark_read", {"emailId": mail["id"]}, timeout=15) == {"ok": True}
    await client.wait_for("unread_count", lambda e: e["mailbox"] == "INBOX" and e["unread"] == 0)

    # \Seen cleared: the count comes back. A flag that is not \Seen moves no count: after the star,
    # every unread_count newer than this one still says 1 of 1 (the index itself sends none for it:
    # tests/test_store.py; the first login's backfill may send a count it took earlier, at any time,
    # with its older version).
    await client.sio.call("mark_read", {"emailId": mail["id"], "read": False}, timeout=15)
    back = await client.wait_for("unread_count", lambda e: e["mailbox"] == "INBOX" and e["unread"] == 1)
    seen_before = len(client.events)
    imap = imap_session(stack, account)
    imap.uid("STORE", str(mail["uid"]), "+FLAGS", "(\\Flagged)")
    imap.logout()
    await client.wait_for("email_flags", lambda e: "\\Flagged" in e["added"])
    await asyncio.sleep(0.5)
    later = [
        (e["unread"], e["total"])
        for name, e in client.events[seen_before:]
        if name == "unread_count" and int(e["countsVersion"]) >= int(back["countsVersion"])
    ]
    assert set(later) <= {(1, 1)}
    # Counts taken by different writers may come in any order; the one with the highest version is
    # the mailbox as it is now.
    counts = [e for name, e in client.events if name == "unread_count" and e["mailbox"] == "INBOX"]
    newest = max(counts, key=lambda e: int(e["countsVersion"]))
    assert (newest["unread"], newest["total"]) == (1, 1), counts
    await client.close()


async def test_bridge_killed_and_restarted_clients_miss_nothing(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, stack_launcher: Any
) -> None:
    from tests.mailtools import lmtp_deliver, sample_message  # noqa: PLC0415

    client = await client_for(stack, http, account)
    await deliver(stack, account.email, "before the crash")
    last = await client.wait_for("new_email", lambda e: e["subject"] == "before the crash")
    token = await login(http, account)
    await asyncio.to_thread(stack_launcher.stop_service, "bridge", __import__("signal").SIGKILL)
    try:
        for n in range(3):  # straight into Dovecot: the hook publishes, nobody relays yet
            await asyncio.to_thread(lmtp_deliver, stack, account.email, sample_message(f"while down {n}"))
    finally:
        await asyncio.to_thread(stack_launcher.start_service, "bridge")
    resumed = RecordingClient()
    await resumed.sio.connect(
        stack.web_url, auth={"token": token, "lastEventId": last["eventId"]}, transports=["websocket"], wait_timeout=5
    )
    for n in range(3):
        await resumed.wait_for("new_email", lambda e, n=n: e["subject"] == f"while down {n}", timeout=30)
    await asyncio.sleep(0.5)
    subjects = [e["subject"] for name, e in resumed.events if name == "new_email"]
    assert sorted(subjects) == [f"while down {n}" for n in range(3)]  # each once, nothing from before
    await resumed.close()
    await client.close()


async def test_send_email_over_the_socket(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, other_account: Account
) -> None:
    client = await client_for(stack, http, account)
    subject = f"socket send {uuid.uuid4().hex[:6]}"
    ack = await client.sio.call(
        "send_email", {"to": [other_account.email], "subject": subject, "body": "hi"}, timeout=30
    )
    assert ack["ok"] is True and ack["success"] is True and ack["messageId"].startswith("<")
    await client.wait_for("email_sent", lambda e: e["messageId"] == ack["messageId"])
    refused = await client.sio.call("send_email", {"to": ["x@example.test"], "subject": "a\nb"}, timeout=10)
    assert refused["ok"] is False and "line breaks" in refused["error"]
    assert (await client.sio.call("send_email", "nonsense", timeout=10))["ok"] is False
    await client.close()
