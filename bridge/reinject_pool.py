"""SMTP connections to Postfix's re-injection smtpd, kept open between mails.

A new connection per mail costs Postfix a smtpd process hand-over and the filter a connect, the
banner, EHLO and QUIT: four round trips on a machine that is busiest exactly when mail comes fast.
A finished transaction leaves the connection ready for the next MAIL FROM (RFC 5321 4.1.4), so a
connection goes back to the pool after a clean one, and is closed after anything else: an error
leaves the session in a state we do not guess at. An idle connection is used again only while
younger than `idle_s` (well under smtpd's own timeout, Postfix's smtpd_timeout, 300 s) and still
open; Postfix closing it (`postfix reload`, max_use) shows as a closed transport and it is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

import aiosmtplib

log = logging.getLogger(__name__)


class ReinjectPool:
    def __init__(
        self, host: str, port: int, *, ehlo_name: str, timeout_s: float, size: int = 50, idle_s: float = 30.0
    ) -> None:
        self.host = host
        self.port = port
        self.ehlo_name = ehlo_name
        self.timeout_s = timeout_s
        self.size = size
        self.idle_s = idle_s
        self._idle: collections.deque[tuple[aiosmtplib.SMTP, float]] = collections.deque()
        self.opened = 0  # connections opened so far (tests and metrics read it)

    async def acquire(self) -> aiosmtplib.SMTP:
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()  # the most recently used: the least likely to be stale
            if client.is_connected and now - since < self.idle_s:
                return client
            await self._close(client)
        # An explicit EHLO name: aiosmtplib's default asks socket.getfqdn(), a blocking resolver
        # call on the event loop.
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout_s,
            start_tls=False,
            local_hostname=self.ehlo_name,
        )
        await client.connect()
        self.opened += 1
        return client

    async def release(self, client: aiosmtplib.SMTP, *, clean: bool) -> None:
        if clean and client.is_connected and len(self._idle) < self.size:
            self._idle.append((client, time.monotonic()))
        else:
            await self._close(client)

    async def close(self) -> None:
        while self._idle:
            client, _ = self._idle.pop()
            await self._close(client)

    @staticmethod
    async def _close(client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            return
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(client.quit(), 2)
        client.close()
