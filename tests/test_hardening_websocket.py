"""
Hardening of the WebSocket adapter (L{mission_control.protocol}) against what a connecting client
can send: ambiguous token parameters; and the audit log of handshakes.  Everything runs over real
loopback sockets.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from tests.helpers import (
    LogCapture,
    RawExchange,
    parse_response,
    raw_request,
    raw_websocket,
    start_server,
    upgrade_request,
    wait_until,
)


class TokenParameterTests(unittest.TestCase):
    """Only the parameter spelled C{token} carries a token."""

    def setUp(self):
        self.server = start_server(self)

    @defer.inlineCallbacks
    def test_percent_encoded_name_is_not_the_token(self):
        """
        C{?%74oken=JWT} is not the token parameter (a proxy or log filter looking for
        C{token=} would miss it): the handshake is refused 401 missing token.
        """
        token = self.server.token()
        response = yield raw_request(self.server.port, upgrade_request(f"/ws?%74oken={token}"))
        self.assertEqual((response.status, response.reason), (401, "missing token"))
        response = yield raw_request(self.server.port, upgrade_request(f"/ws?TOKEN={token}"))
        self.assertEqual(response.status, 401)

    @defer.inlineCallbacks
    def test_exact_name_with_encoded_value(self):
        """The exact C{token} name works, its value percent-decoded as usual."""
        token = self.server.token("alice").replace(".", "%2E")
        client = yield raw_websocket(self, self.server, None, path=f"/ws?token={token}")
        yield wait_until(lambda: len(client.messages()) >= 1)
        self.assertEqual(client.messages()[0]["payload"]["user"]["id"], "alice")

    @defer.inlineCallbacks
    def test_encoded_duplicate_does_not_shadow(self):
        """
        With C{token=A&%74oken=B} only A is taken, whatever order the parameters come in.
        """
        good, forged = self.server.token("alice"), "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0."
        for query in (f"%74oken={forged}&token={good}", f"token={good}&%74oken={forged}"):
            client = yield raw_websocket(self, self.server, None, path=f"/ws?{query}")
            yield wait_until(lambda: len(client.messages()) >= 1)
            self.assertEqual(client.messages()[0]["payload"]["user"]["id"], "alice")


class HandshakeAuditTests(unittest.TestCase):
    """One log line per handshake: peer, user where known, outcome; never the token."""

    def setUp(self):
        self.logs = LogCapture(self)
        self.server = start_server(self, ["--max-connections-per-user", "1"])

    @defer.inlineCallbacks
    def exchange(self, request: bytes):
        """Send C{request}; the response and the client's own port (the peer the server logs)."""
        proto = RawExchange(request)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port), proto)
        port = proto.transport.getHost().port
        data = yield proto.done
        return parse_response(data), port

    def lines_about(self, port):
        return self.logs.matching(f"127.0.0.1:{port}")

    @defer.inlineCallbacks
    def test_one_line_per_refused_handshake(self):
        """
        Each refused handshake, refused by our checks (401, 429) or by the WebSocket checks
        (400 bad version, 405 method, 426 no upgrade), leaves exactly one log line naming the
        peer and the status.
        """
        token = self.server.token("alice")
        yield raw_websocket(self, self.server, token)  # alice is now at her cap
        requests = {
            401: upgrade_request(),
            429: upgrade_request(headers={"Authorization": f"Bearer {token}"}),
            400: upgrade_request(headers={"Authorization": f"Bearer {token}"}).replace(
                b"Version: 13", b"Version: 99"),
            405: upgrade_request().replace(b"GET", b"PUT", 1),
            426: b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        }
        logged = {}
        for status, request in requests.items():
            response, port = yield self.exchange(request)
            self.assertEqual(response.status, status)
            yield wait_until(lambda: self.server.hub.connection_count == 1)
            lines = self.lines_about(port)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("handshake refused", lines[0])
            self.assertIn(str(status), lines[0])
            logged[status] = lines[0]
        self.assertIn("alice", logged[429])
        for line in self.logs.lines():
            self.assertNotIn(token.split(".")[2], line)

    @defer.inlineCallbacks
    def test_accepted_handshake_is_audited(self):
        """An accepted handshake leaves one audit line with the peer, the user and 101."""
        token = self.server.token("bob", role="operator")
        client = yield raw_websocket(self, self.server, token)
        port = client.transport.getHost().port
        lines = self.logs.matching("handshake accepted", f"127.0.0.1:{port}")
        self.assertEqual(len(lines), 1, self.logs.lines())
        self.assertIn("101", lines[0])
        self.assertIn("bob", lines[0])
        self.assertIn("operator", lines[0])
        for line in self.logs.lines():
            self.assertNotIn(token.split(".")[2], line)
