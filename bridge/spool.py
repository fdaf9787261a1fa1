"""The event spool: where events wait when Redis cannot take them, and how they get back out.

Format (shared with hooks/mail-bridge-push.lua): a spool directory of files named
`<16-digit microseconds>-<8 hex>.mp`, each a concatenation of msgpack arrays `[stream, event_map]`
in publication order. A file is written as `.tmp` and renamed when complete, so a reader never sees
half a file. While the `PENDING` marker exists, producers append to the spool instead of Redis, so
the stream keeps their order; the drainer removes the marker once the spool is empty.

The drainer XADDs each file's events (validated by the codec) and deletes the file only after Redis
confirmed every entry: a crash between the two re-sends the file, and the events' keys let consumers
drop the duplicates. Undecodable records are moved to `bad/`, never silently dropped. Several bridge
processes on one host share the spool: one drains at a time (an flock on `.drain.lock`).
"""

from __future__ import annotations

import asyncio
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
MAX_SPOOL_FILE_BYTES = 64 << 20


def spool_record(stream: str, event: Event) -> bytes:
    packed: bytes = msgpack.packb([stream, codec.to_wire(event)], use_bin_type=True)
    return packed


def write_spool(spool_dir: Path, records: list[bytes]) -> Path:
    """Append one file of records to the spool and raise the PENDING marker (order matters)."""
    (spool_dir / PENDING).touch()
    name = f"{time.time_ns() // 1000:016d}-{secrets.randbits(32):08x}"
    tmp = spool_dir / f"{name}.tmp"
    with open(tmp, "wb") as f:
        f.write(b"".join(records))
        f.flush()
        os.fsync(f.fileno())
    final = tmp.with_suffix(".mp")
    os.replace(tmp, final)
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
        try:
            return sorted(p for p in self.spool_dir.iterdir() if p.suffix == ".mp")
        except FileNotFoundError:
            return []

    def _records(self, path: Path) -> tuple[list[tuple[str, Event]], int]:
        good: list[tuple[str, Event]] = []
        bad = 0
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=MAX_SPOOL_FILE_BYTES)
        with open(path, "rb") as f:
            unpacker.feed(f.read(MAX_SPOOL_FILE_BYTES))
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
                if not marker.exists():
                    return published
                # Lower the marker, then look again: a producer that saw it up may have written since.
                marker.unlink(missing_ok=True)
                files = self._files()
                if not files:
                    return published
            for path in files:
                published += await self._drain_file(path)

    async def _drain_file(self, path: Path) -> int:
        records, bad = self._records(path)
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
