"""bridge.message_parse: display fields, attachments and part ids from raw messages, good and broken."""

from __future__ import annotations

import base64
import dataclasses
import time
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.message_parse import (
    MAX_DEPTH,
    MAX_PARTS,
    MAX_REFERENCES,
    MAX_TEXT_CHARS,
    AttachmentInfo,
    ParsedMessage,
    extract_part,
    parse_message,
)

# Only a guard against hangs, far above the real cost: never a speed assertion.
HANG_CEILING_SECONDS = 10.0


def _simple(subject: str = "Hello", body: str = "Just text.\n") -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "Alice Example <alice@example.org>"
    message["To"] = "bob@example.org, Carol <carol@example.org>"
    message["Cc"] = '"Doe, Dan" <dan@example.org>'
    message["Date"] = "Tue, 01 Jul 2025 12:34:56 +0200"
    message["Message-ID"] = "<m1@example.org>"
    message["In-Reply-To"] = "<m0@example.org>"
    message["References"] = "<root@example.org> <m0@example.org>"
    message.set_content(body)
    return message


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("latin-1")


# --- headers and plain text -----------------------------------------------------------------------


def test_plain_text_message() -> None:
    parsed = parse_message(_simple().as_bytes())
    assert parsed.subject == "Hello"
    assert parsed.from_ == "Alice Example <alice@example.org>"
    assert parsed.to == ("bob@example.org", "Carol <carol@example.org>")
    assert parsed.cc == ('"Doe, Dan" <dan@example.org>',)
    assert parsed.date == "2025-07-01T10:34:56Z"
    assert parsed.message_id == "<m1@example.org>"
    assert parsed.in_reply_to == "<m0@example.org>"
    assert parsed.references == ("<root@example.org>", "<m0@example.org>")
    assert parsed.text == "Just text.\n"
    assert parsed.html is None
    assert parsed.blocked_remote_images == 0
    assert parsed.attachments == ()


def test_encoded_words_are_decoded() -> None:
    message = _simple(subject="Grüße aus Köln — 日本語")
    del message["From"]
    message["From"] = "Jörg Müller <joerg@example.de>"
    raw = message.as_bytes()
    assert b"=?utf-8?" in raw  # the generator used RFC 2047 encoded words
    parsed = parse_message(raw)
    assert parsed.subject == "Grüße aus Köln — 日本語"
    assert parsed.from_ == "Jörg Müller <joerg@example.de>"


def test_raw_utf8_headers_are_read_as_utf8() -> None:
    # RFC 6532 allows UTF-8 in header fields as raw bytes.
    raw = "Subject: Grüße\r\nFrom: Jörg <jörg@example.de>\r\n\r\nbody\r\n".encode()
    parsed = parse_message(raw)
    assert parsed.subject == "Grüße"
    assert parsed.from_ == "Jörg <jörg@example.de>"


def test_text_is_decoded_with_its_charset() -> None:
    raw = b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nK\xf6ln \x80\r\n"
    assert parse_message(raw).text == "Köln €\r\n"  # iso-8859-1 read as windows-1252, as browsers do
    raw = b"Content-Type: text/plain; charset=koi8-r\r\n\r\n\xf0\xd2\xc9\xd7\xc5\xd4\r\n"
    assert parse_message(raw).text == "Привет\r\n"
    raw = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    raw += b"K=C3=B6ln=\r\n!\r\n"
    assert parse_message(raw).text == "Köln!\r\n"


def test_dates_are_utc_with_z_or_none() -> None:
    def date_of(value: str) -> str | None:
        return parse_message(_crlf(f"Date: {value}\n\nx\n")).date

    assert date_of("Mon, 30 Jun 2025 23:30:00 -0130") == "2025-07-01T01:00:00Z"
    assert date_of("Tue, 01 Jul 2025 10:00:00 -0000") == "2025-07-01T10:00:00Z"  # RFC 5322 3.3
    assert date_of("1 Jul 2025 10:00 GMT") == "2025-07-01T10:00:00Z"
    assert date_of("yesterday-ish") is None
    assert date_of("Mon, 99 Foo 2025 99:99:99 +9999") is None
    assert parse_message(b"Subject: no date\r\n\r\nx").date is None


def test_long_references_keep_root_and_nearest() -> None:
    ids = [f"<r{i}@example.org>" for i in range(500)]
    parsed = parse_message(_crlf("References: " + "\n ".join(ids) + "\n\nx\n"))
    assert len(parsed.references) == MAX_REFERENCES
    assert parsed.references[0] == ids[0]
    assert parsed.references[1:] == tuple(ids[-(MAX_REFERENCES - 1) :])


