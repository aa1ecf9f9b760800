"""
Tests for L{mission_control.web.metrics}: C{GET /metrics} over real loopback HTTP, on the main
listener (admins only, with the API's JSON errors) and on a C{--metrics-listen} endpoint (no
token, nothing else served), read with Prometheus's own parser after a real hub has worked.
"""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from mission_control.tap import makeService
from mission_control.web.metrics import MetricsListener
from tests.helpers import (
    LogCapture,
    bearer,
    connect,
    free_port,
    http_request,
    parse_options,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by its name and its sorted labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(body: bytes, name: str, **labels: str) -> float | None:
    return samples(body).get((name, tuple(sorted(labels.items()))))


def metrics_port(server) -> int:
    """The port of the server's C{--metrics-listen} listener."""
    (listener,) = [child for child in server.service if isinstance(child, MetricsListener)]
    return listener.port.getHost().port


class AdminMetricsTests(unittest.TestCase):
    """GET /metrics on the main listener: the hub's numbers, for admins only."""

    def setUp(self):
        self.server = start_server(self, ["--store", "memory"])
        self.admin = self.server.token("root", role="admin")

    def get(self, token=None, path="/metrics", method="GET", port=None):
        return raw_request(port or self.server.port, http_request(method, path, token=token))

    @defer.inlineCallbacks
    def scrape(self):
        response = yield self.get(self.admin)
        self.assertEqual(response.status, 200, response.raw)
        return response.body

    @defer.inlineCallbacks
    def test_counts_what_happened(self):
        """
        After a resuming WebSocket with a good token, a handshake with a bad one and a publish,
        an admin reads one connection, one accepted and one unauthorized handshake, one event
        published, its delivery and a recovered resume.
        """
        epoch = self.server.hub.store.epoch
        client = yield connect(self, self.server, self.server.token("alice"),
                               query=f"since=0&epoch={epoch}")
        resumed = yield client.next_of("resumed")
        self.assertTrue(resumed["payload"]["recovered"])
        refused = yield raw_handshake(self.server.port,
                                      upgrade_request(headers=bearer("not-a-token")))
        self.assertEqual(refused.status, 401)
        published = yield raw_request(self.server.port, http_request(
            "POST", "/api/agents/a1/status", {"status": "busy"},
            token=self.server.token("op", role="operator")))
        self.assertEqual(published.status, 200, published.raw)
        yield client.next_of("agent:status")
        body = yield self.scrape()
        self.assertEqual(value(body, "mission_control_connections"), 1)
        self.assertEqual(value(body, "mission_control_handshakes_total", outcome="accepted"), 1)
        self.assertEqual(value(body, "mission_control_handshakes_total",
                               outcome="unauthorized"), 1)
        self.assertEqual(value(body, "mission_control_events_published_total",
                               type="agent:status"), 1)
        self.assertGreaterEqual(value(body, "mission_control_deliveries_total"), 1)
        self.assertEqual(value(body, "mission_control_resumes_total", outcome="recovered"), 1)
        self.assertEqual(value(body, "mission_control_store_append_seconds_count"), 1)

    @defer.inlineCallbacks
    def test_text_format(self):
        """The answer is the Prometheus text format, not cached, naming no library."""
        response = yield self.get(self.admin)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], TEXT_FORMAT)
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertEqual(response.headers["server"], "mission-control")
        self.assertIn(("mission_control_connections", ()), samples(response.body))

    @defer.inlineCallbacks
    def test_head(self):
        """HEAD answers as GET does, without the body."""
        response = yield self.get(self.admin, method="HEAD")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], TEXT_FORMAT)
        self.assertEqual(response.body, b"")

    @defer.inlineCallbacks
    def error(self, status, code, **kwargs):
        response = yield self.get(**kwargs)
        self.assertEqual(response.status, status, response.raw)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.json()["error"]["code"], code)
        self.assertNotIn(b"mission_control_", response.body)
        return response

    @defer.inlineCallbacks
    def test_other_roles_forbidden(self):
        """Operators, viewers and agents get 403 forbidden."""
        for role in ("operator", "viewer", "agent"):
            yield self.error(403, "forbidden", token=self.server.token("x", role=role))

    @defer.inlineCallbacks
    def test_without_a_good_token(self):
        """No token, or a bad one, gets 401 unauthorized with the Bearer challenge."""
        for token in (None, "not-a-token", self.server.token("root", role="admin", ttl=-60)):
            response = yield self.error(401, "unauthorized", token=token)
            self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="mission-control"')

    @defer.inlineCallbacks
    def test_other_methods_and_paths(self):
        """Another method is 405 naming GET and HEAD; a path below /metrics is 404."""
        response = yield self.error(405, "method_not_allowed", token=self.admin, method="POST")
        self.assertEqual(response.headers["allow"], "GET, HEAD")
        yield self.error(404, "not_found", token=self.admin, path="/metrics/x")

    @defer.inlineCallbacks
    def test_reads_are_rate_limited_and_counted(self):
        """A scrape is a read of its user: past the read rate 429, counted as a read refused."""
        server = start_server(self, ["--store", "memory", "--max-reads-per-second", "1"])
        admin = server.token("root", role="admin")
        statuses = []
        for _ in range(3):
            response = yield self.get(admin, port=server.port)
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 200, 429])
        other = yield self.get(server.token("root2", role="admin"), port=server.port)
        self.assertEqual(value(other.body, "mission_control_rate_limited_total", what="read"), 1)

    @defer.inlineCallbacks
    def test_refused_handshakes_by_outcome(self):
        """Handshakes refused for their Origin, or malformed, count under their own outcome."""
        server = start_server(self, ["--store", "memory",
                                     "--allowed-origin", "https://mc.example.com"])
        token = server.token("alice")
        origin = yield raw_handshake(server.port, upgrade_request(
            headers={**bearer(token), "Origin": "https://evil.example.com"}))
        self.assertEqual(origin.status, 403)
        twice = yield raw_handshake(server.port, upgrade_request(
            headers={"Authorization": f"Bearer {token}", "authorization": f"Bearer {token}"}))
        self.assertEqual(twice.status, 400)
        response = yield self.get(server.token("root", role="admin"), port=server.port)
        self.assertEqual(value(response.body, "mission_control_handshakes_total",
                               outcome="forbidden"), 1)
        self.assertEqual(value(response.body, "mission_control_handshakes_total",
                               outcome="bad_request"), 1)
        self.assertEqual(value(response.body, "mission_control_handshakes_total",
                               outcome="accepted"), 0)


