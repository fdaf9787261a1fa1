import base64
from email import message_from_bytes
from email.policy import default

import pytest

from bridge.compose import MAX_RECIPIENTS, build
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
    with pytest.raises(InvalidInput, match="at least one recipient"):
        build("alice@example.test", {"subject": "later"})
