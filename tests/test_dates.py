"""A mail's Date header is the sender's word: dates no mail can have (after year 9999 in UTC, before
1970, after the mail arrived) must not break a listing, drop a browser event or pin a mail to the
top of the inbox. Unit tests of the clamp and of the formatting, then each ingest path on the real
stack: Dovecot's events, the content filter's event, the backfill, and an event as any producer may
write it."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import smtplib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from bridge import codec
from bridge.browser_events import iso_time, to_browser
from bridge.errors import InvalidInput
from bridge.events import MessageNew, MtaAccepted
from bridge.imap_syntax import internal_date
from bridge.mail_headers import DATE_SKEW_S, believable_date, summarize
from bridge.mail_service import summary
from bridge.stack.launcher import StackInfo
from bridge.store_reads import decode_cursor, encode_cursor
from tests.common import Account
from tests.mailtools import StreamWatch, wait_for_messages
from tests.socket_client import RecordingClient
from tests.test_http_mail import authed

YEAR_10000 = "Fri, 31 Dec 9999 23:59:59 -1200"  # 10000-01-01T11:59:59Z
ODD_DATES = {
    "year-10000": YEAR_10000,
    "far-past": "Mon, 1 Jan 1900 00:00:00 +0000",
    "absurd-offset": "Fri, 1 Jan 2021 00:00:00 +9959",
    "absurd-offset-year-10000": "Fri, 31 Dec 9999 23:59:59 -9959",
}
NOW = 1_796_000_000.0  # 2026-11-30


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


# -- the clamp and the formatting


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        (None, None),
        (0, 0),
        (1_700_000_000, 1_700_000_000),
        (int(NOW), int(NOW)),
        (int(NOW) + DATE_SKEW_S, int(NOW) + DATE_SKEW_S),  # clock skew is believed
        (int(NOW) + DATE_SKEW_S + 1, None),
        (253402343999, None),  # year 10000
        (4294240831, None),  # what Dovecot makes of year 10000 (2106)
        (2085978496, None),  # what Dovecot makes of 1900 (2036)
        (-1, None),
        (-2208988800, None),  # 1900
        (10**30, None),
        (-(10**30), None),
    ],
)
def test_only_a_believable_date_is_kept(date: int | None, expected: int | None) -> None:
    assert believable_date(date, NOW) == expected


@pytest.mark.parametrize(
    ("seconds", "milliseconds", "expected"),
    [
        (0, False, "1970-01-01T00:00:00Z"),
        (1_796_000_000, False, "2026-11-30T00:53:20Z"),
        (1_796_000_000.25, True, "2026-11-30T00:53:20.250Z"),
        (None, True, "1970-01-01T00:00:00.000Z"),
        (253402343999, False, "9999-12-31T23:59:59Z"),  # the last second any datetime holds
        (253402300799.9999999, True, "9999-12-31T23:59:59.000Z"),
        (10**400, False, "9999-12-31T23:59:59Z"),  # larger than any float
        (-(10**400), False, "0001-01-01T00:00:00Z"),
        (-62135596801, False, "0001-01-01T00:00:00Z"),
        (math.inf, False, "1970-01-01T00:00:00Z"),
        (-math.inf, False, "1970-01-01T00:00:00Z"),
        (math.nan, False, "1970-01-01T00:00:00Z"),
        (1e300, True, "9999-12-31T23:59:59.000Z"),
        ("2026", False, "1970-01-01T00:00:00Z"),  # not a number at all (an index of another format)
        (True, False, "1970-01-01T00:00:00Z"),
    ],
)
def test_time_formatting_is_total(seconds: Any, milliseconds: bool, expected: str) -> None:
    assert iso_time(seconds, milliseconds=milliseconds) == expected


def _doc(date: Any) -> dict[str, Any]:
    return {"account": "a@example.test", "mailbox": "INBOX", "uidvalidity": 1, "uid": 7, "date": date, "arrived": date}


@pytest.mark.parametrize("date", [253402343999, -(10**20), 10**400, 1e300, math.nan, None, "x", 1_796_000_000.5])
def test_a_listing_item_formats_any_stored_date(date: Any) -> None:
    parse_iso(summary(_doc(date))["timestamp"])


@pytest.mark.parametrize("date", [1_796_000_000.5, math.nan, None, "x", True])
def test_a_cursor_after_any_stored_date_reads_back(date: Any) -> None:
    """The next page's cursor holds the last item's arrival: one the index should not hold (a float,
    a string) still makes a cursor the next request takes."""
    assert decode_cursor(encode_cursor(_doc(date)))[1] == 7


@pytest.mark.parametrize("date", [1 << 63, -(1 << 63) - 1, 10**400])
def test_a_cursor_beyond_what_the_store_holds_is_invalid_input(date: int) -> None:
    """Not a query the store refuses (answered 503 as if it were down): a 400."""
    cursor = base64.urlsafe_b64encode(json.dumps([date, 1]).encode()).decode()
    with pytest.raises(InvalidInput):
        decode_cursor(cursor)


def _new(date: int | None, ts_ms: int) -> MessageNew:
    return MessageNew(
        key="k", ts=ts_ms, account="a@example.test", mailbox="INBOX", uidvalidity=1, uid=7, message_id="<m@x>",
        date=date,
    )  # fmt: skip


@pytest.mark.parametrize("date", [253402343999, 4294240831, -2208988800, 10**30])
def test_new_email_shows_an_unbelievable_date_as_the_arrival(date: int) -> None:
    arrived_ms = int(NOW * 1000) + 250
    ((browser_event),) = to_browser(_new(date, arrived_ms))
    assert browser_event.payload["timestamp"] == iso_time(arrived_ms / 1000)


def test_new_email_keeps_a_believable_date_and_formats_any_arrival() -> None:
    ((kept),) = to_browser(_new(1_700_000_000, int(NOW * 1000)))
    assert kept.payload["timestamp"] == "2023-11-14T22:13:20.000Z"
    for ts_ms in (10**30, -(10**30)):  # a producer's clock gone mad: still an event
        ((event),) = to_browser(_new(None, ts_ms))
        parse_iso(event.payload["timestamp"])


def test_the_filters_summary_drops_an_unbelievable_date() -> None:
    head = b"Subject: x\r\nDate: %s\r\n\r\n"
    assert summarize(head % YEAR_10000.encode(), now=NOW).date is None
    assert summarize(head % b"Mon, 1 Jan 1900 00:00:00 +0000", now=NOW).date is None
    assert summarize(head % b"Sun, 29 Nov 2026 08:00:00 +0000", now=NOW).date == 1_795_939_200
    assert summarize(head % b"Mon, 30 Nov 2026 01:50:00 +0000", now=NOW).date == 1_796_003_400  # skew


# -- on the real stack


def raw_mail(to: str, subject: str, date: str) -> bytes:
    return (
        f"From: Odd Dates <odd@outside.test>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@outside.test>\r\n\r\nbody of {subject}\r\n"
    ).encode()


def send_raw(stack: StackInfo, to: str, mails: dict[str, str]) -> None:
    with smtplib.SMTP(stack.smtp["host"], stack.smtp["port"], timeout=30) as smtp:
        for subject, date in mails.items():
            smtp.sendmail("odd@outside.test", [to], raw_mail(to, subject, date))


async def listing_page(
    http: aiohttp.ClientSession, headers: dict[str, str], limit: int, cursor: str | None = None
) -> dict[str, Any]:
    params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
    async with http.get("/api/v1/email/inbox", headers=headers, params=params) as r:
        assert r.status == 200, await r.text()  # never a 500 because of one mail
        page: dict[str, Any] = await r.json()
        return page


async def listed_when_all_are(
    http: aiohttp.ClientSession, headers: dict[str, str], subjects: set[str]
) -> list[dict[str, Any]]:
    """The whole inbox, page by page (2 a page), once it lists every one of `subjects`."""
    for _ in range(150):
        emails: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await listing_page(http, headers, 2, cursor)
            emails += page["emails"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        if subjects <= {e["subject"] for e in emails}:
            return emails
        await asyncio.sleep(0.1)
    raise AssertionError(f"not listed: {subjects - {e['subject'] for e in emails}}")


def assert_in_order_once(emails: list[dict[str, Any]]) -> None:
    """Each listed once, latest arrival first (ties by UID)."""
    assert len({e["id"] for e in emails}) == len(emails)
    keys = [(parse_iso(e["arrived"]), e["uid"]) for e in emails]
    assert keys == sorted(keys, reverse=True)


def subject_is(subject: str) -> Callable[[Any], bool]:
    return lambda event: bool(event["subject"] == subject)


@pytest.mark.e2e
async def test_odd_dates_delivered_reach_the_socket_and_the_listing(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account
) -> None:
    """Dovecot's events (and the filter's) for mail with dates no mail can have: every one is a
    `new_email` and listed, at its arrival; a mail that arrives later is listed above them."""
    sync_redis = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
    mta = StreamWatch(sync_redis, account.email, stream="mail:postfix")
    headers = await authed(http, account)
    client = RecordingClient()
    await client.connect(stack.web_url, headers["Authorization"][7:])
    sent_at = time.time()
    await asyncio.to_thread(send_raw, stack, account.email, ODD_DATES)
    arrived = {}
    for subject in ODD_DATES:
        event = await client.wait_for("new_email", subject_is(subject), timeout=30)
        arrived[subject] = parse_iso(event["timestamp"]).timestamp()
    done_at = time.time()
    for subject in ("year-10000", "far-past", "absurd-offset-year-10000"):
        assert sent_at - 1 <= arrived[subject] <= done_at + 1, (subject, arrived[subject])
    assert arrived["absurd-offset"] <= done_at + 1  # Dovecot reads +9959 as 99 h 59 min: believable

    # The filter's event carries no Date it could not have had (for consumers of mail:postfix).
    accepted = {e.subject: e for e in mta.wait_for(len(ODD_DATES)) if isinstance(e, MtaAccepted)}
    assert set(accepted) == set(ODD_DATES)
    for subject in ODD_DATES:
        date = accepted[subject].date
        assert date is None or 0 <= date <= done_at + DATE_SKEW_S, (subject, date)

    await asyncio.sleep(1.1)  # the next mail arrives in a later second than the odd ones
    newest = {"newest": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")}
    await asyncio.to_thread(send_raw, stack, account.email, newest)
    await client.wait_for("new_email", lambda e: e["subject"] == "newest", timeout=30)
    await client.close()
    emails = await listed_when_all_are(http, headers, {*ODD_DATES, "newest"})
    assert emails[0]["subject"] == "newest"  # page 1 is not the odd mails' for ever
    assert_in_order_once(emails)
    for e in emails:
        if e["subject"] in arrived:
            assert parse_iso(e["timestamp"]).timestamp() == int(arrived[e["subject"]]), e


@pytest.mark.e2e
async def test_odd_dates_backfilled_are_listed(stack: StackInfo, http: aiohttp.ClientSession, account: Account) -> None:
    """Mail the index never heard of is backfilled at the first login: a Date of year 10000 (which
    Python reads as such) must not make the inbox answer 500, nor sort above every later mail."""
    from pymongo import AsyncMongoClient  # noqa: PLC0415

    sent_at = time.time()
    await asyncio.to_thread(send_raw, stack, account.email, {**ODD_DATES, "ordinary": "Mon, 2 Nov 2026 10:00:00 +0000"})
    await asyncio.to_thread(wait_for_messages, stack, account.email, account.password, len(ODD_DATES) + 1)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_url)
    messages = mongo["mailbridge"]["messages"]
    try:
        for _ in range(150):  # let the index consumer finish, then forget what it wrote
            if await messages.count_documents({"account": account.email}) == len(ODD_DATES) + 1:
                break
            await asyncio.sleep(0.1)
        await messages.delete_many({"account": account.email})
    finally:
        await mongo.close()
    headers = await authed(http, account)  # the first login starts the backfill
    emails = await listed_when_all_are(http, headers, {*ODD_DATES, "ordinary"})
    assert_in_order_once(emails)
    by_subject = {e["subject"]: parse_iso(e["timestamp"]).timestamp() for e in emails}
    assert by_subject["ordinary"] == datetime(2026, 11, 2, 10, tzinfo=UTC).timestamp()
    for subject in ("year-10000", "far-past", "absurd-offset", "absurd-offset-year-10000"):
        # Not believed (Python reads no date at all in an offset of 99 hours): the arrival, which
        # the backfill reads as IMAP's INTERNALDATE (whole seconds).
        assert int(sent_at) <= by_subject[subject] <= time.time() + 1, (subject, by_subject[subject])

    # A mail that arrives after them is listed first.
    await asyncio.sleep(1.1)
    await asyncio.to_thread(
        send_raw, stack, account.email, {"later": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")}
    )
    emails = await listed_when_all_are(http, headers, {*ODD_DATES, "ordinary", "later"})
    assert emails[0]["subject"] == "later"
    assert_in_order_once(emails)


@pytest.mark.e2e
@pytest.mark.parametrize("backfilled", [False, True], ids=["indexed-live", "backfilled"])
async def test_the_mail_that_arrived_last_is_listed_first_whatever_its_date(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, backfilled: bool
) -> None:
    """Listings are by arrival (IMAP's INTERNALDATE), not by the Date header: a mail dated three
    days ago that arrives after one dated now is listed above it, live and after a backfill; each
    item says when it arrived as well as its Date."""
    from pymongo import AsyncMongoClient  # noqa: PLC0415

    now = datetime.now(UTC)
    await asyncio.to_thread(send_raw, stack, account.email, {"dated-now": format_datetime(now)})
    await asyncio.to_thread(wait_for_messages, stack, account.email, account.password, 1)
    await asyncio.sleep(1.1)  # a later second: INTERNALDATE has whole seconds
    old = now - timedelta(days=3)
    await asyncio.to_thread(send_raw, stack, account.email, {"dated-3-days-ago": format_datetime(old)})
    await asyncio.to_thread(wait_for_messages, stack, account.email, account.password, 2)
    if backfilled:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_url)
        messages = mongo["mailbridge"]["messages"]
        try:
            for _ in range(150):  # let the index consumer finish, then forget what it wrote
                if await messages.count_documents({"account": account.email}) == 2:
                    break
                await asyncio.sleep(0.1)
            await messages.delete_many({"account": account.email})
        finally:
            await mongo.close()
    headers = await authed(http, account)  # a first login: the backfill, when the index forgot
    emails = await listed_when_all_are(http, headers, {"dated-now", "dated-3-days-ago"})
    assert [e["subject"] for e in emails] == ["dated-3-days-ago", "dated-now"]
    assert_in_order_once(emails)
    late = emails[0]
    assert parse_iso(late["timestamp"]).timestamp() == int(old.timestamp())  # the Date is still shown
    assert parse_iso(late["arrived"]) > parse_iso(emails[1]["arrived"])


@pytest.mark.e2e
async def test_an_event_with_a_date_past_year_9999_is_relayed_and_listed(
    stack: StackInfo, http: aiohttp.ClientSession, account: Account, redis_client: aioredis.Redis
) -> None:
    """The stream's `date` is any integer (docs/events.md): one past year 9999, as a producer may
    write it, is still a `new_email` and a listed mail, at the event's time."""
    headers = await authed(http, account)
    client = RecordingClient()
    await client.connect(stack.web_url, headers["Authorization"][7:])
    ts_ms = int(time.time() * 1000)
    event = MessageNew(
        key=f"test:{uuid.uuid4().hex}", ts=ts_ms, account=account.email, mailbox="INBOX", uidvalidity=1, uid=1,
        subject="from a producer", message_id="<producer@outside.test>", date=253402343999, tz=-720,
    )  # fmt: skip
    await redis_client.xadd("mail:dovecot", {"e": codec.encode(event)})
    relayed = await client.wait_for("new_email", lambda e: e["subject"] == "from a producer", timeout=30)
    await client.close()
    assert relayed["timestamp"] == iso_time(ts_ms / 1000)
    (listed,) = await listed_when_all_are(http, headers, {"from a producer"})
    assert listed["timestamp"] == iso_time(ts_ms // 1000, milliseconds=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"17-Jul-1996 02:44:25 -0700", 837596665),
        (b" 7-Jul-1996 02:44:25 +0000", 836707465),  # RFC 3501 9: date-day-fixed, space-padded
        (b"31-Feb-1996 02:44:25 -0700", None),
        (b"yesterday", None),
        (b"", None),
    ],
)
def test_internaldate_reads_as_unix_seconds(text: bytes, expected: int | None) -> None:
    assert internal_date(text) == expected
