"""Reliability scenario 10, mail content: structurally hostile mail never breaks the parsers, is
always delivered with one event, and no script survives the sanitiser.

Three rows: the pure parsing core under hypothesis (the filter's summary, what the API serves, the
HTML sanitiser), the malformed corpus and a generated sample through the real Postfix, filter and
Dovecot to a Socket.IO client and the API, and the XSS corpus through the sanitiser and as a mail's
HTML part. Hypothesis runs with a fixed seed and no example database, so a CI run is reproducible;
MAIL_CONTENT_SEED picks another seed for exploring.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import quopri
import smtplib
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from bridge.html_sanitizer import sanitize_html
from bridge.message_parse import parse_message
from bridge.stack.launcher import StackInfo
from tests.common import Account
from tests.mailtools import wait_for_messages
from tests.mime_cases import (
    check_allowlisted,
    check_filter_summary,
    check_parsed,
    check_sanitizer,
    clean_str,
    hostile_message,
    html_parts,
    malformed_corpus,
    received_headers,
)
from tests.reliability import Rig, Scenario
from tests.socket_client import RecordingClient
from tests.test_html_sanitizer import FORBIDDEN, XSS_CORPUS

SEED = int(os.environ.get("MAIL_CONTENT_SEED", "20261129"))
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def _examples(full: bool, fast: int, many: int) -> int:
    return many if full else fast


# --- 1. the pure parsing core under hypothesis ----------------------------------------------------


@pytest.mark.reliability(10, "mail content: fuzzed MIME through the parsers")
@pytest.mark.timeout(900)
def test_fuzzed_mail_never_breaks_the_parsers(scenario: Scenario, reliability_full: bool) -> None:
    examples = _examples(reliability_full, 200, 3000)
    scenario.load = f"{examples:,} generated messages (hypothesis, seed {SEED})"
    scenario.checked = (
        "Each generated hostile message (broken MIME trees, boundaries, charsets, transfer encodings,"
        " RFC 2047/2231, NUL and 8-bit headers, overlong lines, odd line ends, thousands of headers)"
        " goes through the filter's summary (build_event, then the event codec), message_parse and,"
        " for its HTML parts, the sanitiser: no undocumented exception, no hang, well-typed JSON-safe"
        " output, only allow-listed markup."
    )
    print(f"hypothesis seed {SEED} (MAIL_CONTENT_SEED), {examples} examples")
    counts = {"messages": 0, "html_parts": 0, "attachments": 0, "events": 0}

    @seed(SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=_SUPPRESSED,
        print_blob=True,
    )
    @given(hostile_message())
    def fuzz(raw: bytes) -> None:
        counts["messages"] += 1
        if check_filter_summary(raw) is not None:
            counts["events"] += 1
        parsed = check_parsed(raw)
        if parsed is not None:
            counts["attachments"] += len(parsed.attachments)
        for html in html_parts(raw):
            counts["html_parts"] += 1
            check_sanitizer(html)

    try:
        fuzz()
    finally:
        scenario.cases = counts["messages"] + counts["html_parts"]
        scenario.note(
            f"Ran {counts['messages']:,} messages ({counts['events']:,} events built,"
            f" {counts['attachments']:,} attachments listed) and {counts['html_parts']:,} HTML parts."
        )
    # Hypothesis stops early only when it runs out of distinct inputs, which this space never does.
    assert counts["messages"] >= examples * 0.9, counts


# --- 2. through the real stack ----------------------------------------------------------------------


def _generated_sample(count: int) -> list[bytes]:
    """`count` messages from the same strategy (another seed), drawn the way the fuzz test draws."""
    drawn: list[bytes] = []

    @seed(SEED + 1)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=_SUPPRESSED,
    )
    @given(hostile_message())
    def collect(raw: bytes) -> None:
        drawn.append(raw)

    collect()
    return drawn


def _send_all(stack: StackInfo, recipient: str, mails: list[tuple[str, bytes]]) -> tuple[list[str], list[str]]:
    """Send each mail as it is (no line-end or header fix-up); the envelope sender names the case."""
    accepted: list[str] = []
    refused: list[str] = []
    with smtplib.SMTP(stack.smtp["host"], stack.smtp["port"], timeout=120) as smtp:
        for name, raw in mails:
            try:
                smtp.sendmail(f"{name}@outside.test", [recipient], raw)
            except smtplib.SMTPResponseException as exc:
                reply = (
                    exc.smtp_error.decode("ascii", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
                )
                refused.append(f"{name}: {exc.smtp_code} {reply}")
                smtp.rset()
            else:
                accepted.append(name)
    return accepted, refused


def _check_served(body: dict[str, Any]) -> None:
    """The API's JSON for one message: the fields the browser reads, typed, its HTML allow-listed."""
    for name in ("subject", "from", "messageId", "inReplyTo", "text"):
        clean_str(body[name], name)
    for name in ("to", "cc", "references"):
        assert isinstance(body[name], list) and all(isinstance(v, str) for v in body[name]), name
    assert body["date"] is None or isinstance(body["date"], str)
    assert isinstance(body["blockedRemoteImages"], int) and body["blockedRemoteImages"] >= 0
    if body["html"] is not None:
        check_allowlisted(body["html"])
    for attachment in body["attachments"]:
        assert isinstance(attachment["size"], int) and attachment["size"] >= 0, attachment
        clean_str(attachment["filename"], "filename", controls=False)


