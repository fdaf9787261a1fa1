import base64
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import pytest

from bridge.compose import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_RECIPIENTS,
    Attachment,
    build,
    check_content_type,
    check_filename,
    forwarded_parts,
    upload_ids,
)
from bridge.errors import InvalidInput


def test_builds_a_message_from_the_account() -> None:
    out = build(
        "alice@example.test",
        {
            "to": ["Bob <bob@example.test>"],
            "cc": "carol@example.test",
            "bcc": ["dave@example.test"],
            "subject": "Grüße",
            "body": "text",
            "html": "<p>html</p>",
            "inReplyTo": "<orig@example.test>",
            "attachments": [
                {"filename": "a.txt", "contentType": "text/plain", "content": base64.b64encode(b"x").decode()}
            ],
        },
    )
    parsed = message_from_bytes(out.message, policy=default)
    assert parsed["From"] == "alice@example.test"
    assert parsed["To"] == "Bob <bob@example.test>"
    assert parsed["Subject"] == "Grüße"
    assert parsed["Bcc"] is None  # envelope only
    assert parsed["In-Reply-To"] == "<orig@example.test>"
    assert parsed["Message-ID"] == out.message_id and out.message_id.endswith("@example.test>")
    assert out.recipients == ("bob@example.test", "carol@example.test", "dave@example.test")
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["a.txt"]


@pytest.mark.parametrize(
    "data",
    [
        {"to": ["a@example.test"], "subject": "x\r\nBcc: v@example.test"},
        {"to": ["a@example.test"], "subject": "x\nInjected: 1"},
        {"to": ["a@example.test\r\n"], "subject": "x"},
        {"to": ["<a@example.test>, b"], "subject": "x"},
        {"to": [f"r{n}@example.test" for n in range(MAX_RECIPIENTS + 1)]},
        {"to": "a@example.test", "subject": 5},
        {"to": ["a@example.test"], "attachments": [{"filename": "a\\b", "content": "YQ=="}]},
        {"to": ["a@example.test"], "attachments": "nope"},
        [],
    ],
)
def test_refuses_injection_and_bad_shapes(data: object) -> None:
    with pytest.raises(InvalidInput):
        build("alice@example.test", data)


def test_drafts_may_lack_recipients() -> None:
    assert build("alice@example.test", {"subject": "later"}, draft=True).recipients == ()


def test_a_draft_keeps_a_half_typed_address_as_written_and_a_send_refuses_it() -> None:
    data = {"to": ["bob@example.test", "ca"], "cc": ["Dan <dan@", "eve@example.test"], "subject": "later"}
    draft = build("alice@example.test", data, draft=True)
    assert draft.recipients == ("bob@example.test", "eve@example.test")  # only whole addresses
    headers = draft.message.split(b"\n\n", 1)[0].decode()
    assert 'To: bob@example.test, "ca"' in headers and 'Cc: eve@example.test, "Dan <dan@"' in headers
    with pytest.raises(InvalidInput, match="to: invalid address 'ca'"):
        build("alice@example.test", data)
    with pytest.raises(InvalidInput, match="to: invalid address"):  # injection stays refused in drafts
        build("alice@example.test", {"to": ["bo\r\nBcc: x@evil.test"]}, draft=True)
    with pytest.raises(InvalidInput, match="at least one recipient"):
        build("alice@example.test", {"subject": "later"})


def test_staged_uploads_are_attached_like_inline_ones() -> None:
    upload_id = "u" * 24
    data = {
        "to": ["bob@example.test"],
        "attachments": [
            {"uploadId": upload_id},
            {"filename": "b.txt", "content": base64.b64encode(b"inline").decode()},
            {"uploadId": upload_id},
        ],
    }
    assert upload_ids(data) == (upload_id,)
    staged = {upload_id: Attachment("Bericht.pdf", "application/pdf", b"%PDF\x00\xff")}
    parsed = message_from_bytes(build("alice@example.test", data, uploads=staged).message, policy=default)
    found = []
    for part in parsed.iter_attachments():
        assert isinstance(part, EmailMessage)
        found.append((part.get_filename(), part.get_content_type(), part.get_payload(decode=True)))
    assert found == [
        ("Bericht.pdf", "application/pdf", b"%PDF\x00\xff"),
        ("b.txt", "application/octet-stream", b"inline"),
        ("Bericht.pdf", "application/pdf", b"%PDF\x00\xff"),
    ]