def test_group_and_empty_address_lists() -> None:
    raw = _crlf("To: undisclosed-recipients:;\nCc: Team: a@example.org, b@example.org;\n\nx\n")
    parsed = parse_message(raw)
    assert parsed.to == ()
    assert parsed.cc == ("a@example.org", "b@example.org")
    assert parsed.from_ == ""


def test_text_is_cut_at_the_limit() -> None:
    body = "a" * (MAX_TEXT_CHARS + 5000)
    raw = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body.encode()
    assert len(parse_message(raw).text) == MAX_TEXT_CHARS


# --- multipart bodies -----------------------------------------------------------------------------


def test_alternative_text_and_sanitised_html() -> None:
    message = _simple()
    message.add_alternative(
        '<p onclick="steal()">Hi <b>there</b></p><script>alert(1)</script>'
        '<img src="https://tracker.example/open.gif"><a href="javascript:alert(1)">x</a>'
        '<a href="https://example.org/">site</a>',
        subtype="html",
    )
    parsed = parse_message(message.as_bytes())
    assert parsed.text == "Just text.\n"
    assert parsed.html is not None
    assert "<b>there</b>" in parsed.html
    for word in ("<script", "onclick", "javascript", "tracker.example"):
        assert word not in parsed.html.lower()
    assert 'href="https://example.org/" target="_blank" rel="noopener noreferrer"' in parsed.html
    assert parsed.blocked_remote_images == 1
    assert parsed.attachments == ()


def test_html_only_message_has_empty_text() -> None:
    raw = b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>only <i>html</i></p>\r\n"
    parsed = parse_message(raw)
    assert parsed.text == ""
    assert parsed.html is not None and "<i>html</i>" in parsed.html
    assert parsed.attachments == ()


def test_nested_mixed_alternative_with_attachments() -> None:
    message = _simple()
    message.add_alternative("<p>html body</p>", subtype="html")
    message.add_attachment(
        b"%PDF-1.4 " + bytes(range(256)) * 20, maintype="application", subtype="pdf", filename="report.pdf"
    )
    message.add_attachment("a;b\n1;2\n", subtype="csv", filename="Zählung 2024.csv")
    message.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="日本語.bin")
    raw = message.as_bytes()
    assert b"filename*=utf-8''" in raw  # RFC 2231 parameter encoding
    parsed = parse_message(raw)
    assert parsed.text == "Just text.\n"
    assert parsed.html == "<p>html body</p>\n"
    assert parsed.attachments == (
        AttachmentInfo("2", "report.pdf", "application/pdf", 9 + 256 * 20, "", False),
        AttachmentInfo("3", "Zählung 2024.csv", "text/csv", len(b"a;b\n1;2\n"), "", False),
        AttachmentInfo("4", "日本語.bin", "application/octet-stream", 8, "", False),
    )


def test_rfc2231_continuations_and_charset() -> None:
    raw = _crlf(
        "Content-Type: multipart/mixed; boundary=XYZ\n\n"
        "--XYZ\nContent-Type: text/plain\n\nsee files\n"
        "--XYZ\nContent-Type: application/octet-stream\n"
        "Content-Disposition: attachment;\n"
        " filename*0*=utf-8''%E6%97%A5%E6%9C%AC;\n"
        " filename*1*=%E8%AA%9E;\n"
        ' filename*2=".txt"\n'
        "Content-Transfer-Encoding: base64\n\n" + base64.b64encode(b"hello attachment").decode() + "\n"
        "--XYZ\nContent-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*=iso-8859-1'de'Gr%FC%DFe.txt\n\nbytes\n"
        "--XYZ--\n"
    )
    parsed = parse_message(raw)
    assert [(a.part_id, a.filename, a.size) for a in parsed.attachments] == [
        ("2", "日本語.txt", len(b"hello attachment")),
        ("3", "Grüße.txt", len(b"bytes")),
    ]
    assert extract_part(raw, "2") == ("日本語.txt", "application/octet-stream", b"hello attachment")


