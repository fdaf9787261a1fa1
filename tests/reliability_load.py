"""What the fault scenarios run under: a steady mail load, and browsers that resume by lastEventId.

`MailLoad` sends numbered mails through the real Postfix (SMTP) to a few accounts at a steady rate
from a thread. `Browsers` keeps one Socket.IO client per account that records every `new_email`,
remembers the newest `eventId` it saw (or was given by `resume_point`), and, whenever the server
drops it, reconnects with that `lastEventId` until it is back. `settle` waits until every mail is in
its mailbox and on its browser, then fills in the scenario's row: mails sent / delivered, events
expected / received / duplicated (the same mail shown twice, whatever its eventId).
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiohttp
import socketio

from bridge.stack.launcher import StackInfo
from tests.common import Account, login
from tests.mailtools import imap_message_ids
from tests.reliability import Scenario


@dataclass(frozen=True)
class SentMail:
    account: str
    subject: str
    message_id: str
    sent_at: float = 0.0  # time.monotonic() when Postfix took it


class MailLoad:
    """Numbered mails at `rate` per second, round-robin over the accounts, until stopped."""

    def __init__(self, stack: StackInfo, accounts: list[Account], rate: float, tag: str | None = None) -> None:
        self.stack = stack
        self.accounts = accounts
        self.interval = 1.0 / rate
        self.tag = tag or uuid.uuid4().hex[:6]
        self.sent: list[SentMail] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mail-load-{self.tag}", daemon=True)

    def message(self, n: int) -> tuple[EmailMessage, SentMail]:
        account = self.accounts[n % len(self.accounts)].email
        subject = f"{self.tag} {n:05d}"
        m = EmailMessage()
        m["From"] = "load@outside.test"
        m["To"] = account
        m["Subject"] = subject
        m["Message-ID"] = make_msgid(idstring=f"{self.tag}.{n}", domain="outside.test")
        m.set_content(f"mail {n} of a steady load")
        return m, SentMail(account, subject, m["Message-ID"])

    def _run(self) -> None:
        n = 0
        smtp: smtplib.SMTP | None = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            message, sent = self.message(n)
            try:
                if smtp is None:
                    smtp = smtplib.SMTP(self.stack.smtp["host"], self.stack.smtp["port"], timeout=30)
                smtp.send_message(message)
            except (smtplib.SMTPException, OSError) as exc:
                # Postfix itself is never the fault here: note it and try the same mail again.
                self.failures.append(f"{type(exc).__name__}: {exc}")
                smtp = None
                time.sleep(0.2)
                continue
            self.sent.append(SentMail(sent.account, sent.subject, sent.message_id, time.monotonic()))
            n += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()

    def start(self) -> MailLoad:
        self._thread.start()
        return self

    def stop(self) -> list[SentMail]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.sent


@dataclass
class Browser:
    """One account's browser tab: whatever socket it has now, and everything it was shown."""

    account: Account
    token: str
    last_event_id: str | None = None
    shown: list[str] = field(default_factory=list)  # new_email subjects, in arrival order
    email_ids: dict[str, str] = field(default_factory=dict)  # subject -> the email's id
    event_ids: list[str] = field(default_factory=list)
    connects: int = 0
    resyncs: int = 0
    away: bool = False  # dropped, and not to reconnect until come_back()
    sio: socketio.AsyncClient | None = None


