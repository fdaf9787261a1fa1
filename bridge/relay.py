"""The relay: one read of ingest events (the relay consumer group's) turned into browser events and
published to the fan-out, once per event key.

Each read costs two round trips to Redis: the mails' facts (bridge.mail_facts: the filter's
summaries kept, each delivery matched with its own), then the publish script (bridge.fanout_publish) with one
marker per ingest event key (bridge.redis_keys.relayed). A re-delivered ingest entry (a crash or a
lost reply before XACK, an entry claimed from a dead node, the spool drained twice) is therefore
shown once. The key's marker is written by the same script as the events it stands for, never
before: a publish that failed (a Redis error, a dropped connection, a node killed) leaves no marker
and the entry's retry publishes it, and one that succeeded unheard (a lost reply) is not published
again. The same holds for Web Push: a mail's notice is handed to the sender (`on_new_mail`) by the
one relay whose script published its events first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from bridge import redis_keys
from bridge.browser_events import to_browser
from bridge.fanout_publish import FanoutPublisher, Outgoing
from bridge.mail_facts import MailFacts
from bridge.metrics import Metrics
from bridge.streams import Delivery

log = logging.getLogger(__name__)

# How long an ingest event's key is remembered as relayed: a re-delivery later than this would be
# shown again.
RELAYED_TTL_S = 86400


NewMail = Callable[[str, dict[str, Any]], None]


class Relay:
    def __init__(
        self,
        publisher: FanoutPublisher,
        facts: MailFacts,
        *,
        prefix: str,
        metrics: Metrics,
        on_new_mail: NewMail | None = None,
    ) -> None:
        """`on_new_mail(account, payload)` is called once per new_email this relay published first
        (not for a re-delivered entry whose events were published already): Web Push's hand-off
        (bridge.push_sender), which must not block."""
        self.publisher = publisher
        self.facts = facts
        self.prefix = prefix
        self.metrics = metrics
        self.on_new_mail = on_new_mail

    async def relay(self, deliveries: Sequence[Delivery]) -> None:
        """Relay one read of ingest events (a bridge.streams.Handler), once per key."""
        events = [d.event for d in deliveries]
        outgoing: list[Outgoing] = []
        relayed: list[Delivery] = []  # by marker number - 1
        keys: set[str] = set()
        for delivery, facts in zip(deliveries, await self.facts.remember_and_read(events), strict=True):
            browser_events = to_browser(delivery.event, facts)
            if not browser_events:
                continue
            if delivery.event.key in keys:  # twice in one read: the script would see neither marker
                log.info("[%s %s] duplicate of %s skipped", delivery.stream, delivery.entry_id, delivery.event.key)
                continue
            keys.add(delivery.event.key)
            relayed.append(delivery)
            outgoing += [Outgoing(e.account, e.name, e.payload, marker=len(relayed)) for e in browser_events]
        if not outgoing:
            return
        markers = [(redis_keys.relayed(self.prefix, d.event.key), RELAYED_TTL_S) for d in relayed]
        _ids, fresh = await self.publisher.send(outgoing, markers)
        repeated = {item.marker for item, new in zip(outgoing, fresh, strict=True) if not new}
        now = time.time()
        for number, delivery in enumerate(relayed, start=1):
            if number in repeated:
                log.info("[%s %s] duplicate of %s skipped", delivery.stream, delivery.entry_id, delivery.event.key)
            else:
                self.metrics.relay_latency.observe(max(0.0, now - delivery.event.ts / 1000))
        for item, new in zip(outgoing, fresh, strict=True):
            if new:
                self.metrics.events_relayed.labels(item.name).inc()
                if item.name == "new_email" and self.on_new_mail is not None:
                    self.on_new_mail(item.account, item.payload)
