import time

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.events import Direction
from bridge.mail_headers import MAX_HEADER_BYTES, parse_headers, summarize
from bridge.mime_summary import summarize_mime

RECEIVED_SMTP = (
    b"Received: from client.outside.test (localhost [127.0.0.1])\r\n"
    b"\tby mail.example.test (Postfix) with ESMTP id 4AbC12xyZ\r\n"
    b"\tfor <alice@example.test>; Sun, 29 Nov 2026 06:00:00 +0000 (UTC)\r\n"
)


def test_inbound_summary() -> None:
    message = (
        RECEIVED_SMTP + b"From: =?utf-8?q?J=C3=BCrgen?= <j@outside.test>\r\n"
        b"Subject: =?utf-8?b?w5xuw69jw7Zkw6k=?=\r\nMessage-ID: <m1@outside.test>\r\n"
        b"Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nAuthentication-Results: mx; spf=pass\r\n\r\nbody\r\n"
    )
    s = summarize(message)
    assert s.queue_id == "4AbC12xyZ"
    assert s.direction is Direction.INBOUND
    assert s.subject == "Ünïcödé"
    assert s.from_ == "Jürgen <j@outside.test>"
    assert s.message_id == "<m1@outside.test>"
    assert s.date == 1795932000
    assert s.authentication_results == ("mx; spf=pass",)
    assert not s.truncated


def test_outbound_and_local() -> None:
    out = summarize(
        b"Received: from x (localhost [127.0.0.1])\r\n\t(Authenticated sender: alice@example.test)\r\n"
        b"\tby mail.example.test (Postfix) with ESMTPSA id 9ZZ;\r\n\tSun, 29 Nov 2026 06:00:00 +0000\r\n\r\n"
    )
    assert (out.direction, out.sasl_user, out.queue_id) == (Direction.OUTBOUND, "alice@example.test", "9ZZ")
    local = summarize(b"Received: by mail.example.test (Postfix, from userid 0)\r\n\tid 7QQ; Sun, 1 Jan 2026\r\n\r\n")
    assert (local.direction, local.queue_id) == (Direction.LOCAL, "7QQ")


def test_junk_headers_never_raise() -> None:
    garbage = summarize(b"Subject: =?utf-8?B?not base64!?= =?utf-8?q?=FF=FE=?=\r\n\r\n")
    assert "not base64" in garbage.subject
    s = summarize(b"Subject: =?bogus?q?\xff\xfe?= \xe9t\xe9\r\nDate: not a date\r\nFrom: \xff\r\n\r\n")
    assert s.date is None
    assert s.queue_id == ""
    s.subject.encode("utf-8")  # always valid UTF-8


def test_huge_header_block_is_bounded() -> None:
    message = b"X-Junk: " + b"a" * (4 * MAX_HEADER_BYTES) + b"\r\n\r\nbody"
    started = time.monotonic()
    s = summarize(message)
    assert s.truncated
    assert time.monotonic() - started < 5  # a ceiling against hangs, not a speed claim


def test_many_header_lines_are_bounded() -> None:
    message = b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + b"Subject: late\r\n\r\n"
    s = summarize(message)
    assert s.truncated
    assert s.subject == ""


HEADER_NAMES = st.sampled_from([b"Subject", b"From", b"Date", b"Message-ID", b"Received", b"Content-Type", b"X-Any"])
ENCODED_WORDS = st.builds(
    lambda charset, enc, text: b"=?" + charset + b"?" + enc + b"?" + text + b"?=",
    st.sampled_from([b"utf-8", b"iso-8859-1", b"bogus", b""]),
    st.sampled_from([b"q", b"B", b"x"]),
    st.binary(max_size=20),
)
HEADER_LINES = st.lists(
    st.tuples(HEADER_NAMES, st.lists(st.one_of(ENCODED_WORDS, st.binary(max_size=30)), max_size=4)).map(
        lambda pair: pair[0] + b": " + b" ".join(pair[1]) + b"\r\n"
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(HEADER_LINES, st.binary(max_size=2000))
def test_any_header_block_is_summarized(lines: list[bytes], body: bytes) -> None:
    message = b"".join(lines) + b"\r\n" + body
    parsed = parse_headers(message)
    summary = summarize(parsed)
    summary.subject.encode("utf-8")
    summarize_mime(message, parsed.headers, parsed.body_start)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=5000))
def test_any_bytes_are_summarized(message: bytes) -> None:
    parsed = parse_headers(message)
    summarize(parsed)
    summarize_mime(message, parsed.headers, parsed.body_start)


def test_categories() -> None:
    social = summarize(b"From: LinkedIn <messages-noreply@linkedin.com>\r\nSubject: x\r\n\r\n")
    promo = summarize(b"From: shop@store.test\r\nList-Unsubscribe: <mailto:u@store.test>\r\n\r\n")
    bulk = summarize(b"From: news@paper.test\r\nPrecedence: bulk\r\n\r\n")
    primary = summarize(b"From: Bob <bob@example.test>\r\n\r\n")
    assert [s.category for s in (social, promo, bulk, primary)] == ["social", "promotions", "promotions", "primary"]