def test_inline_cid_image() -> None:
    message = _simple()
    message.add_alternative('<p>Logo: <img src="cid:logo.123@example.org" alt="logo"></p>', subtype="html")
    alternatives = message.get_payload()
    assert isinstance(alternatives, list)
    html_part = alternatives[1]
    assert isinstance(html_part, EmailMessage)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    html_part.add_related(
        png, maintype="image", subtype="png", cid="<logo.123@example.org>", filename="logo.png", disposition="inline"
    )
    raw = message.as_bytes()
    parsed = parse_message(raw)
    assert parsed.html is not None
    assert 'src="cid:logo.123@example.org"' in parsed.html
    assert parsed.blocked_remote_images == 0
    (image,) = parsed.attachments
    assert image == AttachmentInfo("2.2", "logo.png", "image/png", len(png), "logo.123@example.org", True)
    assert extract_part(raw, "2.2") == ("logo.png", "image/png", png)


def test_cid_part_without_disposition_is_inline() -> None:
    raw = _crlf(
        "Content-Type: multipart/related; boundary=R\n\n"
        "--R\nContent-Type: text/html\n\n<img src=cid:a@b>\n"
        "--R\nContent-Type: image/gif\nContent-ID: <a@b>\nContent-Transfer-Encoding: base64\n\nR0lGODlh\n"
        "--R--\n"
    )
    (image,) = parse_message(raw).attachments
    assert (image.part_id, image.content_id, image.inline, image.size) == ("2", "a@b", True, 6)


