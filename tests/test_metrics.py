"""
Tests for L{mission_control.metrics}: the instruments of one hub process, each L{Metrics} in a
registry of its own; and what the hub counts with them, on a L{Clock} with fake connections:
connections read when scraped, one increment per fanned-out event, publishes and the time of
their appends, rate refusals and resume outcomes.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from mission_control.auth import Refusal
from mission_control.hub import ConnectRequest, Hub
from mission_control.metrics import (
    CONTENT_TYPE,
    DROP_REASONS,
    EVENT_TYPES,
    HANDSHAKE_OUTCOMES,
    RATE_LIMITED,
    RESUME_OUTCOMES,
    Metrics,
    handshake_outcome,
)
from mission_control.store import MemoryStore, Retention
from tests.hubfakes import DeferredBroker, FakeConnection, HubTestCase


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of the sample C{name} (its full name, C{_total} and all) as scraped."""
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


class _Timer:
    """A timer the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class MetricsTests(SynchronousTestCase):
    """A L{Metrics} alone: its names, its labels, its registry and its hooks."""

    def setUp(self):
        self.timer = _Timer()
        self.metrics = Metrics(timer=self.timer)

    def value(self, name, **labels):
        return sample(self.metrics, name, **labels)

    def test_names_and_types(self):
        """Every instrument is exposed under its mission_control_* name with its type."""
        families = {f.name: f.type for f in
                    text_string_to_metric_families(self.metrics.render().decode("utf-8"))
                    if f.name.startswith("mission_control_") and not f.name.endswith("_created")}
        self.assertEqual(families, {
            "mission_control_connections": "gauge",
            "mission_control_handshakes": "counter",
            "mission_control_events_published": "counter",
            "mission_control_deliveries": "counter",
            "mission_control_deliveries_dropped": "counter",
            "mission_control_slow_consumer_closes": "counter",
            "mission_control_rate_limited": "counter",
            "mission_control_store_append_seconds": "histogram",
            "mission_control_resumes": "counter",
            "mission_control_redis_roundtrip_seconds": "histogram",
            "mission_control_redis_reconnects": "counter",
        })

    def test_known_labels_start_at_zero(self):
        """Every known label value is exposed at 0 before anything happened."""
        for name, label, values in (
                ("mission_control_handshakes_total", "outcome", HANDSHAKE_OUTCOMES),
                ("mission_control_events_published_total", "type", EVENT_TYPES),
                ("mission_control_deliveries_dropped_total", "reason", DROP_REASONS),
                ("mission_control_rate_limited_total", "what", RATE_LIMITED),
                ("mission_control_resumes_total", "outcome", RESUME_OUTCOMES)):
            for value in values:
                self.assertEqual(self.value(name, **{label: value}), 0.0, (name, value))
        self.assertEqual(self.value("mission_control_deliveries_total"), 0.0)

    def test_registries_are_separate(self):
        """Two Metrics count apart, and neither touches the library's global registry."""
        from prometheus_client import REGISTRY

        other = Metrics(process=False)
        self.metrics.delivered(3)
        self.assertEqual(self.value("mission_control_deliveries_total"), 3.0)
        self.assertEqual(sample(other, "mission_control_deliveries_total"), 0.0)
        self.assertIsNone(REGISTRY.get_sample_value("mission_control_deliveries_total"))

    def test_process_metrics(self):
        """The process's own metrics are exposed too, unless asked not to be."""
        self.assertIsNotNone(self.value("process_open_fds"))
        self.assertIsNone(sample(Metrics(process=False), "process_open_fds"))

    def test_connections_read_when_scraped(self):
        """The connections gauge is what the watched function says at each scrape."""
        count = [2]
        self.metrics.watch_connections(lambda: count[0])
        self.assertEqual(self.value("mission_control_connections"), 2.0)
        count[0] = 7
        self.assertEqual(self.value("mission_control_connections"), 7.0)

    def test_counting(self):
        """Each counting method adds to its own series."""
        m = self.metrics
        m.handshake("accepted")
        m.handshake("accepted")
        m.handshake("unauthorized")
        m.published("agent:status", 2)
        m.published("session:activity")
        m.delivered(1000)
        m.dropped("closing", 3)
        m.slow_consumer_closed()
        m.refused_rate("read")
        m.resumed("too_old")
        self.assertEqual(self.value("mission_control_handshakes_total", outcome="accepted"), 2)
        self.assertEqual(self.value("mission_control_handshakes_total", outcome="unauthorized"), 1)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="agent:status"), 2)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="session:activity"), 1)
        self.assertEqual(self.value("mission_control_deliveries_total"), 1000)
        self.assertEqual(self.value("mission_control_deliveries_dropped_total",
                                    reason="closing"), 3)
        self.assertEqual(self.value("mission_control_slow_consumer_closes_total"), 1)
        self.assertEqual(self.value("mission_control_rate_limited_total", what="read"), 1)
        self.assertEqual(self.value("mission_control_resumes_total", outcome="too_old"), 1)

    def test_appended_observes_the_time_since_the_call(self):
        """An answered append is observed as the time since the reading taken before it."""
        started = self.timer()
        self.timer.now += 0.003
        self.metrics.appended(started)
        self.assertEqual(self.value("mission_control_store_append_seconds_count"), 1)
        self.assertAlmostEqual(self.value("mission_control_store_append_seconds_sum"), 0.003)
        self.assertEqual(self.value("mission_control_store_append_seconds_bucket", le="0.0025"),
                         0)
        self.assertEqual(self.value("mission_control_store_append_seconds_bucket", le="0.005"), 1)

    def test_redis_hooks(self):
        """The Redis client's hooks observe a round trip and count a reconnect."""
        self.metrics.redis_roundtrip(0.0004)
        self.metrics.redis_reconnected()
        self.assertEqual(self.value("mission_control_redis_roundtrip_seconds_count"), 1)
        self.assertEqual(self.value("mission_control_redis_roundtrip_seconds_bucket",
                                    le="0.0005"), 1)
        self.assertEqual(self.value("mission_control_redis_roundtrip_seconds_bucket",
                                    le="0.00025"), 0)
        self.assertEqual(self.value("mission_control_redis_reconnects_total"), 1)

    def test_content_type(self):
        """The content type is the text format 0.0.4, which every Prometheus reads."""
        self.assertEqual(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")

    def test_handshake_outcomes(self):
        """A refused handshake's outcome follows its status, and a 503 its reason."""
        cases = {
            (401, "invalid token"): "unauthorized",
            (403, "origin not allowed"): "forbidden",
            (429, "too many handshakes"): "too_many",
            (429, "too many connections for this user"): "too_many",
            (503, "shutting down"): "shutting_down",
            (503, "too many connections"): "full",
            (400, "Bad Request"): "bad_request",
            (404, "not found"): "not_found",
            (426, "Upgrade Required"): "upgrade_required",
            (500, "internal error"): "internal_error",
            (418, "I'm a teapot"): "other",
        }
        for (status, reason), outcome in cases.items():
            self.assertEqual(handshake_outcome(status, reason), outcome)
            self.assertIn(outcome, HANDSHAKE_OUTCOMES)


class HubCountingTests(HubTestCase):
    """What the hub counts in its L{Metrics}, as it works."""

    def setUp(self):
        super().setUp()
        self.metrics = self.hub.metrics

    def value(self, name, **labels):
        return sample(self.metrics, name, **labels)

    def test_default_metrics_of_its_own(self):
        """A hub built without metrics has its own; one given them counts there."""
        metrics = Metrics(process=False)
        hub = Hub(self.clock, MemoryStore(), metrics=metrics)
        self.assertIs(hub.metrics, metrics)
        self.assertIsNot(self.hub.metrics, metrics)

    def test_connections_follow_the_registry(self):
        """The connections gauge is the registry's count whenever scraped: it cannot drift."""
        self.assertEqual(self.value("mission_control_connections"), 0)
        a, b = self.connect("a"), self.connect("b")
        self.assertEqual(self.value("mission_control_connections"), 2)
        self.hub.unregister(a)
        self.hub.unregister(a)  # twice: still one connection gone
        self.assertEqual(self.value("mission_control_connections"), 1)
        self.hub.unregister(b)
        self.assertEqual(self.value("mission_control_connections"), 0)

    def test_one_increment_per_event_fanned_out(self):
        """
        An event fanned out to three connections counts three deliveries, in one increment:
        the count is never taken per connection.
        """
        conns = [self.connect(f"u{i}") for i in range(3)]
        increments = []
        original = self.metrics.deliveries.inc

        def inc(amount=1):
            increments.append(amount)
            original(amount)

        self.patch(self.metrics.deliveries, "inc", inc)
        self.publish(1)
        self.assertEqual(increments, [3])
        self.assertEqual(self.value("mission_control_deliveries_total"), 3)
        self.assertTrue(all(c.delivered for c in conns))

    def test_no_targets_no_count(self):
        """An event nobody receives counts no delivery."""
        self.publish(1)
        self.assertEqual(self.value("mission_control_deliveries_total"), 0)

    def test_published_by_type_and_repeats_not_counted(self):
        """
        Events stored as new count by type, a batch each of its events; an idempotent repeat
        counts nothing.
        """
        op = self.principal()
        self.publish_for(op, "agent:status", {"status": "busy"}, "a1", "k1", "f")
        self.publish_for(op, "agent:status", {"status": "busy"}, "a1", "k1", "f")
        self.publish_many(op, [
            {"type": "agent:status", "payload": {"agentId": "a2", "status": "idle"}},
            {"type": "session:activity",
             "payload": {"sessionId": "s1", "activity": "started"}},
        ])
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="agent:status"), 2)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="session:activity"), 1)
        self.assertEqual(self.value("mission_control_store_append_seconds_count"), 3)

    def test_append_timed_until_the_broker_answers(self):
        """
        The time of an append runs from the call until the broker's Deferred fires, through a
        broker that answers late; the event counts once it is stored, not before.
        """
        timer = _Timer()
        self.metrics.timer = timer
        broker = DeferredBroker.around(self, self.hub)
        d = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        timer.now += 0.2
        self.assertEqual(self.value("mission_control_store_append_seconds_count"), 0)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="agent:status"), 0)
        broker.fire()
        self.successResultOf(d)
        self.assertAlmostEqual(self.value("mission_control_store_append_seconds_sum"), 0.2)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="agent:status"), 1)

    def test_failed_append_timed_not_counted(self):
        """An append that fails is timed, and counts no event."""
        broker = DeferredBroker.around(self, self.hub)
        d = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        broker.fail(RuntimeError("backbone down"))
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.value("mission_control_store_append_seconds_count"), 1)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="agent:status"), 0)

    def test_websocket_publishes_counted_per_group(self):
        """
        Publishes over the WebSocket count each event their group stored, and one append time
        per group.
        """
        conn = self.connect("op", "operator")
        for i in range(3):
            frame = {"type": "publish", "id": f"p{i}",
                     "event": {"type": "agent:status",
                               "payload": {"agentId": f"a{i}", "status": "busy"}}}
            self.hub.handle_frame(conn, json.dumps(frame).encode(), False)
        self.clock.advance(0)
        self.assertEqual(conn.types().count("published"), 3)
        self.assertEqual(self.value("mission_control_events_published_total",
                                    type="agent:status"), 3)
        self.assertEqual(self.value("mission_control_store_append_seconds_count"), 1)

    def test_messages_past_the_rate(self):
        """Each message refused for the connection's rate counts once."""
        conn = self.connect()
        replies = [self.hub.handle_frame(conn, b'{"type":"ping"}', False)["type"]
                   for _ in range(6)]
        self.assertEqual(replies.count("error"), 2)
        self.assertEqual(self.value("mission_control_rate_limited_total", what="message"), 2)

    def test_handshakes_past_the_rate(self):
        """A handshake refused for the user's handshake rate counts as rate limited."""
        hub = Hub(self.clock, MemoryStore(), handshake_rate=1, handshake_burst=1)
        principal = self.principal("alice", "viewer")
        hub.admit(principal)
        self.assertRaises(Refusal, hub.admit, principal)
        self.assertEqual(sample(hub.metrics, "mission_control_rate_limited_total",
                                what="handshake"), 1)

    def test_resume_outcomes(self):
        """
        Each resumed frame counts its outcome: recovered, or the reason it could not be
        (another epoch, a seq ahead of the history, one older than it).
        """
        self.publish(3)
        epoch = self.hub.store.epoch
        self.connect("a", request=ConnectRequest(since=1, epoch=epoch))
        self.connect("b", request=ConnectRequest(since=1, epoch="0" * 16))
        self.connect("c", request=ConnectRequest(since=9, epoch=epoch))
        self.connect("d")  # no resume: a snapshot, not counted
        hub = Hub(self.clock, MemoryStore(Retention(max_events=3)))
        for _ in range(10):
            self.successResultOf(
                hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1"))
        hub.store.trim(self.clock.seconds())
        hub.register(FakeConnection(), ConnectRequest(since=2, epoch=hub.store.epoch))
        counts = {outcome: self.value("mission_control_resumes_total", outcome=outcome)
                  for outcome in RESUME_OUTCOMES}
        self.assertEqual(counts, {"recovered": 1, "epoch": 1, "ahead": 1, "too_old": 0})
        self.assertEqual(sample(hub.metrics, "mission_control_resumes_total",
                                outcome="too_old"), 1)

    def test_render_is_text(self):
        """What the hub's metrics render is the text format, parsed by Prometheus's parser."""
        self.connect()
        self.publish(1)
        text = self.metrics.render().decode("utf-8")
        names = {f.name for f in text_string_to_metric_families(text)}
        self.assertIn("mission_control_deliveries", names)
        self.assertTrue(text.endswith("\n"))
