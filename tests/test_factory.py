"""
Tests for L{mission_control.factory}: who is let through a handshake (Origins, the hub's caps),
end to end over loopback sockets.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import (
    bearer,
    connect,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


class OriginTests(unittest.TestCase):
    """The Origin allow-list."""

    def setUp(self):
        self.server = start_server(self, ["--allowed-origin", "https://mc.example.com"])

    @defer.inlineCallbacks
    def test_origin(self):
        """A listed Origin (with or without its default port) passes; others get 403."""
        token = self.server.token()
        for origin in ("https://mc.example.com", "https://MC.example.com:443"):
            response = yield raw_handshake(
                self.server.port, upgrade_request(headers={**bearer(token), "Origin": origin}))
            self.assertEqual(response.status, 101, origin)
        for origin in ("https://evil.example.com", "http://mc.example.com", "null"):
            response = yield raw_request(
                self.server.port, upgrade_request(headers={**bearer(token), "Origin": origin}))
            self.assertEqual((response.status, response.reason), (403, "origin not allowed"))
        yield wait_until(lambda: self.server.hub.connection_count == 0)


class ConnectionCapTests(unittest.TestCase):
    """Connection caps answer at the handshake."""

    @defer.inlineCallbacks
    def test_per_user_cap(self):
        """The user's next handshake past --max-connections-per-user gets 429; others still pass."""
        server = start_server(self, ["--max-connections-per-user", "2"])
        for _ in range(2):
            yield connect(self, server, server.token("alice"))
        response = yield raw_request(server.port,
                                     upgrade_request(headers=bearer(server.token("alice"))))
        self.assertEqual(response.status, 429)
        yield connect(self, server, server.token("bob"))

    @defer.inlineCallbacks
    def test_total_cap(self):
        """Past --max-connections every new handshake gets 503."""
        server = start_server(self, ["--max-connections", "2"])
        yield connect(self, server, server.token("a"))
        yield connect(self, server, server.token("b"))
        response = yield raw_request(server.port,
                                     upgrade_request(headers=bearer(server.token("c"))))
        self.assertEqual(response.status, 503)