class MetricsListenTests(unittest.TestCase):
    """--metrics-listen: a listener of its own that serves GET /metrics without a token."""

    def setUp(self):
        self.log = LogCapture(self)
        self.server = start_server(self, ["--store", "memory",
                                          "--metrics-listen", "tcp:0:interface=127.0.0.1"])
        self.port = metrics_port(self.server)

    @defer.inlineCallbacks
    def test_without_a_token(self):
        """GET /metrics answers the hub's numbers, with no token at all."""
        client = yield connect(self, self.server, self.server.token("alice"))
        yield client.next_of("snapshot")
        response = yield raw_request(self.port, http_request("GET", "/metrics"))
        self.assertEqual(response.status, 200, response.raw)
        self.assertEqual(response.headers["content-type"], TEXT_FORMAT)
        self.assertEqual(value(response.body, "mission_control_connections"), 1)
        self.assertEqual(value(response.body, "mission_control_handshakes_total",
                               outcome="accepted"), 1)

    @defer.inlineCallbacks
    def test_nothing_else(self):
        """Every other path is a JSON 404, the API, the health check and the WebSocket too."""
        for path in ("/", "/healthz", "/api/agents", "/ws", "/metrics/x", "/assets/app.js"):
            response = yield raw_request(self.port, http_request(
                "GET", path, token=self.server.token("root", role="admin")))
            self.assertEqual(response.status, 404, path)
            self.assertEqual(response.json()["error"]["code"], "not_found")
        handshake = yield raw_handshake(self.port, upgrade_request(
            headers=bearer(self.server.token("alice"))))
        self.assertEqual(handshake.status, 404)
        self.assertEqual(self.server.hub.connection_count, 0)

    @defer.inlineCallbacks
    def test_main_listener_still_needs_a_token(self):
        """The main listener keeps its own rule: no token, 401."""
        response = yield raw_request(self.server.port, http_request("GET", "/metrics"))
        self.assertEqual(response.status, 401)

    def test_logged_at_start(self):
        """The start-up log names the metrics URL."""
        self.assertEqual(self.log.matching("mission-control metrics: ",
                                           f"http://127.0.0.1:{self.port}/metrics"),
                         [f"mission-control metrics: http://127.0.0.1:{self.port}/metrics"])

    @defer.inlineCallbacks
    def test_stops_with_the_hub(self):
        """Stopping the service closes the metrics port too."""
        listener = [c for c in self.server.service if isinstance(c, MetricsListener)][0]
        yield self.server.hub.when_empty()
        yield listener.stopService()
        self.assertIsNone(listener.port)
        yield self.assertFailure(raw_request(self.port, http_request("GET", "/metrics")),
                                 error.ConnectionRefusedError)


class MetricsListenStartTests(unittest.TestCase):
    """Whether there is a --metrics-listen listener, and what a taken port does to the start."""

    def test_none_by_default(self):
        """The service has no metrics listener unless asked for one."""
        server = start_server(self, ["--store", "memory"])
        self.assertEqual([c for c in server.service if isinstance(c, MetricsListener)], [])

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """
        A metrics port that is taken stops the start with one "cannot listen" line, and the main
        listener opened before it is closed again.
        """
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        taken_port = taken.getHost().port
        main = free_port()
        options = parse_options(["--store", "memory",
                                 "--listen", f"tcp:{main}:interface=127.0.0.1",
                                 "--metrics-listen", f"tcp:{taken_port}:interface=127.0.0.1"])
        service = makeService(options, reactor=reactor)
        exc = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(len(exc.code.splitlines()), 1, exc.code)
        self.assertIn(f"mission-control: cannot listen on tcp:{taken_port}", exc.code)
        self.assertEqual(service.ports, [])

        def main_is_free():
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", main))
                except OSError:
                    return False
                return True

        yield wait_until(main_is_free)
        service.hub.store.close()