def test_deeply_nested_part_ids() -> None:
    raw = _crlf(
        "Content-Type: multipart/mixed; boundary=A\n\n"
        "--A\nContent-Type: multipart/alternative; boundary=B\n\n"
        "--B\nContent-Type: text/plain\n\nplain\n"
        "--B\nContent-Type: multipart/related; boundary=C\n\n"
        "--C\nContent-Type: text/html\n\n<p>rich</p>\n"
        "--C\nContent-Type: image/png\nContent-ID: <i1>\n\nPNG1\n"
        "--C\nContent-Type: image/png\nContent-ID: <i2>\n\nPNG2\n"
        "--C--\n"
        "--B--\n"
        "--A\nContent-Type: application/zip\nContent-Disposition: attachment; filename=a.zip\n\nZIP\n"
        "--A--\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "plain"
    assert parsed.html == "<p>rich</p>"
    assert [(a.part_id, a.content_type, a.content_id) for a in parsed.attachments] == [
        ("1.2.2", "image/png", "i1"),
        ("1.2.3", "image/png", "i2"),
        ("2", "application/zip", ""),
    ]
    assert extract_part(raw, "1.2.3") == ("", "image/png", b"PNG2")


def test_text_attachment_is_not_the_body() -> None:
    message = EmailMessage()
    message.set_content("the body")
    message.add_attachment("notes inside a file\n", filename="notes.txt")
    message.add_attachment("second inline text\n", disposition="inline")
    parsed = parse_message(message.as_bytes())
    assert parsed.text == "the body\n"
    assert [(a.part_id, a.filename, a.content_type, a.inline) for a in parsed.attachments] == [
        ("2", "notes.txt", "text/plain", False),
        ("3", "", "text/plain", True),
    ]


def test_single_part_non_text_message_is_one_attachment() -> None:
    raw = _crlf(
        "Subject: scan\nContent-Type: application/pdf; name=scan.pdf\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode(b"%PDF-1.7 scanned").decode()
        + "\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == ""
    assert parsed.html is None
    assert parsed.attachments == (AttachmentInfo("1", "scan.pdf", "application/pdf", 16, "", False),)
    assert extract_part(raw, "1") == ("scan.pdf", "application/pdf", b"%PDF-1.7 scanned")


def test_forwarded_message_is_one_attachment() -> None:
    inner = _simple(subject="inner")
    inner.add_attachment(b"inner file", maintype="application", subtype="octet-stream", filename="in.bin")
    outer = _simple(subject="Fwd: inner", body="see below\n")
    outer.add_attachment(inner)
    raw = outer.as_bytes()
    parsed = parse_message(raw)
    assert parsed.text == "see below\n"
    (forwarded,) = parsed.attachments  # its own parts are not listed
    assert (forwarded.part_id, forwarded.content_type) == ("2", "message/rfc822")
    extracted = extract_part(raw, "2")
    assert extracted is not None
    assert forwarded.size == len(extracted[2])
    again = parse_message(extracted[2])
    assert again.subject == "inner"
    assert [a.filename for a in again.attachments] == ["in.bin"]


# --- extract_part ---------------------------------------------------------------------------------


def test_extract_part_returns_decoded_bytes_and_none_for_unknown_ids() -> None:
    message = _simple()
    payload = bytes(range(256)) * 3
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename="all.bin")
    raw = message.as_bytes()
    assert extract_part(raw, "2") == ("all.bin", "application/octet-stream", payload)
    for wrong in ("1", "3", "0", "2.1", "1.1", "", "two", "2.", ".2", "-2", " 2", "2" + ".1" * 40, "9" * 100):
        assert extract_part(raw, wrong) is None, wrong


def test_extract_part_on_broken_input_is_none() -> None:
    assert extract_part(b"", "1") is None
    assert extract_part(b"\xff\xfe garbage", "1") is None
    assert extract_part(b"Content-Type: text/plain\r\n\r\nbody", "1") is None  # the body is no attachment


# --- broken MIME ----------------------------------------------------------------------------------


def test_missing_final_boundary() -> None:
    raw = _crlf(
        "Content-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nhello\n"
        "--XX\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVBERi0x\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "hello"
    assert [(a.part_id, a.filename, a.size) for a in parsed.attachments] == [("2", "a.pdf", 6)]
    assert extract_part(raw, "2") == ("a.pdf", "application/pdf", b"%PDF-1")


def test_multipart_without_usable_boundary_is_shown_as_text() -> None:
    assert parse_message(b"Content-Type: multipart/mixed\r\n\r\nloose body\r\n").text == "loose body\r\n"
    never = b"Content-Type: multipart/mixed; boundary=ZZ\r\n\r\nno delimiter here\r\n"
    assert parse_message(never).text == "no delimiter here\r\n"


def test_bogus_and_non_text_charsets_fall_back_to_utf8() -> None:
    for charset in ("x-bogus-42", "rot13", "base64", "zip", "unknown-8bit", '""', "utf-8'';"):
        raw = f"Content-Type: text/plain; charset={charset}\r\n\r\n".encode() + "héllo \xff".encode() + b"\xff\r\n"
        text = parse_message(raw).text
        assert text.startswith("héllo"), (charset, text)
        assert text.endswith("\ufffd\r\n"), (charset, text)


def test_bad_base64_is_decoded_best_effort() -> None:
    raw = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ!!!===x\r\n"
    assert parse_message(raw).text.startswith("hello world")
    raw = b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n%%%%not base64 at all%%%%\r\n"
    (part,) = parse_message(raw).attachments
    assert part.part_id == "1"


def test_junk_headers_are_replaced_not_raised() -> None:
    raw = (
        b"Subject: \xff\xfe\x00junk =?utf-8?b?////?= =?x-unknown?q?abc?= \x80\x1b[31m\r\n"
        b"From: \xc3\xa9ric <\xff@x>, ,,, <<>>\r\n"
        b'To: "unterminated <a@b\r\n'
        b"Cc: =?x-unknown?q?abc?= <c@d>, @@@, (comment only)\r\n"
        b"Date: Mon, 99 Foo 20x 99:99\r\n"
        b"Message-ID: \xff\r\n"
        b"References: <a@b> <<<>>> \xff <c@d\r\n"
        b"Content-Type: text/plain; charset=\xff\r\n"
        b"\r\nbody \xe9\r\n"
    )
    parsed = parse_message(raw)
    assert "junk" in parsed.subject
    assert "\ufffd" in parsed.subject
    assert not any(ord(c) < 0x20 for c in parsed.subject)
    assert parsed.from_.startswith("éric")
    assert parsed.date is None
    assert parsed.references[0] == "<a@b>"
    assert parsed.text == "body \ufffd\r\n"
    for value in (parsed.subject, parsed.from_, *parsed.to, *parsed.cc, parsed.message_id, *parsed.references):
        value.encode("utf-8")  # no lone surrogates left


def test_hostile_filenames_are_reduced_to_a_label() -> None:
    raw = _crlf(
        "Content-Type: multipart/mixed; boundary=F\n\n"
        "--F\nContent-Type: application/octet-stream\n"
        'Content-Disposition: attachment; filename="../../etc/passwd"\n\nx\n'
        "--F\nContent-Type: application/octet-stream\n"
        'Content-Disposition: attachment; filename="C:\\\\evil\\\\run.exe"\n\nx\n'
        "--F\nContent-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*=utf-8''a%0D%0Ab%00c.txt\n\nx\n"
        "--F\nContent-Type: text/<script>\nContent-Disposition: attachment; filename=" + "n" * 400 + "\n\nx\n"
        "--F--\n"
    )
    names = [(a.filename, a.content_type) for a in parse_message(raw).attachments]
    assert names[0] == ("passwd", "application/octet-stream")
    assert names[1] == ("run.exe", "application/octet-stream")
    assert names[2] == ("a b c.txt", "application/octet-stream")
    assert names[3] == ("n" * 255, "application/octet-stream")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"Subject: only a header",
        b"no colon at all\r\n\r\nbody",
        bytes(range(256)) * 8,
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n\r\n--\r\n",
        b'Content-Type: multipart/mixed; boundary="a"; boundary="b"\r\n\r\n--a\r\n\r\nx\r\n--b--\r\n',
        b"Content-Type: message/rfc822\r\n\r\nnot really a message",
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nAction: failed\r\n",
        b"Content-Type: text/plain; charset=utf-16\r\n\r\n\xff\xfeh\x00\xd8",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 f\r\n!!!\r\nend\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=",
        b"Content-Type: ;;;===\r\nContent-Disposition: ;;filename*0*=x''%%%\r\n\r\n?",
        b"Subject: =?utf-8?q?" + b"=FF" * 5000 + b"?=\r\n\r\n",
        b"To: " + b"<a@b>, " * 20000 + b"\r\n\r\n",
        b"From: " + b"(" * 5000 + b"\r\n\r\n",
    ],
)
def test_malformed_input_never_raises(raw: bytes) -> None:
    started = time.monotonic()
    parsed = parse_message(raw)
    assert isinstance(parsed, ParsedMessage)
    for attachment in parsed.attachments:
        assert extract_part(raw, attachment.part_id) is not None
    assert time.monotonic() - started < HANG_CEILING_SECONDS


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_message(raw), ParsedMessage)


