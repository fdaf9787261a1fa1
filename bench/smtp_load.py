"""Open-loop SMTP load: mails start on a fixed schedule, whatever the server's replies do.

A closed loop (send, wait for 250, send the next) slows down with the server and hides queueing
(coordinated omission). Here mail i is due at start + i/rate; a pool of worker threads, each
holding a persistent SMTP connection to Postfix, takes them in order. Latency is then measured
from the due time, so time spent waiting for a free connection counts against the system.
"""

from __future__ import annotations

import contextlib
import queue
import smtplib
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid


@dataclass
class Sent:
    index: int
    subject: str
    recipient: str
    message_id: str
    due: float  # wall clock, seconds
    started: float = 0.0
    accepted: float = 0.0  # 250 after DATA (our filter answers only after re-injection)
    error: str = ""


@dataclass
class Plan:
    rate: float  # mails per second
    seconds: float
    recipients: list[str]
    tag: str
    mails: list[Sent] = field(default_factory=list)


def _message(sent: Sent) -> bytes:
    m = EmailMessage()
    m["From"] = "Load Sender <load@outside.test>"
    m["To"] = sent.recipient
    m["Subject"] = sent.subject
    m["Message-ID"] = sent.message_id
    m.set_content(f"Benchmark mail {sent.index}.\n" + "Lorem ipsum dolor sit amet. " * 20)
    return m.as_bytes()


def run_open_loop(host: str, port: int, plan: Plan, *, connections: int = 16) -> list[Sent]:
    """Send rate*seconds mails on schedule; returns them with their times (errors recorded, not raised)."""
    total = int(plan.rate * plan.seconds)
    start = time.time() + 0.2
    mails = [
        Sent(
            index=i,
            subject=f"{plan.tag} {i:06d}",
            recipient=plan.recipients[i % len(plan.recipients)],
            message_id=make_msgid(idstring=f"{plan.tag}-{i}", domain="outside.test"),
            due=start + i / plan.rate,
        )
        for i in range(total)
    ]
    jobs: queue.Queue[Sent | None] = queue.Queue()

    def worker() -> None:
        smtp: smtplib.SMTP | None = None
        while True:
            sent = jobs.get()
            if sent is None:
                break
            sent.started = time.time()
            try:
                if smtp is None:
                    smtp = smtplib.SMTP(host, port, timeout=30)
                smtp.sendmail("load@outside.test", [sent.recipient], _message(sent))
                sent.accepted = time.time()
            except (smtplib.SMTPException, OSError) as exc:
                sent.error = f"{type(exc).__name__}: {exc}"
                if smtp is not None:
                    with contextlib.suppress(OSError):
                        smtp.close()
                smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    threads = [threading.Thread(target=worker, name=f"smtp-{n}", daemon=True) for n in range(connections)]
    for thread in threads:
        thread.start()
    for sent in mails:  # the schedule: each mail is handed over when due, never earlier
        delay = sent.due - time.time()
        if delay > 0:
            time.sleep(delay)
        jobs.put(sent)
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join(timeout=120)
    plan.mails = mails
    return mails
