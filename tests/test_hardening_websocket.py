"""
Hardening of the WebSocket adapter (L{mission_control.protocol}) against what a connecting client
can send: ambiguous token parameters; and the audit log of handshakes.  Everything runs over real
loopback sockets.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import (
    LogCapture,
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
    """An audit line per handshake: peer, user where known, outcome; never the token."""

    def setUp(self):
        self.logs = LogCapture(self)
        self.server = start_server(self)

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