_SEED = _crlf(
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\nFrom: A <a@b>\nContent-Type: multipart/mixed; boundary=S\n\n"
    "--S\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\naGVsbG8=\n"
    "--S\nContent-Type: image/png\nContent-Disposition: attachment; filename*=utf-8''%C3%A4.png\n\nPNG\n"
    "--S--\n"
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), max_size=12))
def test_mutated_messages_never_raise(edits: list[tuple[int, int]]) -> None:
    raw = bytearray(_SEED)
    for position, value in edits:
        raw[position] = value
    parsed = parse_message(bytes(raw))
    for attachment in parsed.attachments:
        assert extract_part(bytes(raw), attachment.part_id) is not None


# --- bounds ---------------------------------------------------------------------------------------


def _many_parts(count: int) -> bytes:
    parts = b"".join(
        b"--B\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=f%d.bin\r\n\r\nxx\r\n" % i
        for i in range(count)
    )
    return b"Subject: many\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" + parts + b"--B--\r\n"


def test_ten_thousand_parts_are_bounded() -> None:
    raw = _many_parts(10_000)
    started = time.monotonic()
    parsed = parse_message(raw)
    assert time.monotonic() - started < HANG_CEILING_SECONDS
    assert parsed.subject == "many"
    # The top-level multipart is one of the MAX_PARTS walked parts.
    assert len(parsed.attachments) == MAX_PARTS - 1
    assert parsed.attachments[0] == AttachmentInfo("1", "f0.bin", "application/octet-stream", 2, "", False)
    assert parsed.attachments[-1].part_id == str(MAX_PARTS - 1)


def test_parts_beyond_the_bound_cannot_be_extracted() -> None:
    raw = _many_parts(10_000)
    started = time.monotonic()
    assert extract_part(raw, str(MAX_PARTS - 1)) == (f"f{MAX_PARTS - 2}.bin", "application/octet-stream", b"xx")
    assert extract_part(raw, str(MAX_PARTS)) is None
    assert extract_part(raw, "9999") is None
    assert time.monotonic() - started < HANG_CEILING_SECONDS


def _nested(levels: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(levels):
        boundary = b"b%d" % level
        body = (
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" + boundary + b"\r\n"
            b"" + body + b"\r\n--" + boundary + b"--\r\n"
        )
    return b"Subject: deep\r\n" + body


def test_nesting_deeper_than_the_bound_is_not_entered() -> None:
    assert parse_message(_nested(MAX_DEPTH)).text == "leaf\r\n"
    assert parse_message(_nested(MAX_DEPTH + 1)).text == ""


def test_absurd_nesting_does_not_raise() -> None:
    started = time.monotonic()
    parsed = parse_message(_nested(5000))
    assert time.monotonic() - started < HANG_CEILING_SECONDS
    assert parsed.subject == "deep"
    assert parsed.text == ""
    assert parsed.attachments == ()


def test_results_are_frozen() -> None:
    parsed = parse_message(_simple().as_bytes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.subject = "x"  # type: ignore[misc]