class Browsers:
    """A Socket.IO client per account that resumes by lastEventId whenever it is dropped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.browsers: list[Browser] = []
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, accounts: Iterable[Account]) -> Browsers:
        async with aiohttp.ClientSession(base_url=self.url) as http:
            for account in accounts:
                self.browsers.append(Browser(account, await login(http, account)))
        await asyncio.gather(*(self._connect(b) for b in self.browsers))
        return self

    def _handlers(self, browser: Browser, sio: socketio.AsyncClient) -> None:
        def seen(payload: Any) -> None:
            if isinstance(payload, dict) and isinstance(payload.get("eventId"), str):
                browser.last_event_id = payload["eventId"]
                browser.event_ids.append(payload["eventId"])

        @sio.on("*")
        async def any_event(name: str, payload: Any) -> None:
            if name == "new_email" and isinstance(payload, dict):
                browser.shown.append(str(payload.get("subject")))
                browser.email_ids[str(payload.get("subject"))] = str(payload.get("id"))
            if name == "resync":
                browser.resyncs += 1
            if name == "resume_point" and isinstance(payload, dict):
                browser.last_event_id = str(payload["eventId"])
            else:
                seen(payload)

        @sio.on("disconnect")
        async def dropped(*_reason: Any) -> None:
            if browser.sio is sio and not self.stopping:
                browser.sio = None
                self._spawn(self._reconnect(browser))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, browser: Browser) -> None:
        sio = socketio.AsyncClient(reconnection=False)
        self._handlers(browser, sio)
        auth: dict[str, Any] = {"token": browser.token}
        if browser.last_event_id is not None:
            auth["lastEventId"] = {browser.account.email: browser.last_event_id}
        browser.sio = sio
        try:
            await sio.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=5)
        except BaseException:
            browser.sio = None
            raise
        browser.connects += 1

    async def _reconnect(self, browser: Browser) -> None:
        while not self.stopping and browser.sio is None and not browser.away:
            try:
                await self._connect(browser)
            except (socketio.exceptions.ConnectionError, OSError, TimeoutError):
                await asyncio.sleep(0.2)

    async def drop(self, which: Callable[[Browser], bool] = lambda _b: True, *, stay_away: bool = False) -> None:
        """Close these browsers' sockets from the client side: they reconnect and resume at once,
        or, with `stay_away`, only on `come_back()`."""
        for browser in self.browsers:
            if which(browser) and browser.sio is not None:
                browser.away = stay_away
                await browser.sio.disconnect()

    async def come_back(self) -> None:
        """Reconnect the browsers that stayed away, each resuming from its lastEventId."""
        for browser in self.browsers:
            if browser.away:
                browser.away = False
                browser.sio = None
                self._spawn(self._reconnect(browser))

    def connected(self) -> int:
        return sum(1 for b in self.browsers if b.sio is not None and b.sio.connected)

    async def close(self) -> None:
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for browser in self.browsers:
            if browser.sio is not None:
                with contextlib.suppress(Exception):
                    await browser.sio.disconnect()


@dataclass
class Outcome:
    delivered: dict[str, list[str]]  # account -> Message-IDs in its INBOX
    missing_mail: list[SentMail]
    duplicated_mail: list[str]
    missing_events: list[SentMail]
    duplicated_events: list[str]
    received: int


async def wait_delivered(stack: StackInfo, sent: list[SentMail], browsers: Browsers, timeout: float = 120.0) -> None:
    """Wait until each account's mailbox holds at least as many mails as were sent to it."""
    wanted = Counter(m.account for m in sent)
    passwords = {b.account.email: b.account.password for b in browsers.browsers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = {a: len(await asyncio.to_thread(imap_message_ids, stack, a, passwords[a])) for a in wanted}
        if all(counts[a] >= n for a, n in wanted.items()):
            return
        await asyncio.sleep(0.25)


async def settle(
    stack: StackInfo,
    sent: list[SentMail],
    browsers: Browsers,
    scenario: Scenario,
    *,
    timeout: float = 60.0,
    excused: Callable[[SentMail], bool] = lambda _m: False,
) -> Outcome:
    """Wait for every mail in its mailbox and on its browser (or the timeout), then count.

    `excused` marks mails whose event may rightly be missing (an event Redis held when it died
    without persistence); they are still counted as mail, and reported apart by the caller."""
    by_account: dict[str, list[SentMail]] = {}
    for mail in sent:
        by_account.setdefault(mail.account, []).append(mail)
    passwords = {b.account.email: b.account.password for b in browsers.browsers}
    deadline = time.monotonic() + timeout
    delivered: dict[str, list[str]] = {}
    while True:
        delivered = {
            account: await asyncio.to_thread(imap_message_ids, stack, account, passwords[account])
            for account in by_account
        }
        all_mail = all(len(delivered[a]) >= len(mails) for a, mails in by_account.items())
        shown = {b.account.email: set(b.shown) for b in browsers.browsers}
        all_events = all(m.subject in shown[m.account] or excused(m) for m in sent)
        if (all_mail and all_events) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # room for a duplicate to show up right behind
    delivered = {
        account: await asyncio.to_thread(imap_message_ids, stack, account, passwords[account]) for account in by_account
    }
    present = Counter(mid for ids in delivered.values() for mid in ids)
    missing_mail = [m for m in sent if present[m.message_id] == 0]
    duplicated_mail = sorted(mid for mid, n in present.items() if n > 1)
    expected_subjects = {m.subject for m in sent}
    missing_events: list[SentMail] = []
    duplicated_events: list[str] = []
    received = 0
    for browser in browsers.browsers:
        counts = Counter(s for s in browser.shown if s in expected_subjects)
        duplicated_events += [s for s, n in counts.items() if n > 1]
        mine = [m for m in by_account.get(browser.account.email, []) if not excused(m)]
        received += sum(1 for m in mine if counts[m.subject] > 0)
        missing_events += [m for m in mine if counts[m.subject] == 0]
    expected_events = sum(1 for m in sent if not excused(m))
    scenario.mails_sent = len(sent)
    scenario.mails_delivered = len(sent) - len(missing_mail)
    scenario.events_expected = expected_events
    scenario.events_received = received
    scenario.events_duplicated = len(duplicated_events)
    return Outcome(delivered, missing_mail, duplicated_mail, missing_events, duplicated_events, received)


def assert_clean(outcome: Outcome) -> None:
    """Zero mails lost or doubled, zero events missing after resume, zero duplicates shown."""
    assert outcome.missing_mail == [], f"mails lost: {outcome.missing_mail[:5]}"
    assert outcome.duplicated_mail == [], f"mails delivered twice: {outcome.duplicated_mail[:5]}"
    assert outcome.missing_events == [], f"events missing after resume: {outcome.missing_events[:5]}"
    assert outcome.duplicated_events == [], f"mails shown twice: {outcome.duplicated_events[:5]}"
