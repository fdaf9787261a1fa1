"""mail_service.owned_ref, the one ownership check of every action that names a message. Pure."""

from __future__ import annotations

import pytest

from bridge.auth import Identity
from bridge.browser_events import EmailRef, email_id
from bridge.errors import InvalidInput, NotFound
from bridge.mail_service import draft_ref, owned_ref

ALICE = Identity("alice", ("alice@example.test", "Shop@Example.test"), 2_000_000_000)


def test_an_account_the_token_grants_is_named_as_granted() -> None:
    ref = EmailRef("ALICE@example.test", "INBOX", 7, 3)
    assert owned_ref(ALICE, email_id(ref)) == EmailRef("alice@example.test", "INBOX", 7, 3)
    shop = EmailRef("shop@example.test", "Archive", 1, 9)
    assert owned_ref(ALICE, email_id(shop)) == EmailRef("Shop@Example.test", "Archive", 1, 9)


def test_another_users_message_looks_missing() -> None:
    with pytest.raises(NotFound, match="no such email"):
        owned_ref(ALICE, email_id(EmailRef("bob@example.test", "INBOX", 7, 3)))


@pytest.mark.parametrize("value", [None, 42, "", "not-an-email-id", "x" * 5000])
def test_what_is_no_email_id_is_invalid_input(value: object) -> None:
    with pytest.raises(InvalidInput, match="invalid email id"):
        owned_ref(ALICE, value)


def test_a_draft_reference_must_be_the_accounts_own_draft() -> None:
    draft = email_id(EmailRef("alice@example.test", "Drafts", 7, 3))
    assert draft_ref(ALICE, "alice@example.test", draft, "replaces").mailbox == "Drafts"
    with pytest.raises(InvalidInput, match="replaces must be the id of a draft"):
        draft_ref(ALICE, "Shop@Example.test", draft, "replaces")  # granted, but another account's
    with pytest.raises(NotFound):
        draft_ref(ALICE, "alice@example.test", email_id(EmailRef("bob@example.test", "Drafts", 7, 3)), "replaces")