@pytest.mark.e2e
@pytest.mark.reliability(10, "mail content: malformed MIME through the stack")
@pytest.mark.timeout(600)
async def test_malformed_mail_is_delivered_with_one_event(rig: Rig) -> None:
    stack, http, scenario, account = rig.stack, rig.http, rig.scenario, rig.account
    corpus = malformed_corpus()
    sample = await asyncio.to_thread(_generated_sample, _examples(rig.full, 50, 300))
    mails = list(corpus.items()) + [(f"generated-{i}", raw) for i, raw in enumerate(sample)]
    scenario.load = (
        f"{len(corpus)} hand-written malformed mails and {len(sample)} generated ones"
        f" ({sum(len(raw) for _name, raw in mails) / 1e6:.1f} MB) over SMTP"
    )
    scenario.checked = (
        "Every malformed mail passes the real Postfix, content filter and Dovecot, is in the inbox"
        " over IMAP, gives its connected Socket.IO client exactly one new_email, and the API serves it"
        " as well-typed JSON with allow-listed HTML."
    )
    client = RecordingClient()
    await client.connect(stack.web_url, await rig.login())
    try:
        accepted, refused = await asyncio.to_thread(_send_all, stack, account.email, mails)
        scenario.mails_sent = len(accepted)
        if refused:
            scenario.note(f"Refused by Postfix at SMTP time (not accepted, so not lost): {', '.join(refused)}.")
        timeout = 240 if rig.full else 120
        delivered = await asyncio.to_thread(
            wait_for_messages, stack, account.email, account.password, len(accepted), timeout
        )
        scenario.mails_delivered = len(delivered)

        def new_emails() -> list[dict[str, Any]]:
            return [e for name, e in client.events if name == "new_email" and e.get("account") == account.email]

        with contextlib.suppress(TimeoutError):  # counted below: a missing event fails there
            await client.wait_for("new_email", lambda _e: len(new_emails()) >= len(accepted), timeout=60)
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        events = new_emails()
        uids = [e["uid"] for e in events]
        scenario.events_expected = len(accepted)
        scenario.events_received = len(set(uids))
        scenario.events_duplicated = len(uids) - len(set(uids))
    finally:
        await client.close()

    # Postfix's own loop protection (RFC 5321 6.3) refuses a mail with 50 Received lines at SMTP
    # time: the sender is told at once, nothing is lost. Any other refusal fails here.
    assert all("too many hops" in r for r in refused), refused
    assert len(delivered) == len(accepted), (len(delivered), len(accepted))
    assert scenario.events_received == len(accepted) and scenario.events_duplicated == 0, (
        scenario.events_received,
        scenario.events_duplicated,
    )

    # What the browser is served for each of them, through IMAP and message_parse.
    token = await rig.login()
    served = 0
    for event in events:
        for _attempt in range(30):
            async with http.get(f"/api/v1/email/{event['id']}", headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status == 429:  # the API's rate limit: wait as it says, then ask again
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                assert r.status == 200, (r.status, await r.text())
                _check_served(await r.json())
                served += 1
                break
    assert served == len(accepted)
    scenario.cases = len(mails)


@pytest.mark.e2e
async def test_mail_just_under_the_hop_limit_is_delivered_or_refused(stack: StackInfo, account: Account) -> None:
    """A mail is delivered, or refused at SMTP time: never accepted and then stuck in the queue. One with
    48 Received lines passes the front door (49 of 50 hops with its own); the re-injection adds one
    more, which its own cleanup (postfix-conf/master.cf.snippet, hopcount_limit 51) allows. Without
    that, the filter answered 451 and Postfix deferred the mail for days."""
    accepted, refused = await asyncio.to_thread(
        _send_all, stack, account.email, [("received-headers-48", received_headers(48))]
    )
    if refused:
        return
    assert accepted
    # Delivery takes a second or two; a mail deferred by the filter waits 30 s or more for a retry.
    delivered = await asyncio.to_thread(wait_for_messages, stack, account.email, account.password, 1, 8)
    assert len(delivered) == 1


# --- 3. the XSS corpus ------------------------------------------------------------------------------

# Families the sanitiser's own corpus (tests/test_html_sanitizer.py XSS_CORPUS) is checked against, as
# HTML parts of a mail in each transfer encoding and a charset that hides markup (UTF-7).
_ENCODINGS = ("8bit", "base64", "quoted-printable", "utf-7")


def _html_mail(html: str, encoding: str) -> bytes:
    head = b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="A"\r\n\r\n--A\r\n'
    head += b"Content-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n--A\r\n"
    if encoding == "base64":
        part = b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        part += base64.encodebytes(html.encode("utf-8", "surrogatepass"))
    elif encoding == "quoted-printable":
        part = b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        part += quopri.encodestring(html.encode("utf-8", "surrogatepass"))
    elif encoding == "utf-7":
        # RFC 2152: "<" is "+ADw-", so no markup is visible in the bytes; the decoded text has it.
        part = b"Content-Type: text/html; charset=utf-7\r\n\r\n" + html.encode("utf-7", "surrogatepass")
    else:
        part = b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        part += html.encode("utf-8", "surrogatepass")
    return head + part + b"\r\n--A--\r\n"


def _no_vector(html: str) -> None:
    lowered = html.lower()
    for word in FORBIDDEN:
        assert word not in lowered, (word, html)


@pytest.mark.reliability(10, "mail content: XSS corpus")
def test_xss_corpus_loses_every_vector(scenario: Scenario) -> None:
    scenario.load = f"{len(XSS_CORPUS)} vectors, each alone and as a mail's HTML part in {len(_ENCODINGS)} encodings"
    scenario.checked = (
        "Each vector of the sanitiser's corpus (script, handlers, javascript:/data: URLs, entities,"
        " SVG/MathML, mXSS, srcdoc, CSS expression/url(), forms, meta refresh, base href) loses every"
        " hostile word and keeps only allow-listed markup, sanitised alone and served by message_parse."
    )
    cases = 0
    for vector in XSS_CORPUS:
        for allow in (False, True):
            out = sanitize_html(vector, allow_remote_images=allow).html
            _no_vector(out)
            check_allowlisted(out)
            cases += 1
        for encoding in _ENCODINGS:
            parsed = parse_message(_html_mail(vector, encoding))
            assert parsed.html is not None, (encoding, vector)
            _no_vector(parsed.html)
            check_allowlisted(parsed.html)
            json.dumps(parsed.html)
            cases += 1
        scenario.cases = cases
    assert cases == len(XSS_CORPUS) * (2 + len(_ENCODINGS))


def test_corpus_has_each_classic_family() -> None:
    """The corpus keeps a vector of each classic family (a guard against it being trimmed)."""
    joined = "\n".join(XSS_CORPUS).lower()
    for family in (
        "<script",
        "onerror",
        "javascript:",
        "&#x6a;",
        "data:",
        "<svg",
        "<math",
        "<noscript",
        "srcdoc",
        "expression(",
        "url(javascript",
        "<form",
        "formaction",
        'http-equiv="refresh"',
        "<base",
        "<template",
    ):
        assert family in joined, family


def test_fuzz_helpers_reject_what_they_should() -> None:
    """The checks can fail: a script, a surrogate, a foreign attribute are each caught."""
    for bad in ("<script>x</script>", '<a onclick="x">', '<a href="javascript:x">', '<p style="x:url(y)">'):
        with pytest.raises(AssertionError):
            check_allowlisted(bad)
    with pytest.raises(AssertionError):
        clean_str("a\ud800", "x")
    with pytest.raises(AssertionError):
        clean_str("a\x00", "x")
    with pytest.raises(AssertionError):
        clean_str("a\x07", "x", controls=False)


# --- regressions found by this scenario ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(malformed_corpus()))
def test_malformed_corpus_case(name: str) -> None:
    """Each hand-written case through the same checks as the fuzz test (no stack needed)."""
    raw = malformed_corpus()[name]
    event = check_filter_summary(raw)
    assert event is not None
    check_parsed(raw)
    for html in html_parts(raw):
        check_sanitizer(html)


def test_summary_survives_8bit_disposition_and_mixed_rfc2231_sections() -> None:
    # Found by the fuzz test: compat32 returns a Header object for an 8-bit Content-Disposition
    # (AttributeError on .split), and RFC 2231 sections mixing "name*0" and "name*" made
    # email.utils.decode_params raise TypeError. The filter then published only the envelope and
    # did not stamp the mail, so a forged X-Mail-Bridge-Id could make Dovecot discard it.
    event = check_filter_summary(b"Content-Disposition: \xff\xff\r\n\r\nx")
    assert event is not None and event.subject == ""
    event = check_filter_summary(
        b"Subject: kept\r\nContent-Type: application/pdf; name*0=\"a\"; name*=utf-8''b\r\n"
        b"Content-Disposition: attachment\r\n\r\nx"
    )
    assert event is not None and event.subject == "kept"
    assert [a.content_type for a in event.attachments] == ["application/pdf"]


def test_summary_survives_an_8bit_charset_in_an_encoded_word() -> None:
    # Found by the fuzz test: email.header.make_header raised CharsetError (not caught by
    # decode_text) for "=?\xff\xfe?Q?...?=", and the filter published the envelope only.
    event = check_filter_summary(b"Subject: =?\xff\xfe?Q?=G?= kept\r\n\r\nx")
    assert event is not None and "kept" in event.subject


def test_summary_event_stays_within_the_codec_limit() -> None:
    # Found by the corpus: 1,000 attachments with 255-emoji names (1.1 MB event) and 120 junk
    # Authentication-Results headers (0.7 MB) were past or near codec.MAX_EVENT_BYTES, which every
    # consumer refuses: the index lost the mail's summary. Now bounded, and marked truncated.
    corpus = malformed_corpus()
    many = check_filter_summary(corpus["attachments-emoji-names"])
    assert many is not None and many.truncated and 0 < len(many.attachments) < 1000
    junk = check_filter_summary(corpus["authentication-results-junk"])
    assert junk is not None and junk.truncated and len(junk.authentication_results) < 120


def test_text_body_nul_is_replaced() -> None:
    # Found by the fuzz test: a NUL byte in a text/plain body reached the API's JSON.
    parsed = parse_message(b"Content-Type: text/plain\r\n\r\na\x00b\r\n")
    assert parsed.text == "a\ufffdb\r\n"
