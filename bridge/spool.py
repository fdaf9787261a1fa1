"""The event spool: where events wait when Redis cannot take them, and how they get back out.

Format (shared with hooks/mail-bridge-push.lua and hooks/mail-bridge-sieve-notify.py): a spool
directory of files named `<16-digit microseconds>-<8 hex>.mp`, each a concatenation of msgpack arrays
`[stream, event_map]` in publication order. A file is written as `.tmp` and renamed when complete, so
a reader never sees half a file. While the `PENDING` marker exists, producers append to the spool
instead of Redis, so the stream keeps their order; the drainer lowers the marker once the spool is
empty.

The marker protocol, so that it is never down while a producer's events wait:
- A producer creates its `.tmp` first, then raises the marker by renaming a new file onto `PENDING`
  (never by touching the old one), then writes, then renames the `.tmp` to `.mp`.
- The drainer publishes the files in name order, and stops at a `.tmp` that is still being written
  (younger than STALE_TMP_S): what comes after it waits, and the marker stays up. A `.tmp` older
  than that was left by a producer that died before its rename; its complete records are published
  (a truncated tail goes to `bad/`).
- With nothing left, the drainer lowers the marker by renaming away the very file it looked at
  before it listed the directory, and puts it back if a producer raised a new one in between. A
  raise after that is a new file, which stays.
- Whenever files wait and the marker is down (a producer of an older version touched it in place,
  just as it was lowered), the drainer raises it again.
So once a producer's file is complete, every event published after it follows it. What no marker
can order: while a producer still waits for Redis (its time bound, 250 ms for the hook), another
process whose Redis call succeeds publishes first. Consumers must not depend on the order of events
from different processes (docs/events.md); the index does not (bridge/store.py).

The drainer XADDs each file's events (validated by the codec) and deletes the file only after Redis
confirmed every entry: a crash between the two re-sends the file, and the events' keys let consumers
drop the duplicates. Undecodable records are moved to `bad/`, never silently dropped. Several bridge
processes on one host share the spool: one drains at a time (an flock on `.drain.lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge import codec
from bridge.errors import DecodeError
from bridge.events import ENTRY_FIELD, Event

log = logging.getLogger(__name__)

PENDING = "PENDING"
DRAIN_LOCK = ".drain.lock"  # flock(2) of the bridge process draining now (never a .mp name)
MARKER_TEMP = ".pending-"  # prefix of the new file a producer renames onto PENDING
LOWERING = ".pending-lowering"  # the marker while the drainer decides whether to lower it
MAX_SPOOL_FILE_BYTES = 64 << 20
# A producer writes its .tmp within its own time bound (the hook: 250 ms); one this old was left
# behind by a producer that died before renaming it.
STALE_TMP_S = 60.0


def raise_marker(spool_dir: Path) -> None:
    """Raise PENDING as a new file (renamed onto it), so no lowering in progress can take it away."""
    fresh = spool_dir / f"{MARKER_TEMP}{time.time_ns() // 1000:016d}-{secrets.randbits(32):08x}"
    fresh.touch()
    os.replace(fresh, spool_dir / PENDING)


def spool_record(stream: str, event: Event) -> bytes:
    packed: bytes = msgpack.packb([stream, codec.to_wire(event)], use_bin_type=True)
    return packed


def write_spool(spool_dir: Path, records: list[bytes]) -> Path:
    """Append one file of records to the spool and raise the PENDING marker: the .tmp exists before
    the marker goes up, so the drainer cannot lower the marker before it sees the file."""
    name = f"{time.time_ns() // 1000:016d}-{secrets.randbits(32):08x}"
    tmp = spool_dir / f"{name}.tmp"
    try:
        with open(tmp, "xb") as f:
            raise_marker(spool_dir)
            f.write(b"".join(records))
            f.flush()
            os.fsync(f.fileno())
        final = tmp.with_suffix(".mp")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


@dataclass
class DrainStats:
    files: int = 0
    events: int = 0
    bad: int = 0


class SpoolDrainer:
    """Moves spooled events into their streams, oldest file first."""

    def __init__(self, redis: aioredis.Redis, spool_dir: Path, maxlen: int, interval_s: float = 0.1) -> None:
        self.redis = redis
        self.spool_dir = spool_dir
        self.maxlen = maxlen
        self.interval_s = interval_s
        self.stats = DrainStats()

    def _files(self) -> list[Path]:
        """Complete (.mp) and unfinished (.tmp) spool files, oldest first (by name, not suffix)."""
        try:
            return sorted((p for p in self.spool_dir.iterdir() if p.suffix in (".mp", ".tmp")), key=lambda p: p.stem)
        except FileNotFoundError:
            return []

    def _being_written(self, path: Path) -> bool:
        """A .tmp its producer may still be writing (else one left by a producer that died)."""
        if path.suffix != ".tmp":
            return False
        try:
            return time.time() - path.stat().st_mtime < STALE_TMP_S
        except FileNotFoundError:
            return False  # renamed to .mp (or drained) since the listing: the next listing has it

    def _lower_marker(self) -> bool:
        """Lower PENDING if the spool is empty; False if files turned up (they are to be drained)."""
        marker = self.spool_dir / PENDING
        try:
            seen = _identity(marker.stat())
        except FileNotFoundError:
            return not self._files()
        if self._files():  # listed after the look at the marker: see _lower_marker's caller
            return False
        taken = self.spool_dir / LOWERING
        try:
            os.rename(marker, taken)
        except FileNotFoundError:
            return not self._files()
        if _identity(taken.stat()) != seen or self._files():
            # A producer raised the marker again since we looked (its file may not be visible yet),
            # or its file is: the marker stays. Renaming over a newer marker changes nothing.
            os.rename(taken, marker)
            return False
        taken.unlink()
        return True

    def _clean_marker_temps(self) -> None:
        """Remove new-marker files a producer died before renaming onto PENDING."""
        with contextlib.suppress(FileNotFoundError):
            for p in self.spool_dir.iterdir():
                if p.name.startswith(MARKER_TEMP) and p.name != LOWERING:
                    with contextlib.suppress(FileNotFoundError):
                        if time.time() - p.stat().st_mtime > STALE_TMP_S:
                            p.unlink()

    def _records(self, path: Path) -> tuple[list[tuple[str, Event]], int]:
        good: list[tuple[str, Event]] = []
        bad = 0
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=MAX_SPOOL_FILE_BYTES)
        with open(path, "rb") as f:
            data = f.read(MAX_SPOOL_FILE_BYTES)
        unpacker.feed(data)
        try:
            for item in unpacker:
                try:
                    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                        raise DecodeError("a spool record is [stream, event]")
                    good.append((item[0], codec.from_wire(item[1])))
                except DecodeError as exc:
                    bad += 1
                    log.error("spool %s: undecodable record skipped: %s", path.name, exc)
        except (ValueError, msgpack.UnpackException) as exc:
            bad += 1
            log.error("spool %s: truncated or corrupt after %d records: %s", path.name, len(good), exc)
        else:
            if unpacker.tell() != len(data):  # the iteration stops quietly at a record cut short
                bad += 1
                log.error("spool %s: truncated after %d records", path.name, len(good))
        return good, bad

    async def drain_once(self) -> int:
        """Drain everything present now; returns the number of events published (0 when another
        bridge process on this host is draining the same spool: one at a time, or both would
        publish the same file)."""
        lock = os.open(self.spool_dir / DRAIN_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            return await self._drain_all()
        finally:
            os.close(lock)  # releases the lock

    async def _drain_all(self) -> int:
        published = 0
        marker = self.spool_dir / PENDING
        while True:
            files = self._files()
            if not files:
                if self._lower_marker():
                    self._clean_marker_temps()
                    return published
                continue  # files came: drain them
            if not marker.exists():
                raise_marker(self.spool_dir)  # events wait: whatever comes next must queue behind them
            for path in files:
                if self._being_written(path):
                    # Its producer is writing it: it and what came after it wait (order), and so
                    # does the marker. The run loop comes back.
                    return published
                published += await self._drain_file(path)

    async def _drain_file(self, path: Path) -> int:
        try:
            records, bad = self._records(path)
        except FileNotFoundError:
            return 0  # a .tmp renamed to .mp since the listing: drained under its new name
        if path.suffix == ".tmp":
            log.error("spool %s: left unfinished by its producer; publishing its complete records", path.name)
        if records:
            pipe = self.redis.pipeline(transaction=False)
            for stream, event in records:
                pipe.xadd(stream, {ENTRY_FIELD: codec.encode(event)}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()  # raises on any failure: the file stays for the next round
        if bad:
            bad_dir = self.spool_dir / "bad"
            bad_dir.mkdir(exist_ok=True)
            os.replace(path, bad_dir / path.name)
            self.stats.bad += bad
        else:
            path.unlink()
        self.stats.files += 1
        self.stats.events += len(records)
        log.info("spool %s: %d event(s) published to their streams", path.name, len(records))
        return len(records)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                if self._files() or (self.spool_dir / PENDING).exists():
                    await self.drain_once()
                if failing:
                    log.info("spool drain recovered")
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("spool drain paused, will retry: %s", exc)
                failing = True
            await asyncio.sleep(self.interval_s)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    """Which file a name points to: a raise renames a new file onto PENDING, a new inode (and, should
    the number of a removed one be reused, a later modification time; not the change time, which our
    own rename moves)."""
    return st.st_dev, st.st_ino, st.st_mtime_ns
