"""
Tests for the C{Site} (L{mission_control.web.site}) over real sockets: the tree it serves, the
headers of every response, failures without tracebacks, the request-head deadline and kept-alive
connections.  Its parts have their own: tests/test_web_channel.py, tests/test_web_resources.py,
tests/test_web_redaction.py, tests/test_web_responses.py.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest
from twisted.web import resource

from tests.helpers import SilentPeer, http_request, raw_request, start_server


class SiteTests(unittest.TestCase):
    def setUp(self):
        self.server = start_server(self)

    def get(self, path, method="GET", **kwargs):
        return raw_request(self.server.port, http_request(method, path, **kwargs))

    @defer.inlineCallbacks
    def test_root(self):
        """GET / is the dashboard's page (tests/test_web_dashboard.py has the rest of it)."""
        response = yield self.get("/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertIn("frame-ancestors 'none'", response.headers["content-security-policy"])

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
        slow = SilentPeer(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
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
