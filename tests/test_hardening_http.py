"""
Hardening of the HTTP side of the listener (L{mission_control.web.site}, and the refusals written
by L{mission_control.protocol}): deadlines for whole requests, a cap on HTTP connections, headers
that cannot be smuggled into the WebSocket handshake, HEAD without a body, C{nosniff} on every
response, and an access log that never shows a token.

Timers are tested with a L{Clock} and a string transport; the rest over real loopback sockets.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from mission_control.web.site import (
    Health,
    HubSite,
    HubWebSocketResource,
    access_log_formatter,
    redact,
)
from tests.helpers import (
    LogCapture,
    bearer,
    connect,
    http_request,
    is_dashboard_link,
    parse_response,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0"
       ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl")
SECRET_PARTS = JWT.split(".")


class _Upgraded(Protocol):
    """What a WebSocket factory builds in these tests: a protocol that takes the connection over."""

    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class _StubWebSocketFactory:
    """Enough of a WebSocket factory for L{HubWebSocketResource}: builds L{_Upgraded}."""

    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        protocol = _Upgraded()
        self.built.append(protocol)
        return protocol


class ChannelClockTests(unittest.SynchronousTestCase):
    """The request deadlines of L{HubHTTPChannel}, driven by a L{Clock}."""

    def setUp(self):
        self.clock = task.Clock()
        root = Resource()
        root.putChild(b"healthz", Health())
        self.ws_factory = _StubWebSocketFactory()
        root.putChild(b"ws", HubWebSocketResource(self.ws_factory))
        self.site = HubSite(root, reactor=self.clock, handshake_timeout=10.0,
                            request_timeout=30.0, idle_timeout=60.0)
        self.site.doStart()
        self.addCleanup(self.site.doStop)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        transport.protocol = channel  # as a TCP transport has it; the WebSocket takes it over
        channel.makeConnection(transport)
        return channel, transport

    def test_trickled_body_gets_408_at_the_deadline(self):
        """
        A body that trickles in a byte at a time (each byte resets the idle timer) is cut at
        C{request_timeout} from the start of the request with a JSON 408.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 65000\r\n\r\n")
        for _ in range(29):
            self.clock.advance(1)
            channel.dataReceived(b"a")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 408)
        self.assertEqual(response.json()["error"]["code"], "request_timeout")
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")

    def test_head_deadline_still_applies_to_a_request_with_a_body(self):
        """A request whose head is not in within C{handshake_timeout} is dropped, body or not."""
        channel, transport = self.connect()
        for _ in range(9):
            channel.dataReceived(b"X")
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_complete_body_stops_the_deadline(self):
        """A request whose body is complete is answered, and no 408 follows later."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(parse_response(transport.value()).status, 405)
        answered = transport.value()
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        # A kept-alive idle connection closes quietly, as before: nothing more is written.
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), answered)

    def test_kept_alive_idle_connection_closes_quietly(self):
        """After a response, an idle kept-alive connection is closed after C{handshake_timeout}
        with no response written (it is not an attack), and not before."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = transport.value()
        self.assertEqual(parse_response(answered).status, 200)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), answered)

    def test_upgraded_connection_is_neither_timed_out_nor_counted(self):
        """
        Once a request is handed to the WebSocket resource, the connection is the WebSocket's:
        no HTTP deadline cuts it and it no longer counts as an HTTP connection.
        """
        channel, transport = self.connect()
        self.assertEqual(self.site.http_connections, 1)
        channel.dataReceived(upgrade_request(headers=bearer(JWT)))
        self.assertEqual(len(self.ws_factory.built), 1)
        self.assertEqual(self.site.http_connections, 0)
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        self.assertIn(b"upgrade: websocket", self.ws_factory.built[0].received.lower())

    def test_lost_connections_are_uncounted(self):
        """A closed HTTP connection no longer counts."""
        channel, transport = self.connect()
        other, _ = self.connect()
        self.assertEqual(self.site.http_connections, 2)
        channel.connectionLost(None)
        self.assertEqual(self.site.http_connections, 1)


class _Stalled(Protocol):
    """Sends C{request}, then trickles C{trickle} bytes one every C{interval} seconds."""

    def __init__(self, request, trickle=b"", interval=0.05):
        self.request, self.trickle, self.interval = request, trickle, interval
        self.data = b""
        self.lost = defer.Deferred()
        self._loop = None

    def connectionMade(self):
        self.transport.write(self.request)
        if self.trickle:
            self._loop = task.LoopingCall(self.transport.write, self.trickle)
            self._loop.start(self.interval, now=False)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.lost.callback(None)


@defer.inlineCallbacks
def open_stalled(testcase, server, request, trickle=b""):
    """A L{_Stalled} peer connected to C{server}; aborted, if still open, when the test ends."""
    peer = _Stalled(request, trickle)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), peer)
    testcase.addCleanup(lambda: peer.lost if peer.lost.called else (
        peer.transport.abortConnection(), peer.lost)[1])
    return peer


