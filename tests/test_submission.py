"""bridge.submission: what a refused send says to the person who sent it."""

from __future__ import annotations

from bridge.submission import reply_text


def test_a_refusal_reads_as_a_sentence_without_codes_or_the_repeated_address() -> None:
    postfix = "5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table"
    assert (
        reply_text(postfix, "nobody@example.test")
        == "Recipient address rejected: User unknown in virtual mailbox table"
    )
    assert reply_text("5.7.1 Sender address rejected:\n  not owned by user alice") == (
        "Sender address rejected: not owned by user alice"
    )
    assert reply_text("Service unavailable") == "Service unavailable"  # no enhanced code to take off
    assert reply_text("4.3.2 ") == "no reason given"