def test_unresolved_or_malformed_upload_ids_are_refused() -> None:
    data = {"to": ["bob@example.test"], "attachments": [{"uploadId": "v" * 24}]}
    with pytest.raises(InvalidInput, match=f"attachment upload {'v' * 24} not found or expired"):
        build("alice@example.test", data, uploads={"w" * 24: Attachment("a", "text/plain", b"")})
    for bad in ("short", "x" * 65, "../../etc/passwd-xxxxxxxxx", 5, None):
        with pytest.raises(InvalidInput, match="uploadId is invalid"):
            upload_ids({"attachments": [{"uploadId": bad}]})
    with pytest.raises(InvalidInput, match="at most"):
        upload_ids({"attachments": [{"uploadId": "u" * 24}] * (MAX_ATTACHMENTS + 1)})
    assert upload_ids({"attachments": "not a list"}) == () and upload_ids([]) == ()


def test_staged_and_inline_attachments_share_one_size_limit() -> None:
    big = {"u" * 24: Attachment("big.bin", "application/octet-stream", b"\0" * (MAX_ATTACHMENT_BYTES - 2))}
    fits = {"to": ["b@example.test"], "attachments": [{"uploadId": "u" * 24}, {"filename": "s", "content": "YQ=="}]}
    build("alice@example.test", fits, uploads=big)
    over = {**fits, "attachments": [*fits["attachments"], {"filename": "t", "content": "YWI="}]}
    with pytest.raises(InvalidInput, match="larger than"):
        build("alice@example.test", over, uploads=big)


def test_names_and_types_are_checked_whichever_the_form() -> None:
    assert check_content_type(None) == check_content_type("") == "application/octet-stream"
    assert check_content_type("image/svg+xml") == "image/svg+xml"
    for bad_type in ("text", "text/plain; charset=x", "a/b/c", 3):
        with pytest.raises(InvalidInput, match="contentType"):
            check_content_type(bad_type)
    for bad_name in ("", "a/b", "a\\b", "a\nb", "x" * 256, None):
        with pytest.raises(InvalidInput, match="filename"):
            check_filename(bad_name)
    staged = {"u" * 24: Attachment("../x", "text/plain", b"")}  # a stored value is checked again
    with pytest.raises(InvalidInput, match="filename"):
        build("alice@example.test", {"to": ["b@example.test"], "attachments": [{"uploadId": "u" * 24}]}, uploads=staged)


def test_a_forwarded_mails_attachments_go_with_it_as_the_caller_resolved_them() -> None:
    data = {
        "to": ["bob@example.test"],
        "subject": "Fwd: figures",
        "attachments": [
            {"forwardOf": "e1", "part": "2"},
            {"forwardOf": "e1", "part": "2"},
            {"forwardOf": "e1", "part": "3"},
        ],
    }
    assert forwarded_parts(data) == (("e1", "2"), ("e1", "3"))  # each once, in order
    resolved = {
        ("e1", "2"): Attachment("q3.csv", "text/csv", b"q,revenue\n"),
        ("e1", "3"): Attachment("bad\x00name", "not a type", b"x"),  # as some sender wrote it: tamed
    }
    message = message_from_bytes(build("alice@example.test", data, forwarded=resolved).message, policy=default)
    parts = [(p.get_filename(), p.get_content_type()) for p in message.iter_attachments()]
    assert parts == [("q3.csv", "text/csv"), ("q3.csv", "text/csv"), ("attachment", "application/octet-stream")]
    with pytest.raises(InvalidInput, match="attachment 9 of the forwarded mail was not found"):
        build("alice@example.test", {**data, "attachments": [{"forwardOf": "e1", "part": "9"}]}, forwarded=resolved)
    for bad in ({"forwardOf": "", "part": "2"}, {"forwardOf": "e1", "part": "../2"}, {"forwardOf": 5, "part": "2"}):
        with pytest.raises(InvalidInput, match=r"forwardOf|part"):
            forwarded_parts({"attachments": [bad]})
