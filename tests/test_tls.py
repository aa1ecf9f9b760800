"""
TLS end to end: the hub on an C{ssl:} endpoint, real handshakes on 127.0.0.1.

The server gets a certificate for C{localhost} from a throwaway CA (L{tests.certs}); clients trust
that CA alone and check the host name, as a browser would.  WebSocket (wss), the HTTP API and the
refusals all share the one TLS listener.
"""

from __future__ import annotations

import json

from OpenSSL import SSL
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mission_control.tap import urls_of
from tests import certs
from tests.helpers import (
    client_tls,
    tls_exchange,
    connect,
    fill_sessions,
    http_request,
    parse_response,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


def track_connections(testcase, server):
    """
    Count the server's HTTP connections that are still open, and make the test wait for them to
    close before the server stops (connections upgraded to WebSocket are the hub's to count).
    """
    site = server.service.site
    live: set = set()
    build = site.buildProtocol

    def buildProtocol(addr):
        channel = build(addr)
        live.add(channel)
        lost = channel.connectionLost

        def connectionLost(reason):
            live.discard(channel)
            return lost(reason)

        channel.connectionLost = connectionLost
        return channel

    site.buildProtocol = buildProtocol

    def still_open():
        # A WebSocket upgrade takes the transport away from the HTTP channel.
        return [channel for channel in live if channel.transport is not None]

    testcase.addCleanup(lambda: wait_until(lambda: not still_open()))
    return still_open


class TLSListenerTests(TestCase):
    """The hub behind C{--listen ssl:...}."""

    def setUp(self):
        self.files = certs.write_certificates(self)
        self.server = start_server(self, args=["--listen", certs.ssl_listen(self.files)])
        self.open_connections = track_connections(self, self.server)
        self.trusted = client_tls(self.files.ca_pem)

    def test_serves_tls_urls(self):
        """An C{ssl:} listener is announced with https:// and wss:// URLs on its real port."""
        self.assertEqual(self.server.scheme, "https")
        description, port = self.server.service.ports[0]
        self.assertEqual(
            urls_of(description, port),
            [
                f"https://127.0.0.1:{self.server.port}/",
                f"wss://127.0.0.1:{self.server.port}/ws",
            ],
        )

    @defer.inlineCallbacks
    def test_welcome_and_events_over_wss(self):
        """
        A client that trusts the CA gets the welcome frame over wss, and an event published over
        HTTPS on the same listener reaches it.
        """
        client = yield connect(
            self, self.server, token=self.server.token("alice", role="viewer"),
            tls_options=self.trusted,
        )
        welcome = yield client.next_of("welcome")
        self.assertEqual(welcome["payload"]["user"]["id"], "alice")
        peer = client.transport.getPeerCertificate()
        self.assertEqual(peer.get_subject().CN, "localhost")

        request = http_request(
            "POST", "/api/agents/agent-7/status", {"status": "busy", "message": "over TLS"},
            token=self.server.token("ops", role="admin"), headers={"Connection": "close"},
        )
        data, _ = yield tls_exchange(self.server.port, request, self.trusted)
        response = parse_response(data)
        self.assertEqual(response.status, 200, response.raw)

        event = yield client.next_of("agent:status")
        self.assertEqual(event["payload"]["agentId"], "agent-7")
        self.assertEqual(event["payload"]["message"], "over TLS")
        self.assertEqual(event["seq"], response.json()["event"]["seq"])

    @defer.inlineCallbacks
    def test_large_snapshot_over_wss(self):
        """A snapshot of megabytes, streamed as the client reads, arrives whole over TLS."""
        fill_sessions(self.server, 300)
        client = yield connect(
            self, self.server, token=self.server.token("alice", role="viewer"),
            tls_options=self.trusted,
        )
        snapshot = yield client.next_of("snapshot")
        self.assertEqual(snapshot["payload"]["sessions"], self.server.hub.store.sessions())
        client.send_json({"type": "ping", "id": "after"})
        pong = yield client.next_of("pong")
        self.assertEqual(pong["id"], "after")

    @defer.inlineCallbacks
    def test_healthz_over_https(self):
        """C{GET /healthz} over TLS on the WebSocket listener answers 200 C{{"status": "ok"}}."""
        request = http_request("GET", "/healthz", headers={"Connection": "close"})
        data, _ = yield tls_exchange(self.server.port, request, self.trusted)
        response = parse_response(data)
        self.assertEqual(response.status, 200, response.raw)
        self.assertEqual(json.loads(response.body), {"status": "ok"})

    @defer.inlineCallbacks
    def test_untrusted_certificate_fails_handshake(self):
        """
        A client that trusts a different CA aborts the TLS handshake: the WebSocket never opens,
        no welcome frame is received, no connection is registered, and nothing of the HTTP
        response is read either.
        """
        untrusted = client_tls(certs.other_certificate_authority().pem)
        yield self.assertFailure(
            connect(self, self.server, token=self.server.token(), tls_options=untrusted),
            ConnectionError,
        )
        self.assertEqual(self.server.hub.connection_count, 0)

        request = http_request("GET", "/healthz", headers={"Connection": "close"})
        data, reason = yield tls_exchange(self.server.port, request, untrusted)
        self.assertEqual(data, b"")
        self.assertIsInstance(reason.value, SSL.Error)
        self.assertIn("certificate verify failed", str(reason.value))

    @defer.inlineCallbacks
    def test_refused_token_gets_401_over_wss(self):
        """
        A WebSocket upgrade over TLS with a bad token is refused with a plain HTTP 401, as over
        plain TCP; no connection is registered.
        """
        request = upgrade_request(headers={"Authorization": "Bearer not-a-jwt"})
        data, _ = yield tls_exchange(self.server.port, request, self.trusted)
        response = parse_response(data)
        self.assertEqual(response.status, 401, response.raw)
        self.assertEqual(response.json()["error"]["code"], "unauthorized")
        self.assertIn("bearer", response.headers.get("www-authenticate", "").lower())
        self.assertEqual(self.server.hub.connection_count, 0)

    @defer.inlineCallbacks
    def test_plain_http_is_not_answered(self):
        """A plaintext HTTP request to the TLS listener gets no HTTP response."""
        response = yield raw_request(self.server.port, http_request("GET", "/healthz"))
        self.assertNotIn(b"HTTP/1.1", response.raw)
        self.assertNotIn(b"ok", response.raw)
