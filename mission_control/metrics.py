# -*- test-case-name: tests.test_metrics -*-
"""
What one hub process counts, for C{GET /metrics} in the Prometheus text format.

A L{Metrics} owns its own C{CollectorRegistry} and its instruments, all named
C{mission_control_*}.  It is not the library's global registry: a process may hold several hubs
(the tests build hundreds), and each must count only its own.  The tap makes one and hands it to
the hub; the hub's parts, the WebSocket factory and protocol and the API reach it through the
hub (C{hub.metrics}).  docs/http-api.md lists every metric, its labels and what it means.

The counting stays off the per-connection path: the fan-out counts one increment per event,
however many connections it reaches (L{Metrics.delivered}), and the open connections are not
counted at all but read from the hub when scraped (L{Metrics.watch_connections}), so the gauge
cannot drift from the registry of connections.  A dropped delivery or a slow consumer's close is
counted where it happens, which is per connection but never the common case.

For the shared store on Redis, two hooks (a node's L{mission_control.cluster.shared} calls
them; nothing else does):

  - L{Metrics.redis_roundtrip}C{(seconds)}: one round trip through Redis: the node's canary,
    from its PUBLISH to its delivery through the node's own subscription (the path every
    event takes); observed into C{mission_control_redis_roundtrip_seconds};
  - L{Metrics.redis_reconnected}C{()}: the subscription was made again after it was lost,
    counted in C{mission_control_redis_reconnects_total}.

It imports nothing but C{prometheus_client}, nothing of the hub, so anything may import it.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

#: The content type of L{Metrics.render}: the Prometheus text format 0.0.4, which every
#: Prometheus (and every scraper that speaks it) reads.  (C{prometheus_client}'s
#: C{CONTENT_TYPE_LATEST} names format 1.0.0 in 0.26; the bytes are the same for our names.)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: C{outcome} of C{mission_control_handshakes_total}: accepted, or why it was refused.
HANDSHAKE_OUTCOMES = (
    "accepted", "unauthorized", "forbidden", "too_many", "full", "shutting_down", "bad_request",
    "not_found", "method_not_allowed", "upgrade_required", "internal_error", "other",
)
#: Refusals by HTTP status (503 is told apart by its reason: see L{handshake_outcome}).
_OUTCOME_OF_STATUS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 426: "upgrade_required", 429: "too_many",
    500: "internal_error",
}
#: C{what} of C{mission_control_rate_limited_total}.
RATE_LIMITED = ("message", "publish", "handshake", "read")
#: C{reason} of C{mission_control_deliveries_dropped_total}.
DROP_REASONS = ("slow_consumer", "closing")
#: C{outcome} of C{mission_control_resumes_total}: the C{reason} of a C{resumed} frame that
#: says C{recovered: false} (L{mission_control.replay}), or C{recovered}.
RESUME_OUTCOMES = ("recovered", "epoch", "ahead", "too_old")
#: C{type} of C{mission_control_events_published_total}: the stored event types.
EVENT_TYPES = ("agent:status", "session:activity")

#: Seconds: from about 100 us (a local store) to the seconds of a backbone that is failing.
APPEND_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds: a Redis round trip is tens of microseconds on one machine, milliseconds across.
REDIS_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0)


def handshake_outcome(status: int, reason: str = "") -> str:
    """
    The C{outcome} label of a refused handshake: by its status, and for a 503 by its reason
    (C{shutting_down}, else C{full}: the hub is at C{--max-connections}).
    """
    if status == 503:
        return "shutting_down" if reason == "shutting down" else "full"
    return _OUTCOME_OF_STATUS.get(status, "other")


class Metrics:
    """
    The instruments of one hub process, in a registry of their own.

    @ivar registry: what L{render} exposes (and what a test reads).
    @ivar timer: seconds, for durations (C{time.perf_counter}: monotonic); tests replace it.
    """

    def __init__(self, timer: Callable[[], float] = time.perf_counter,
                 process: bool = True) -> None:
        """
        @param process: also expose the process's own C{process_*} metrics (CPU, memory, open
            files against their limit), as the library's global registry would.
        """
        self.timer = timer
        self.registry = registry = CollectorRegistry()
        self.connections = Gauge(
            "mission_control_connections",
            "WebSocket connections registered on this node (open, or catching up).",
            registry=registry)
        self.handshakes = Counter(
            "mission_control_handshakes",
            "WebSocket handshakes, by outcome: accepted, or the refusal's kind.",
            ["outcome"], registry=registry)
        self.events_published = Counter(
            "mission_control_events_published",
            "Events this node stored as new (idempotent repeats not counted), by type.",
            ["type"], registry=registry)
        self.deliveries = Counter(
            "mission_control_deliveries",
            "Frames the live fan-out handed to connections (one per connection per event).",
            registry=registry)
        self.deliveries_dropped = Counter(
            "mission_control_deliveries_dropped",
            "Fan-out frames handed to a connection and never written to it, by reason.",
            ["reason"], registry=registry)
        self.slow_consumer_closes = Counter(
            "mission_control_slow_consumer_closes",
            "Connections closed with 4008 for passing --max-outbound-bytes.",
            registry=registry)
        self.rate_limited = Counter(
            "mission_control_rate_limited",
            "Refusals for going past a rate: WebSocket messages, HTTP publishes and reads, "
            "handshakes.",
            ["what"], registry=registry)
        self.store_append_seconds = Histogram(
            "mission_control_store_append_seconds",
            "Appends to the broker, from the call until its Deferred fires (stored and fanned "
            "out), in seconds.",
            buckets=APPEND_BUCKETS, registry=registry)
        self.resumes = Counter(
            "mission_control_resumes",
            "Resumes answered with a resumed frame, by outcome.",
            ["outcome"], registry=registry)
        self.redis_roundtrip_seconds = Histogram(
            "mission_control_redis_roundtrip_seconds",
            "Redis commands, from sending to the reply, in seconds.",
            buckets=REDIS_BUCKETS, registry=registry)
        self.redis_reconnects = Counter(
            "mission_control_redis_reconnects",
            "Connections to Redis made again after one was lost.",
            registry=registry)
        # Every known label value from the start, at 0: a series that appears only on its first
        # event makes rate() and alerts miss that event.
        for labelled, values in ((self.handshakes, HANDSHAKE_OUTCOMES),
                                 (self.events_published, EVENT_TYPES),
                                 (self.deliveries_dropped, DROP_REASONS),
                                 (self.rate_limited, RATE_LIMITED),
                                 (self.resumes, RESUME_OUTCOMES)):
            for value in values:
                labelled.labels(value)
        # The children counted per event, looked up once.
        self._published = {name: self.events_published.labels(name) for name in EVENT_TYPES}
        if process:
            ProcessCollector(registry=registry)

    # Reading

    def render(self) -> bytes:
        """Everything, in the Prometheus text format (L{CONTENT_TYPE})."""
        return generate_latest(self.registry)

    def watch_connections(self, count: Callable[[], float]) -> None:
        """Read the connections gauge from C{count()} at every scrape (the node's registry)."""
        self.connections.set_function(count)

    # Counting

    def handshake(self, outcome: str) -> None:
        """One handshake, accepted or refused (L{handshake_outcome})."""
        self.handshakes.labels(outcome).inc()

    def published(self, event_type: str, count: int = 1) -> None:
        """C{count} events of C{event_type} stored as new by this node."""
        child = self._published.get(event_type)
        if child is None:
            child = self._published[event_type] = self.events_published.labels(event_type)
        child.inc(count)

    def delivered(self, count: int) -> None:
        """One event fanned out to C{count} connections: one increment, whatever C{count}."""
        self.deliveries.inc(count)

    def dropped(self, reason: str, count: int = 1) -> None:
        """C{count} fan-out frames a connection will never write (L{DROP_REASONS})."""
        self.deliveries_dropped.labels(reason).inc(count)

    def slow_consumer_closed(self) -> None:
        """A connection was closed with 4008: too slow."""
        self.slow_consumer_closes.inc()

    def refused_rate(self, what: str) -> None:
        """One refusal for going past a rate (L{RATE_LIMITED})."""
        self.rate_limited.labels(what).inc()

    def resumed(self, outcome: str) -> None:
        """A resume answered (L{RESUME_OUTCOMES})."""
        self.resumes.labels(outcome).inc()

    def appended(self, started: float) -> None:
        """
        An append to the broker was answered (stored, or failed): observe the time since
        C{started}, a reading of L{timer} taken just before it was called.  The caller calls it
        from the callback it already has on the append's Deferred: one more callback per append
        would cost more than the observation.
        """
        self.store_append_seconds.observe(self.timer() - started)

    # Hooks for the Redis client

    def redis_roundtrip(self, seconds: float) -> None:
        """One Redis command answered C{seconds} after it was sent."""
        self.redis_roundtrip_seconds.observe(seconds)

    def redis_reconnected(self) -> None:
        """A connection to Redis was made again after one was lost."""
        self.redis_reconnects.inc()
