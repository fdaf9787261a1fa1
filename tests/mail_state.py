"""The state of an account's messages as IMAP holds it and as the index lists it, in one shape, so a
test can assert that the index ends exactly equal to IMAP: {(mailbox, uidvalidity, uid): (system
flags, keywords, seen)}."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterable
from typing import Any

from bridge.stack.launcher import StackInfo
from bridge.store import Store
from tests.common import Account

State = dict[tuple[str, int, int], tuple[tuple[str, ...], tuple[str, ...], bool]]


def ok(result: tuple[str, Any]) -> Any:
    status, data = result
    assert status == "OK", data
    return data


def imap_state(stack: StackInfo, account: Account, mailboxes: Iterable[str]) -> State:
    """What IMAP holds: every message of these mailboxes with its system flags and keywords."""
    state: State = {}
    with imaplib.IMAP4(stack.imap["host"], stack.imap["port"], timeout=10) as imap:
        ok(imap.login(account.email, account.password))
        for mailbox in mailboxes:
            count = int(ok(imap.select(mailbox, readonly=True))[0])
            validity = int(imap.response("UIDVALIDITY")[1][0])
            if count == 0:
                continue
            for line in ok(imap.uid("FETCH", "1:*", "(FLAGS)")):
                uid = int(re.search(rb"UID (\d+)", line)[1])  # type: ignore[index]
                flags = [f.decode() for f in imaplib.ParseFlags(line) if f != b"\\Recent"]
                state[(mailbox, validity, uid)] = (
                    tuple(sorted(f for f in flags if f.startswith("\\"))),
                    tuple(sorted(f for f in flags if not f.startswith("\\"))),
                    "\\Seen" in flags,
                )
    return state


async def index_state(store: Store, account: str) -> State:
    """What the index lists for the account (a tombstone has no account: listings never see one)."""
    state: State = {}
    async for doc in store.messages.find({"account": account}):
        # FerretDB v1.24 leaves out the empty arrays an upsert's $setOnInsert names: none is no flag.
        flags, keywords = doc.get("flags") or [], doc.get("keywords") or []
        key = (doc["mailbox"], doc["uidvalidity"], doc["uid"])
        state[key] = (tuple(sorted(flags)), tuple(sorted(keywords)), bool(doc.get("seen")))
    return state
