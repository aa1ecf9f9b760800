"""
Tests for L{mission_control.factory}: who is let through a handshake (path, Origin, token, the
hub's caps), end to end over loopback sockets and against the factory alone, and the Autobahn
options it sets.
"""

from __future__ import annotations

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mission_control import tokens
from mission_control.auth import OriginPolicy, Refusal, TokenVerifier
from mission_control.factory import MAX_FRAGMENTS, HubServerFactory
from mission_control.hub import Hub
from mission_control.protocol import HubServerProtocol
from mission_control.store import MemoryStore
from tests.helpers import (
    bearer,
    connect,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)
from tests.hubfakes import FakeConnection

SECRET = b"k" * 32
NOW = 1_800_000_000.0


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


class _PreparedConnection(FakeConnection):
    """A fake connection of a hub whose frames the factory prepares (encoded once, framed)."""

    def deliver(self, prepared):
        super().deliver(prepared.payload)


class _Request:
    """What the factory reads of Autobahn's ConnectionRequest."""

    def __init__(self, path="/ws", headers=None, params=None):
        self.path = path
        self.headers = headers or {}
        self.params = params or {}


class AdmitTests(unittest.SynchronousTestCase):
    """The factory's decision on a handshake, without sockets."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        verifier = TokenVerifier(key=SECRET, algorithms=["HS256"])
        self.hub = Hub(self.clock, MemoryStore(), heartbeat_interval=30, max_connections=5,
                       max_connections_per_user=1, verifier=verifier)
        self.factory = HubServerFactory(self.hub, verifier,
                                        origins=OriginPolicy(["https://mc.example.com"]),
                                        reactor=self.clock)

    def headers(self, sub="alice", **extra):
        token = tokens.mint_token(SECRET, sub, self.clock.seconds(), ttl=60)
        return {"authorization": f"Bearer {token}", **extra}

    def refusal(self, request, method=None):
        error = self.assertRaises(Refusal, method or self.factory.authenticate, request)
        return error.status, error.reason

    def test_token_names_the_principal(self):
        """A valid token on /ws or /ws/, in the header or the token parameter, is its Principal."""
        for path in ("/ws", "/ws/"):
            self.assertEqual(self.factory.authenticate(_Request(path, self.headers())).sub,
                             "alice")
        token = tokens.mint_token(SECRET, "bob", self.clock.seconds(), ttl=60)
        principal = self.factory.authenticate(_Request(params={"token": [token]}))
        self.assertEqual(principal.sub, "bob")

    def test_other_paths_not_found(self):
        """Any other path is 404, whatever the token."""
        self.assertEqual(self.refusal(_Request("/ws/other", self.headers())), (404, "not found"))

    def test_origin_before_token(self):
        """An Origin not listed is 403 before the token is looked at; no Origin is allowed."""
        request = _Request(headers={"origin": "https://evil.example.com"})
        self.assertEqual(self.refusal(request), (403, "origin not allowed"))
        self.assertEqual(self.refusal(_Request()), (401, "missing token"))

    def test_token_checked_at_the_reactor_time(self):
        """The token's expiry is checked against the factory's reactor, not the wall clock."""
        request = _Request(headers=self.headers())
        self.clock.advance(3600)
        self.assertEqual(self.refusal(request), (401, "token expired"))

    def test_admit_applies_the_hub_caps(self):
        """admit is authenticate and the hub's caps: past the user's cap, 429."""
        self.assertEqual(self.factory.admit(_Request(headers=self.headers())).sub, "alice")
        self.hub.register(_PreparedConnection("alice"))
        self.assertEqual(self.refusal(_Request(headers=self.headers()), self.factory.admit),
                         (429, "too many connections for this user"))
        self.assertEqual(self.factory.admit(_Request(headers=self.headers("bob"))).sub, "bob")


class OptionsTests(unittest.SynchronousTestCase):
    """Every Autobahn option that matters for a public listener is set, not left to default."""

    def setUp(self):
        clock = Clock()
        verifier = TokenVerifier(key=SECRET, algorithms=["HS256"])
        self.hub = hub = Hub(clock, MemoryStore(), heartbeat_interval=30, verifier=verifier)
        self.factory = HubServerFactory(hub, verifier, reactor=clock, max_message_size=1000,
                                        max_outbound_bytes=5000, ping_interval=7)

    def test_builds_hub_protocols(self):
        """The protocol built per connection is the hub's, with the default fragment cap."""
        self.assertIs(self.factory.protocol, HubServerProtocol)
        self.assertEqual(self.factory.max_fragments, MAX_FRAGMENTS)

    def test_hub_frames_prepared_once(self):
        """The hub's broadcasts are prepared by the factory: framed once for every connection."""
        prepared = self.hub.prepare(b'{"type":"heartbeat"}')
        self.assertIsInstance(prepared, PreparedMessage)
        self.assertEqual(prepared.payload, b'{"type":"heartbeat"}')

    def test_limits(self):
        """Size limits, the outbound limit and the ping interval are the ones given."""
        self.assertEqual((self.factory.maxFramePayloadSize, self.factory.maxMessagePayloadSize),
                         (1000, 1000))
        self.assertEqual(self.factory.max_outbound_bytes, 5000)
        self.assertEqual(self.factory.autoPingInterval, 7)

    def test_unsafe_defaults_off(self):
        """No status page, no compression, RFC 6455 only, Origins and caps left to us."""
        self.assertFalse(self.factory.webStatus)
        self.assertIsNone(self.factory.perMessageCompressionAccept([object()]))
        self.assertEqual(self.factory.versions, [13])
        self.assertEqual(self.factory.allowedOrigins, ["*"])
        self.assertEqual(self.factory.maxConnections, 0)

    def test_server_header_names_no_library(self):
        """The Server header names the hub only."""
        self.assertEqual(self.factory.server, "mission-control")
        self.assertEqual(self.factory.headers, {"X-Content-Type-Options": "nosniff"})
