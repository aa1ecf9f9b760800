"""
Hardening of the WebSocket adapter (L{mission_control.protocol}) against what a connected or
connecting client can send: frames that cost nothing to send, ambiguous token parameters, and the
audit log of handshakes.  Everything runs over real loopback sockets; frames are built byte by
byte (L{tests.helpers.ws_frame}), since a well-behaved client library never sends them.
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
    ws_frame,
)

TEXT, CONTINUATION, PING, PONG = 1, 0, 9, 10


def ws_factory(server):
    """The L{HubServerFactory} behind C{/ws} of a running server."""
    return server.service.site.resource.children[b"ws"]._factory


class FrameFloodTests(unittest.TestCase):
    """Every frame a client sends is charged to its message rate, and a message has few parts."""

    timeout = 20

    @defer.inlineCallbacks
    def flooded(self, server, frames: bytes, code: int):
        client = yield raw_websocket(self, server, server.token("flooder"))
        yield wait_until(lambda: len(client.messages()) >= 2)  # welcome, snapshot
        client.send(frames)
        yield wait_until(lambda: client.close_code is not None)
        self.assertEqual(client.close_code, code)
        yield client.lost
        yield wait_until(lambda: server.hub.connection_count == 0)
        return client

    @defer.inlineCallbacks
    def test_continuation_flood_closes_4029(self):
        """
        One text frame without FIN and then empty continuation frames: each continuation is
        charged to the message rate like a message, so the flood ends with close 4029.
        """
        server = start_server(self, ["--max-messages-per-second", "5"])
        frames = ws_frame(TEXT, b'{"type":', fin=False) + ws_frame(CONTINUATION, fin=False) * 1000
        yield self.flooded(server, frames, 4029)

    @defer.inlineCallbacks
    def test_pong_flood_closes_4029(self):
        """Unsolicited pongs are charged to the message rate: a flood of them ends with 4029."""
        server = start_server(self)
        yield self.flooded(server, ws_frame(PONG) * 1000, 4029)

    @defer.inlineCallbacks
    def test_ping_flood_closes_4029(self):
        """WebSocket pings were charged already; a flood of them ends with 4029 the same way."""
        server = start_server(self)
        yield self.flooded(server, ws_frame(PING) * 1000, 4029)

    @defer.inlineCallbacks
    def test_too_many_fragments_closes_1009(self):
        """
        A message in more fragments than the cap is refused like an oversized message: close
        1009, even when the message rate would allow every frame.
        """
        server = start_server(self, ["--max-messages-per-second", "10000"])
        cap = ws_factory(server).max_fragments
        frames = ws_frame(TEXT, b" ", fin=False) + ws_frame(CONTINUATION, b" ", fin=False) * cap
        client = yield self.flooded(server, frames, 1009)
        self.assertEqual(client.frames[-1][2][2:], b"too many fragments")

    @defer.inlineCallbacks
    def test_fragmented_message_under_the_cap_is_answered(self):
        """A message in a few fragments is put together and answered as one message."""
        server = start_server(self)
        client = yield raw_websocket(self, server, server.token())
        parts = [b'{"type":', b'"ping",', b'"id":"f1"}']
        client.send(ws_frame(TEXT, parts[0], fin=False)
                    + ws_frame(CONTINUATION, parts[1], fin=False)
                    + ws_frame(CONTINUATION, parts[2]))
        yield wait_until(lambda: any(m["type"] == "pong" for m in client.messages()))
        pong = [m for m in client.messages() if m["type"] == "pong"][0]
        self.assertEqual(pong["id"], "f1")
        self.assertIsNone(client.close_code)

    @defer.inlineCallbacks
    def test_flooder_is_not_read_after_its_close(self):
        """
        A client closed for flooding is not read any further: the server sends its close frame
        and closes the TCP connection at once, without waiting for a close reply the flooder
        will never send (the close handshake timeout here is far beyond the test's deadline).
        """
        server = start_server(self)
        ws_factory(server).setProtocolOptions(closeHandshakeTimeout=600)
        client = yield raw_websocket(self, server, server.token("flooder"))
        yield wait_until(lambda: len(client.messages()) >= 2)
        client.send(ws_frame(PONG) * 1000)
        yield wait_until(lambda: client.lost.called, timeout=5)
        self.assertEqual(client.close_code, 4029)
        yield wait_until(lambda: server.hub.connection_count == 0)


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
