"""Flag changes in the message index, last-writer-wins per flag, in whatever order they arrive.

Part of the store (bridge.store is its only entry point; bridge.store_writes applies events with it).
Each message document keeps, per flag, the clock of the change that set its state (`clk`;
`flag_clock`: the event's time, refined by the hook's occurrence key), and a change older than that
is undone where it landed. A change whose message is not indexed yet is kept in `early_flags`, by
the same `_id`; a delivery, once written, takes the record over (and the change, having looked for
the document after writing its record, applies itself if the delivery came in between: one of the
two always sees the other).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import quote, unquote

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from bridge.events import FlagsChanged

Documents: TypeAlias = AsyncCollection[dict[str, Any]]

SEEN = "\\Seen"

# The hook's occurrence key: dovecot:<its clock in microseconds, hex>-<random>.<place in transaction>
_OCCURRENCE_KEY = re.compile(r"^dovecot:([0-9a-f]{1,16})-[0-9a-f]{8}\.([0-9]{1,6})$")


def flag_clock(event: FlagsChanged) -> int:
    """When a flag change happened, for last-writer-wins: `ts` (milliseconds) in units of a
    nanosecond, refined by the hook's occurrence key (its transaction's microseconds, then the event's
    place in it), so two changes of one flag within a millisecond keep their order too."""
    found = _OCCURRENCE_KEY.match(event.key)
    if found:
        micros, place = int(found[1], 16), int(found[2])
        if abs(micros // 1000 - event.ts) <= 1:
            return micros * 1000 + min(place, 999)
    return event.ts * 1_000_000


def now_ms() -> int:
    """The wall clock in milliseconds: when a tombstone or a kept change was written, for pruning."""
    return time.time_ns() // 1_000_000


async def change(
    messages: Documents, doc_id: str, value: bool, changes: Mapping[str, int]
) -> tuple[dict[str, Any], dict[str, bool]] | None:
    """Set (or clear) these flags of a message document, each unless a later change of it was
    applied already (then it is put back as that one left it). Returns the document as it was and
    the flags put back (with the state they kept); None if there is no document."""
    before = await messages.find_one_and_update(
        {"_id": doc_id}, _flag_update(value, changes), return_document=ReturnDocument.BEFORE
    )
    if before is None:
        return None
    stale = {name: _has(before, name) for name, clock in changes.items() if _clock(before, name) > clock}
    if stale:
        await _restore(messages, doc_id, stale)
    return before, stale


async def record_early(early_flags: Documents, doc_id: str, value: bool, changes: Mapping[str, int]) -> None:
    """Keep a flag change whose message is not indexed yet: per flag, its latest state and clock."""
    names = list(changes)
    now, then = ("on", "off") if value else ("off", "on")
    update: dict[str, Any] = {
        "$max": {f"clk.{_clock_field(name)}": clock for name, clock in changes.items()},
        "$addToSet": {now: {"$each": names}},
        "$pullAll": {then: names},
        "$set": {"at": now_ms()},
    }
    before = await early_flags.find_one_and_update(
        {"_id": doc_id}, update, upsert=True, return_document=ReturnDocument.BEFORE
    )
    if before is None:
        return
    stale = [name for name, clock in changes.items() if _clock(before, name) > clock]
    for name in stale:  # a later change of it was recorded first: its state stays
        was_on = name in (before.get("on") or ())
        keep, drop = ("on", "off") if was_on else ("off", "on")
        await early_flags.update_one({"_id": doc_id}, {"$addToSet": {keep: name}, "$pullAll": {drop: [name]}})


async def any_early(early_flags: Documents, doc_ids: Sequence[str]) -> bool:
    """Whether a change is kept for any of these messages, in one round trip: an update per `_id`
    (FerretDB answers a filter of `_id` alone from its index, any other filter, `$in` too, by a scan)."""
    probe = [UpdateOne({"_id": doc_id}, {"$set": {"claimed": True}}) for doc_id in doc_ids]
    return bool((await early_flags.bulk_write(probe, ordered=False)).matched_count)


async def early_changes(early_flags: Documents, doc_id: str) -> list[tuple[bool, dict[str, int]]] | None:
    """The changes kept for a message, as (set or cleared, {flag: clock}); None if none are kept."""
    record = await early_flags.find_one({"_id": doc_id})
    if record is None:
        return None
    clocks = {unquote(field): int(clock) for field, clock in (record.get("clk") or {}).items()}
    on = set(record.get("on") or ())
    found = []
    for value, names in ((True, on), (False, set(record.get("off") or ()) - on)):
        if names:
            found.append((value, {name: clocks.get(name, 0) for name in names}))
    return found


def _clock_field(flag: str) -> str:
    """The field of `clk` that holds a flag's clock: no `.` (a path) and no leading `$` in the name."""
    return quote(flag, safe="").replace(".", "%2E")


def _clock(doc: Mapping[str, Any], name: str) -> int:
    return int((doc.get("clk") or {}).get(_clock_field(name), -1))


def _has(doc: Mapping[str, Any], name: str) -> bool:
    return name in (doc.get("flags") or ()) or name in (doc.get("keywords") or ())


def _flag_fields(names: Sequence[str]) -> dict[str, list[str]]:
    system = [n for n in names if n.startswith("\\")]
    keywords = [n for n in names if not n.startswith("\\")]
    return {field: found for field, found in (("flags", system), ("keywords", keywords)) if found}


def _flag_update(value: bool, changes: Mapping[str, int]) -> dict[str, Any]:
    """Set (or clear) flags and keywords, and raise each one's clock to the change's."""
    fields = _flag_fields(list(changes))
    update: dict[str, Any] = {"$max": {f"clk.{_clock_field(name)}": clock for name, clock in changes.items()}}
    if value:
        update["$addToSet"] = {field: {"$each": names} for field, names in fields.items()}
    else:
        # $pullAll, not $pull with $in: FerretDB v1.24 takes the latter and removes nothing.
        update["$pullAll"] = fields
    if SEEN in changes:
        update["$set"] = {"seen": value}
    return update


async def _restore(messages: Documents, doc_id: str, state: Mapping[str, bool]) -> None:
    """Put flags back as a later change left them (rare: a change that arrived after a newer one)."""
    for value in (True, False):
        names = [name for name, present in state.items() if present == value]
        if not names:
            continue
        fields = _flag_fields(names)
        update: dict[str, Any] = (
            {"$addToSet": {f: {"$each": n} for f, n in fields.items()}} if value else {"$pullAll": fields}
        )
        if SEEN in names:
            update["$set"] = {"seen": value}
        await messages.update_one({"_id": doc_id}, update)
