import time
from email.message import EmailMessage

from bridge.mail_headers import parse_headers
from bridge.mime_summary import MAX_DEPTH, MAX_PARTS, summarize_mime


def scan(message: bytes):  # type: ignore[no-untyped-def]
    parsed = parse_headers(message)
    return summarize_mime(message, parsed.headers, parsed.body_start)


def test_attachments_are_listed_with_sizes() -> None:
    m = EmailMessage()
    m["Subject"] = "files"
    m.set_content("see attached")
    m.add_attachment(b"%PDF-1.4 " + b"x" * 5000, maintype="application", subtype="pdf", filename="report.pdf")
    m.add_attachment("a,b\n1,2\n", subtype="csv", filename="Zählung.csv")
    summary = scan(m.as_bytes())
    assert [(a.filename, a.content_type) for a in summary.attachments] == [
        ("report.pdf", "application/pdf"),
        ("Zählung.csv", "text/csv"),
    ]
    assert summary.attachments[0].size > 5000  # base64 grows the body
    assert not summary.truncated


def test_plain_message_has_none() -> None:
    m = EmailMessage()
    m.set_content("just text")
    assert scan(m.as_bytes()).attachments == ()


def test_nested_multipart_inline_images() -> None:
    m = EmailMessage()
    m.set_content("text")
    m.add_alternative("<p>html</p>", subtype="html")
    m.add_attachment(b"\x89PNG....", maintype="image", subtype="png", filename="logo.png")
    assert [a.filename for a in scan(m.as_bytes()).attachments] == ["logo.png"]


def test_ten_thousand_parts_are_bounded() -> None:
    parts = b"".join(
        b"--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=f%d.txt\r\n\r\nx\r\n" % i
        for i in range(10_000)
    )
    message = b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + parts + b"--B--\r\n"
    started = time.monotonic()
    summary = scan(message)
    assert summary.truncated
    assert len(summary.attachments) == MAX_PARTS - 1  # the top-level multipart counts as one part
    assert time.monotonic() - started < 10  # a ceiling against hangs


def test_deep_nesting_is_bounded() -> None:
    body = b"leaf"
    for level in range(MAX_DEPTH + 5):
        body = (
            b'Content-Type: multipart/mixed; boundary="L%d"\r\n\r\n--L%d\r\n' % (level, level)
            + body
            + b"\r\n--L%d--\r\n" % level
        )
    assert scan(body).truncated


def test_broken_mime_never_raises() -> None:
    for message in [
        b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n--X\r\nno end',
        b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter",
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n',
        b'Content-Type: multipart/mixed; boundary="\xff"\r\n\r\n--\xff\r\n\r\n',
        b"",
    ]:
        scan(message)
