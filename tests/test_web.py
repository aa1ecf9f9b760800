"""
Tests for the C{Site} (L{mission_control.web.site}): health, the root, headers, failures without
tracebacks, the redacting access log and the request-head deadline.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest
from twisted.web import resource

from mission_control.web.site import access_log_formatter, redact
from tests.helpers import http_request, raw_request, start_server
from tests.test_websocket import _SilentPeer


class SiteTests(unittest.TestCase):
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
    def test_root(self):
        """GET / is the dashboard's page (tests/test_web_dashboard.py has the rest of it)."""
        response = yield self.get("/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertIn("frame-ancestors 'none'", response.headers["content-security-policy"])

    @defer.inlineCallbacks
    def test_wrong_method_on_health(self):
        """POST /healthz is 405 with Allow."""
        response = yield self.get("/healthz", method="POST", body={})
        self.assertEqual((response.status, response.headers["allow"]), (405, "GET, HEAD"))

    @defer.inlineCallbacks
    def test_server_header(self):
        """Every response names only mission-control, never a library or version."""
        for path in ("/", "/healthz", "/nope", "/api/agents"):
            response = yield self.get(path)
            self.assertEqual(response.headers["server"], "mission-control", path)
            self.assertNotIn(b"Twisted", response.raw)

    @defer.inlineCallbacks
    def test_failure_is_json_500_without_traceback(self):
        """An exception inside a resource becomes a JSON 500 that reveals nothing."""

        class Broken(resource.Resource):
            isLeaf = True

            def render(self, request):
                raise RuntimeError("secret internal detail")

        self.server.service.site.resource.putChild(b"broken", Broken())
        response = yield self.get("/broken")
        self.assertEqual(response.status, 500)
        self.assertEqual(response.json()["error"]["code"], "internal_error")
        self.assertNotIn(b"secret internal detail", response.raw)
        self.assertNotIn(b"Traceback", response.raw)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_head_deadline_for_plain_http(self):
        """An HTTP request whose head is not complete in time is dropped."""
        self.server.service.site.handshake_timeout = 0.3
        slow = _SilentPeer(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port), slow)
        started = reactor.seconds()
        yield slow.lost
        self.assertLess(reactor.seconds() - started, 2)

    @defer.inlineCallbacks
    def test_keep_alive_requests(self):
        """Two requests on one kept-alive connection are both answered."""
        request = http_request("GET", "/healthz") + http_request(
            "GET", "/healthz", headers={"Connection": "close"})
        response = yield raw_request(self.server.port, request, close_after=False)
        self.assertEqual(response.raw.count(b"HTTP/1.1 200"), 2)


class AccessLogTests(unittest.SynchronousTestCase):
    """The access log never shows a token from the query string."""

    def test_redact(self):
        """token= values are replaced wherever they are in the query; other values stay."""
        self.assertEqual(redact(b"/ws?token=abc.def&x=1"), b"/ws?token=[redacted]&x=1")
        self.assertEqual(redact(b"/ws?a=1&TOKEN=abc"), b"/ws?a=1&TOKEN=[redacted]")
        self.assertEqual(redact(b"/ws?mytoken=keep"), b"/ws?mytoken=keep")

    def test_formatter(self):
        """The combined-format line carries the redacted URI and Referer."""
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([b"ws"])
        request.uri = b"/ws?token=eyJsecret"
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 401
        request.sentLength = 0
        request.requestHeaders.setRawHeaders(b"referer", [b"https://mc.example/?token=eyJref&a=1"])
        line = access_log_formatter("[27/Nov/2026:00:00:00 +0000]", request)
        self.assertIn("/ws?token=[redacted]", line)
        self.assertIn("https://mc.example/?token=[redacted]&a=1", line)
        self.assertNotIn("eyJsecret", line)
        self.assertNotIn("eyJref", line)


class HealthDuringShutdownTests(unittest.TestCase):
    """The health check tells a load balancer to stop sending clients."""

    @defer.inlineCallbacks
    def test_stopping(self):
        """Once the hub stops accepting, /healthz answers 503 {"status": "stopping"}."""
        server = start_server(self)
        server.hub.stop()
        response = yield raw_request(server.port, http_request("GET", "/healthz"))
        self.assertEqual((response.status, response.json()), (503, {"status": "stopping"}))
