import dataclasses
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import codec
from bridge.errors import DecodeError
from bridge.events import EVENT_TYPES, SCHEMA_VERSION, Attachment, Event, Kind, MessageNew

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if tp is int:
        return INT64
    if tp is str:
        return st.text(max_size=40)
    if tp is bool:
        return st.booleans()
    if tp is Attachment:
        return record(Attachment)
    if isinstance(tp, type):
        return st.sampled_from(list(tp))  # the StrEnums
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    return st.none() | strategy_for(next(a for a in args if a is not type(None)))


def record(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls) if f.name != "v"}
    return st.builds(cls, **fields)


ANY_EVENT = st.one_of(*(record(cls) for cls in EVENT_TYPES.values()))


@given(ANY_EVENT)
def test_every_event_round_trips(event: Event) -> None:
    assert codec.decode(codec.encode(event)) == event


def test_every_kind_has_a_type() -> None:
    assert set(EVENT_TYPES) == set(Kind)


def test_wire_form_uses_plain_names() -> None:
    event = MessageNew(key="k", ts=1, account="a@x", mailbox="INBOX", uidvalidity=1, uid=2, from_="A <a@x>")
    wire = codec.to_wire(event)
    assert wire["kind"] == "message.new"
    assert wire["from"] == "A <a@x>"
    assert "from_" not in wire
    assert wire["v"] == SCHEMA_VERSION


def _packed(data: object) -> bytes:
    return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]


BASE = {"v": 1, "kind": "mailbox.create", "key": "k", "ts": 1, "account": "a@x", "mailbox": "M"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1", "not msgpack"),
        (_packed([1, 2]), "is a map"),
        (_packed({**BASE, "v": 2}), "unsupported schema version"),
        (_packed({**BASE, "kind": "message.exploded"}), "unknown event kind"),
        (_packed({k: v for k, v in BASE.items() if k != "account"}), "missing field 'account'"),
        (_packed({**BASE, "ts": "yesterday"}), "field 'ts': expected integer"),
        (_packed({**BASE, "ts": True}), "field 'ts': expected integer"),
        (_packed({**BASE, "kind": "flags.set", "uidvalidity": 1, "uid": 1, "flags": "\\Seen"}), "expected array"),
        (b"\x00" * (codec.MAX_EVENT_BYTES + 1), "exceeds"),
    ],
)
def test_bad_payloads_raise_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        codec.decode(payload)


def test_unknown_fields_are_ignored() -> None:
    event = codec.decode(_packed({**BASE, "future_field": [1, 2]}))
    assert event.kind == Kind.MAILBOX_CREATE
