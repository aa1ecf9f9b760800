"""
Tests for L{mission_control.web.resources}: the health check, the root's JSON 404 and the check
of what a WebSocket handshake may carry to Autobahn (tests/test_hardening_http.py has the
smuggling attempts over real sockets).
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from mission_control.web.resources import Health, JSONErrorResource, Root, handshake_problem
from tests.helpers import http_request, raw_request, start_server


class HealthTests(unittest.TestCase):
    """GET /healthz through the whole site."""

    def setUp(self):
        self.server = start_server(self)

    def get(self, path, method="GET", **kwargs):
        return raw_request(self.server.port, http_request(method, path, **kwargs))

    @defer.inlineCallbacks
    def test_healthz(self):
        """GET /healthz answers 200 {"status": "ok"} without a token."""
        response = yield self.get("/healthz")
        self.assertEqual((response.status, response.json()), (200, {"status": "ok"}))

    @defer.inlineCallbacks
    def test_wrong_method_on_health(self):
        """POST /healthz is 405 with Allow."""
        response = yield self.get("/healthz", method="POST", body={})
        self.assertEqual((response.status, response.headers["allow"]), (405, "GET, HEAD"))


class HealthUnitTests(unittest.SynchronousTestCase):
    """L{Health} on its own: what it answers, serving and stopping."""

    def render(self, resource, method=b"GET"):
        request = DummyRequest([b""])
        request.method = method
        body = resource.render(request)
        return request, body

    def test_serving_and_stopping(self):
        """
        200 {"status": "ok"} while serving, 503 with the reason as the status ("starting",
        "stopping") while it cannot; never cached.
        """
        problem = [None]
        health = Health(lambda: problem[0])
        request, body = self.render(health)
        self.assertEqual((request.responseCode or 200, json.loads(body)), (200, {"status": "ok"}))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        for reason in ("starting", "stopping"):
            problem[0] = reason
            request, body = self.render(health)
            self.assertEqual((request.responseCode, json.loads(body)), (503, {"status": reason}))

    def test_head_is_allowed(self):
        """HEAD is answered as GET is."""
        request, body = self.render(Health(), b"HEAD")
        self.assertEqual((request.responseCode or 200, json.loads(body)), (200, {"status": "ok"}))


class RootTests(unittest.SynchronousTestCase):
    """The root of the tree: a JSON 404 for whatever it has no child for."""

    def test_unknown_child(self):
        """An unknown path is a JSON 404 not_found, whatever the method."""
        for method in (b"GET", b"POST", b"DELETE"):
            request = DummyRequest([b"nope"])
            request.method = method
            child = Root().getChild(b"nope", request)
            self.assertIsInstance(child, JSONErrorResource)
            body = child.render(request)
            self.assertEqual(request.responseCode, 404)
            self.assertEqual(json.loads(body)["error"]["code"], "not_found")
            self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                             [b"application/json"])

    def test_root_itself(self):
        """Rendering the root directly (not through a site) is the same JSON 404."""
        request = DummyRequest([])
        body = Root().render(request)
        self.assertEqual((request.responseCode, json.loads(body)["error"]["code"]),
                         (404, "not_found"))


class HandshakeProblemTests(unittest.SynchronousTestCase):
    """L{handshake_problem}: what must not reach Autobahn's re-reading of the handshake."""

    def request(self, *headers):
        request = DummyRequest([b"ws"])
        request.method = b"GET"
        request.uri = b"/ws"
        for name, value in headers:
            request.requestHeaders.addRawHeader(name, value)
        return request

    def test_ordinary_handshake(self):
        """An ordinary handshake, Latin-1 values included, has no problem."""
        request = self.request((b"Host", b"x"), (b"Origin", b"https://mc.example"),
                               (b"X-Note", "caf\xe9".encode("latin-1")))
        self.assertIsNone(handshake_problem(request))

    def test_duplicate_single_header(self):
        """A second Authorization, Host, Origin or Sec-WebSocket-Key is a duplicate header."""
        for name in (b"Authorization", b"Host", b"Origin", b"Sec-WebSocket-Key"):
            request = self.request((name, b"a"), (name, b"b"))
            self.assertEqual(handshake_problem(request), "duplicate header", name)

    def test_line_splitting_characters(self):
        """A value that str.splitlines() would split is a malformed header."""
        for character in (b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\x85"):
            request = self.request((b"X-Note", b"a" + character + b"authorization: Bearer x"))
            self.assertEqual(handshake_problem(request), "malformed header", character)


class HealthDuringShutdownTests(unittest.TestCase):
    """The health check tells a load balancer to stop sending clients."""

    @defer.inlineCallbacks
    def test_stopping(self):
        """Once the hub stops accepting, /healthz answers 503 {"status": "stopping"}."""
        server = start_server(self)
        server.hub.stop()
        response = yield raw_request(server.port, http_request("GET", "/healthz"))
        self.assertEqual((response.status, response.json()), (503, {"status": "stopping"}))
