"""
Hardening of the HTTP side of the listener (L{mission_control.web.site}, and the refusals written
by L{mission_control.protocol}): HEAD without a body, and C{nosniff} on every response.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import (
    http_request,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class NosniffTests(unittest.TestCase):
    """Every response says X-Content-Type-Options: nosniff, whoever wrote it."""

    def setUp(self):
        self.server = start_server(self)

    @defer.inlineCallbacks
    def test_twisted_web_responses(self):
        """Resources, JSON errors and the API (200, 404, 405, 401, 413, 400) all say nosniff."""
        token = self.server.token("root", role="admin")
        requests = [
            http_request("GET", "/"),
            http_request("GET", "/healthz"),
            http_request("HEAD", "/healthz"),
            http_request("GET", "/nope"),
            http_request("DELETE", "/"),
            http_request("GET", "/api/agents"),
            http_request("GET", "/api/agents", token=token),
            http_request("POST", "/api/agents/a1/status", b"x" * 70000, token=token),
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ]
        statuses = []
        for request in requests:
            response = yield raw_request(self.server.port, request)
            statuses.append(response.status)
            self.assertEqual(response.headers.get("x-content-type-options"), "nosniff",
                             response.raw[:200])
        self.assertEqual(statuses, [200, 200, 200, 404, 405, 401, 200, 413, 400])

    @defer.inlineCallbacks
    def test_websocket_responses(self):
        """The handshake refusals (401, 426) and the 101 say nosniff too."""
        for request, status in ((upgrade_request(), 401),
                                (http_request("GET", "/ws"), 426)):
            response = yield raw_request(self.server.port, request)
            self.assertEqual(response.status, status)
            self.assertEqual(response.headers.get("x-content-type-options"), "nosniff")
        response = yield raw_handshake(self.server.port,
                                       upgrade_request(headers=bearer(self.server.token())))
        self.assertEqual(response.status, 101)
        self.assertEqual(response.headers.get("x-content-type-options"), "nosniff")
        yield wait_until(lambda: self.server.hub.connection_count == 0)


class HeadTests(unittest.TestCase):
    """HEAD gets a head and no body, on /ws too."""

    @defer.inlineCallbacks
    def test_head_ws_has_no_body(self):
        """HEAD /ws, with or without upgrade headers, is refused with a head only."""
        server = start_server(self)
        for request in (http_request("HEAD", "/ws"),
                        upgrade_request(headers=bearer(server.token())).replace(b"GET", b"HEAD", 1)):
            response = yield raw_request(server.port, request)
            self.assertEqual(response.status, 405)
            self.assertEqual(response.headers["allow"], "GET")
            self.assertEqual(response.body, b"")