class SlowRequestTests(unittest.TestCase):
    """Over real sockets: a slow body is cut, whatever path and without a token."""

    timeout = 15

    @defer.inlineCallbacks
    def test_trickled_body_is_cut_with_408(self):
        """Content-Length: 65000 and then a byte now and then: the connection gets 408, closed."""
        server = start_server(self)
        server.service.site.request_timeout = 0.5
        peer = yield open_stalled(
            self, server, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 65000\r\n\r\n", b"a")
        yield peer.lost
        response = parse_response(peer.data)
        self.assertEqual(response.status, 408)
        self.assertEqual(response.json()["error"]["code"], "request_timeout")

    @defer.inlineCallbacks
    def test_websocket_outlives_the_deadlines(self):
        """A WebSocket opened through the site is not cut by the HTTP deadlines."""
        server = start_server(self)
        site = server.service.site
        # Deadlines long enough for a handshake on a loaded machine (a handshake that took longer
        # would be cut before the upgrade, rightly, and fail this test for the wrong reason).
        site.handshake_timeout = site.request_timeout = 1.0
        client = yield connect(self, server, server.token())
        yield client.next_of("snapshot")
        yield task.deferLater(reactor, 1.5, lambda: None)  # past both deadlines
        client.send_json({"type": "ping", "id": "later"})
        self.assertEqual((yield client.next_of("pong"))["id"], "later")


class ConnectionCapTests(unittest.TestCase):
    """At most C{max_http_connections} HTTP connections; WebSockets are counted by the hub."""

    timeout = 15

    def held(self, server):
        """An HTTP connection held open with half a request head; aborted at the end."""
        return open_stalled(self, server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

    @defer.inlineCallbacks
    def test_503_past_the_cap(self):
        """Past the cap a new connection gets a JSON 503 at once; a freed slot serves again."""
        server = start_server(self)
        site = server.service.site
        site.max_http_connections = 2
        first = yield self.held(server)
        yield self.held(server)
        yield wait_until(lambda: site.http_connections == 2)
        response = yield raw_request(server.port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json()["error"]["code"], "too_many_connections")
        self.assertEqual(response.headers["server"], "mission-control")
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        first.transport.abortConnection()
        yield wait_until(lambda: site.http_connections == 1)
        response = yield raw_request(server.port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_websockets_do_not_count(self):
        """Upgraded connections leave the HTTP count: with a cap of 1, three WebSockets and then
        an HTTP request are all served."""
        server = start_server(self)
        site = server.service.site
        site.max_http_connections = 1
        for name in ("a", "b", "c"):
            client = yield connect(self, server, server.token(name))
            yield client.next_of("snapshot")
        yield wait_until(lambda: site.http_connections == 0)
        response = yield raw_request(server.port, http_request("GET", "/healthz"))
        self.assertEqual(response.status, 200)


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
        upgrade = upgrade_request(headers=bearer(server.token()))
        for request in (http_request("HEAD", "/ws"), upgrade.replace(b"GET", b"HEAD", 1)):
            response = yield raw_request(server.port, request)
            self.assertEqual(response.status, 405)
            self.assertEqual(response.headers["allow"], "GET")
            self.assertEqual(response.body, b"")


class SmuggledHeaderTests(unittest.TestCase):
    """
    Autobahn re-reads the handshake from twisted.web's parsed headers with C{str.splitlines()},
    which also splits at characters HTTP does not treat as line ends.  Such requests are refused
    before Autobahn sees them.
    """

    def setUp(self):
        self.server = start_server(self)

    @defer.inlineCallbacks
    def test_line_splitting_characters_are_refused(self):
        """
        A header value carrying \\x0b \\x0c \\x1c \\x1d \\x1e or \\x85 and a second header after
        it is a 400 with a JSON body: never read as an Authorization header (never 101).
        """
        logs = LogCapture(self)
        token = self.server.token("mallory")
        for char in "\x0b\x0c\x1c\x1d\x1e\x85":
            request = upgrade_request(headers={"X-Note": f"hi{char}authorization: Bearer {token}"})
            response = yield raw_request(self.server.port, request)
            self.assertEqual(response.status, 400, repr(char))
            self.assertEqual(response.json()["error"]["code"], "bad_request")
        self.assertEqual(self.server.hub.connection_count, 0)
        # Each is a security line of its own, as every refused handshake is.
        refused = logs.matching("security: handshake refused", "400 Bad Request")
        self.assertEqual(len(refused), 6, logs.lines())

    @defer.inlineCallbacks
    def test_duplicate_authorization_is_refused(self):
        """Two Authorization headers are a 400, whichever of them is valid: no "last one wins"."""
        good = f"Authorization: Bearer {self.server.token('alice')}"
        for pair in ((good, "Authorization: Bearer nope"), ("Authorization: Bearer nope", good),
                     (good, good)):
            request = upgrade_request().replace(
                b"\r\n\r\n", ("\r\n" + "\r\n".join(pair) + "\r\n\r\n").encode(), 1)
            response = yield raw_request(self.server.port, request)
            self.assertEqual(response.status, 400, pair)
        self.assertEqual(self.server.hub.connection_count, 0)

    @defer.inlineCallbacks
    def test_ordinary_latin1_values_pass(self):
        """Header values with other non-ASCII bytes (obs-text) are not refused for it."""
        token = self.server.token("alice")
        response = yield raw_handshake(self.server.port, upgrade_request(
            headers={**bearer(token), "X-Name": "Z\xfcrich caf\xe9"}))
        self.assertEqual(response.status, 101)
        yield wait_until(lambda: self.server.hub.connection_count == 0)


class RedactionTests(unittest.SynchronousTestCase):
    """Tokens are recognised by their shape and by their name, however the name is written."""

    def assertRedacted(self, text: bytes):
        redacted = redact(text)
        for part in SECRET_PARTS:
            self.assertNotIn(part.encode(), redacted, text)
        return redacted

    def test_query_forms(self):
        """?token=, ?%74oken=, ;token=, &TOKEN=, access_token= and an encoded value are redacted."""
        for uri in (f"/ws?token={JWT}", f"/ws?%74oken={JWT}", f"/ws?%74%6F%6B%65%6E={JWT}",
                    f"/ws;token={JWT}", f"/ws?a=1&TOKEN={JWT}&b=2", f"/x?access_token={JWT}",
                    f"/ws?token={JWT.replace('.', '%2E')}", f"/ws?t={JWT}"):
            self.assertRedacted(uri.encode())

    def test_path_and_fragment(self):
        """A JWT in the path or after #token= is redacted."""
        self.assertRedacted(f"/ws/{JWT}/x".encode())
        self.assertRedacted(f"https://mc.example/#token={JWT}".encode())

    def test_opaque_token_after_its_name(self):
        """A value after token= that is not a JWT is redacted too."""
        redacted = redact(b"/ws?token=0123456789abcdefSECRET&x=1")
        self.assertEqual(redacted, b"/ws?token=[redacted]&x=1")

    def test_bearer(self):
        """Bearer <anything> (in a User-Agent, say) is redacted."""
        self.assertEqual(redact(b"curl/8 Bearer s3cr3t-opaque"), b"curl/8 Bearer [redacted]")

    def test_other_text_stays(self):
        """Text without a token is left alone."""
        for text in (b"/ws?mytokens=3", b"/api/agents?since=5&limit=10", b"Mozilla/5.0 (X11)",
                     b"https://mc.example.com/dashboard?channel=agents"):
            self.assertEqual(redact(text), text)

    def test_formatter_redacts_uri_referer_and_user_agent(self):
        """The access log line shows none of the token forms in URI, Referer or User-Agent."""
        request = DummyRequest([b"ws"])
        request.uri = f"/ws?%74oken={JWT}".encode()
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.code = 401
        request.sentLength = 0
        referer = f"https://mc.example/#token={JWT}".encode()
        request.requestHeaders.setRawHeaders(b"referer", [referer])
        request.requestHeaders.setRawHeaders(b"user-agent", [f"agent token:{JWT}".encode()])
        line = access_log_formatter("[27/Nov/2026:00:00:00 +0000]", request)
        for part in SECRET_PARTS:
            self.assertNotIn(part, line)
        self.assertIn("[redacted]", line)


class AccessLogOverSocketsTests(unittest.TestCase):
    """Over real sockets, no log line carries a token in any of its disguises."""

    @defer.inlineCallbacks
    def test_no_token_in_any_log_line(self):
        """Tokens in odd query forms, the path, Referer and User-Agent never reach a log event."""
        logs = LogCapture(self)
        server = start_server(self)
        token = server.token("alice")
        requests = [
            upgrade_request(f"/ws?%74oken={token}"),
            http_request("GET", f"/ws;token={token}"),
            upgrade_request(f"/ws/{token}"),
            http_request("GET", f"/api/{token}"),
            http_request("GET", "/healthz", headers={"Referer": f"https://x/?%74oken={token}",
                                                     "User-Agent": f"bot {token}"}),
            http_request("GET", "/healthz", headers={"Referer": f"https://x/#token={token}"}),
        ]
        for request in requests:
            yield raw_request(server.port, request)
        yield wait_until(lambda: len(logs.matching('"GET /healthz')) >= 2)
        # The start-up link of the development secret is the one token logged, on purpose
        # (tests/test_tap.py pins it); every other event is checked.
        events = [e for e in logs.events if not is_dashboard_link(e)]
        self.assertEqual(len(logs.events) - len(events), 1)
        text = "\n".join([formatEvent(e) for e in events]
                         + [json.dumps(e, default=repr) for e in events])
        for part in token.split("."):
            self.assertNotIn(part, text)
