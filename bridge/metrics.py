"""Prometheus metrics of one bridge process, served at /metrics (text exposition format).

One registry per app (not the library's global one), so several apps in one process (tests) do
not collide. Names follow Prometheus conventions: `mailbridge_` prefix, base units, `_total` counters.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class LostEvents(Collector):
    """Events that neither Redis nor the spool took, by stream. Counted elsewhere (the producers'
    Redis hash, Dovecot's statistics) and set here at each scrape, so a counter kept as values."""

    def __init__(self) -> None:
        self.by_stream: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "mailbridge_events_lost",
            "Events neither published nor spooled (Redis down and the spool unwritable), by stream",
            labels=["stream"],
        )
        for stream, value in sorted(self.by_stream.items()):
            family.add_metric([stream], value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sockets = Gauge("mailbridge_sockets_connected", "Socket.IO connections open", registry=self.registry)
        self.events_relayed = Counter(
            "mailbridge_events_relayed_total", "Browser events emitted, by name", ["event"], registry=self.registry
        )
        self.relay_latency = Histogram(
            "mailbridge_relay_latency_seconds",
            "From the producer's timestamp to the emit, per ingest event",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.stream_lag = Gauge(
            "mailbridge_stream_lag_entries",
            "Entries not yet read by a consumer group (XINFO GROUPS lag)",
            ["stream", "group"],
            registry=self.registry,
        )
        self.slow_sockets_dropped = Counter(
            "mailbridge_slow_sockets_dropped_total",
            "Sockets dropped for not reading their events (over BRIDGE_SOCKET_MAX_QUEUED packets waiting)",
            registry=self.registry,
        )
        self.fanout_gaps = Counter(
            "mailbridge_fanout_gaps_total",
            "Times this node replayed events it missed on an account's channel from the account's resume log",
            registry=self.registry,
        )
        self.fanout_messages = Counter(
            "mailbridge_fanout_messages_total",
            "Browser events this node received on the channels of accounts with a socket here",
            registry=self.registry,
        )
        self.fanout_watched = Gauge(
            "mailbridge_fanout_watched_accounts",
            "Accounts whose channel this node listens to (those with a socket here)",
            registry=self.registry,
        )
        self.events_lost = LostEvents()
        self.registry.register(self.events_lost)
        self.dovecot_metrics_up = Gauge(
            "mailbridge_dovecot_metrics_up",
            "1 when Dovecot's statistics (the hook's lost events) answered this scrape",
            registry=self.registry,
        )
        self.pushes = Counter(
            "mailbridge_pushes_total",
            "Web Push notices, by result: sent, gone (the push service said 404/410: dropped), failed"
            " (given up), retried, dropped (the queue was full)",
            ["result"],
            registry=self.registry,
        )
        self.sends = Counter("mailbridge_sends_total", "Mails submitted, by result", ["result"], registry=self.registry)
