"""
Tests for L{mission_control.handshake}: the checks before the upgrade and every refusal, end to end
over loopback sockets, and the pure parts (the query parameters read, the logger without debug,
request text made printable) on their own.
"""

from __future__ import annotations

import sys

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mission_control.handshake import (
    HANDSHAKE_DATA,
    OPTION_NAMES,
    STATE_FALSE,
    STATE_NONE,
    HandshakeProtocol,
    _printable,
    _WithoutDebug,
    exact_query_params,
)
from tests.helpers import (
    bearer,
    connect,
    http_request,
    is_dashboard_link,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


class HandshakeTests(unittest.TestCase):
    """The token is checked before the upgrade."""

    def setUp(self):
        self.server = start_server(self)

    @defer.inlineCallbacks
    def test_token_in_header(self):
        """A valid token in Authorization: Bearer opens the socket; welcome is the first frame."""
        client = yield connect(self, self.server, self.server.token("alice", role="operator",
                                                                    name="Alice"))
        welcome = yield client.frames.get()
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(welcome["payload"]["user"],
                         {"id": "alice", "name": "Alice", "role": "operator"})
        self.assertEqual(welcome["payload"]["heartbeatInterval"], 30)
        snapshot = yield client.frames.get()
        self.assertEqual(snapshot["type"], "snapshot")

    @defer.inlineCallbacks
    def test_token_in_query(self):
        """A valid token in the token query parameter opens the socket too."""
        client = yield connect(self, self.server, self.server.token("bob"), in_header=False)
        welcome = yield client.frames.get()
        self.assertEqual(welcome["payload"]["user"]["id"], "bob")

    @defer.inlineCallbacks
    def test_101_names_only_mission_control(self):
        """The 101 response says Server: mission-control and names no library."""
        response = yield raw_handshake(
            self.server.port, upgrade_request(headers=bearer(self.server.token())))
        self.assertEqual(response.status, 101)
        self.assertEqual(response.headers["server"], "mission-control")
        self.assertNotIn(b"autobahn", response.raw.lower())
        self.assertNotIn(b"twisted", response.raw.lower())
        yield wait_until(lambda: self.server.hub.connection_count == 0)

    @defer.inlineCallbacks
    def refused(self, request, status, reason=None):
        response = yield raw_request(self.server.port, request)
        self.assertEqual(response.status, status, response.raw)
        if reason is not None:
            self.assertEqual(response.reason, reason)
            self.assertEqual(response.json()["error"]["message"], reason)
        lowered = response.raw.lower()
        for leak in (b"autobahn", b"twisted", b"traceback", b"python"):
            self.assertNotIn(leak, lowered)
        self.assertEqual(self.server.hub.connection_count, 0)
        return response

    @defer.inlineCallbacks
    def test_no_token(self):
        """No token: 401 missing token, with a JSON body and WWW-Authenticate."""
        response = yield self.refused(upgrade_request(), 401, "missing token")
        self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="mission-control"')
        self.assertEqual(response.json()["error"]["code"], "unauthorized")

    @defer.inlineCallbacks
    def test_invalid_token(self):
        """A malformed token or a bad signature: 401 invalid token."""
        yield self.refused(upgrade_request(headers=bearer("not-a-jwt")), 401, "invalid token")
        forged = self.server.token()[:-4] + "AAAA"
        yield self.refused(upgrade_request(headers=bearer(forged)), 401, "invalid token")
        yield self.refused(upgrade_request(path="/ws?token=garbage"), 401, "invalid token")

    @defer.inlineCallbacks
    def test_expired_token(self):
        """An expired token: 401 token expired."""
        token = self.server.token(ttl=-60)
        yield self.refused(upgrade_request(headers=bearer(token)), 401, "token expired")

    @defer.inlineCallbacks
    def test_bad_claims(self):
        """A token with an unknown role: 401 invalid claims."""
        token = self.server.token(role="superuser")
        yield self.refused(upgrade_request(headers=bearer(token)), 401, "invalid claims")

    @defer.inlineCallbacks
    def test_plain_get_is_426(self):
        """A plain GET of /ws is answered 426 with Upgrade: websocket, not a status page."""
        response = yield self.refused(http_request("GET", "/ws"), 426)
        self.assertEqual(response.headers["upgrade"], "websocket")
        self.assertNotIn(b"<html", response.body.lower())

    @defer.inlineCallbacks
    def test_other_methods_are_405(self):
        """A WebSocket handshake with another method than GET: 405 with Allow: GET."""
        request = upgrade_request(headers=bearer(self.server.token())).replace(b"GET", b"POST", 1)
        response = yield self.refused(request, 405)
        self.assertEqual(response.headers["allow"], "GET")

    @defer.inlineCallbacks
    def test_invalid_upgrades_are_400(self):
        """Bad version, missing key, wrong Upgrade value: 400 without echoing the request."""
        token = self.server.token()
        marker = "ZZmarkerZZ"
        requests = [
            upgrade_request(headers=bearer(token)).replace(b"Version: 13", b"Version: 99"),
            upgrade_request(headers=bearer(token)).replace(
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
            upgrade_request(headers=bearer(token)).replace(
                b"Upgrade: websocket", f"Upgrade: {marker}".encode()),
        ]
        for request in requests:
            response = yield self.refused(request, 400)
            self.assertNotIn(marker.encode(), response.raw)

    @defer.inlineCallbacks
    def test_other_paths(self):
        """A WebSocket handshake under /ws/anything is not the hub's socket: 404."""
        yield self.refused(upgrade_request(path="/ws/other", headers=bearer(self.server.token())),
                           404)

    @defer.inlineCallbacks
    def test_garbage_requests(self):
        """Junk on the socket gets a 400 and the server keeps serving."""
        for junk in (b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"HELLO / WORLD\r\n\r\n"):
            response = yield raw_request(self.server.port, junk, close_after=False)
            self.assertIn(response.status, (400, 0))
        client = yield connect(self, self.server, self.server.token())
        self.assertEqual((yield client.frames.get())["type"], "welcome")

    @defer.inlineCallbacks
    def test_oversized_handshake(self):
        """More than 16 KiB of request head is refused (400, or closed) and nothing is opened."""
        request = upgrade_request(headers={**bearer(self.server.token()),
                                           "X-Padding": "p" * 17000})
        response = yield raw_request(self.server.port, request, close_after=False)
        self.assertIn(response.status, (400, 0))
        self.assertEqual(self.server.hub.connection_count, 0)
        many = {f"X-H{i}": "v" * 100 for i in range(200)}
        response = yield raw_request(self.server.port, upgrade_request(headers=many),
                                     close_after=False)
        self.assertEqual(response.status, 400)
        self.assertEqual(self.server.hub.connection_count, 0)


class TokenNeverLoggedTests(unittest.TestCase):
    """No log line carries a token, whether accepted, refused or in the query string."""

    @defer.inlineCallbacks
    def test_tokens_not_in_logs(self):
        """Tokens in headers and query strings, good and bad, never reach a log event."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = start_server(self)
        good = server.token("alice")
        expired = server.token("bob", ttl=-60)
        client = yield connect(self, server, good, in_header=False)
        yield client.next_of("snapshot")
        yield connect(self, server, good)
        yield raw_request(server.port, upgrade_request(path=f"/ws?token={expired}"))
        yield raw_request(server.port, upgrade_request(headers=bearer(expired)))
        yield raw_request(server.port, http_request("GET", f"/ws?token={good}"))
        yield raw_request(server.port, http_request("GET", f"/api/agents?token={good}",
                                                    token=good))
        yield raw_request(server.port, http_request("GET", "/api/agents", token=expired))
        yield wait_until(lambda: any("security" in formatEvent(e) for e in events))
        # The start-up link of the development secret is the one token logged, on purpose
        # (tests/test_tap.py pins it); every other event is checked.
        checked = [e for e in events if not is_dashboard_link(e)]
        self.assertEqual(len(events) - len(checked), 1)
        text = "\n".join(formatEvent(e) + repr(e) for e in checked)
        self.assertIn("handshake refused", text)
        self.assertIn("token expired", text)
        for token in (good, expired):
            for part in token.split("."):
                self.assertNotIn(part, text)


class RefusalLogTests(unittest.TestCase):
    """Where the audit line of a refused handshake is logged."""

    @defer.inlineCallbacks
    def test_logged_as_the_connection(self):
        """
        The line is logged, at warn for a 401, under the namespace of the connection's class
        (mission_control.protocol.HubServerProtocol), the one operators filter on.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = start_server(self)
        yield raw_request(server.port, upgrade_request())
        yield wait_until(lambda: any("handshake refused" in formatEvent(e) for e in events))
        [refused] = [e for e in events if "handshake refused" in formatEvent(e)]
        self.assertEqual(refused["log_namespace"], "mission_control.protocol.HubServerProtocol")
        self.assertEqual(refused["log_level"].name, "warn")
        self.assertIn(": 401 missing token", formatEvent(refused))


class NoDebugFormattingTests(unittest.TestCase):
    """
    A connection's life costs none of Autobahn's costly debug formatting: the C{pformat} of its
    options on connect, the description of every read and write, the text (with traceback) of a
    lost connection's reason.  And a connection holds no copy of the factory's options: its class does.
    """

    def setUp(self):
        import autobahn.twisted.websocket as twisted_websocket
        import autobahn.websocket.protocol as websocket_protocol

        self.server = start_server(self)
        #: The formatting functions called from a method of the hub's side of a connection
        #: (the test's client is Autobahn's too, and formats what it likes).
        self.formatted = []
        for module in (websocket_protocol, twisted_websocket):
            for name in ("pformat", "hltype", "hlval"):
                if hasattr(module, name):
                    self.patch(module, name, self._recorder(name, getattr(module, name)))

    #: Where a connection spends its debug formatting if anywhere: once per connection with
    #: all its options or a traceback, or on every read and write.
    HOT = ("_connectionMade", "_connectionLost", "dataReceived", "sendData")

    def _recorder(self, name, original):
        def format(*args, **kwargs):
            caller = sys._getframe(1).f_locals.get("self")
            method = sys._getframe(1).f_code.co_name
            if isinstance(caller, HandshakeProtocol) and args != ([],) and method in self.HOT:
                self.formatted.append(f"{name} in {method}")
            return original(*args, **kwargs)

        return format

    @defer.inlineCallbacks
    def test_connect_read_and_lose(self):
        """
        A client connects, sends a frame, is answered and drops its TCP connection without a
        close handshake: the hub sees it go, and nothing was formatted on the way.
        """
        client = yield connect(self, self.server, self.server.token("alice"))
        yield client.frames.get()  # welcome
        yield client.frames.get()  # snapshot
        client.sendMessage(b'{"type":"ping","id":"r1"}')
        pong = yield client.frames.get()
        self.assertEqual(pong["type"], "pong")
        self.assertEqual(self.server.hub.connection_count, 1)
        client.transport.abortConnection()
        yield wait_until(lambda: self.server.hub.connection_count == 0)
        self.assertEqual(self.formatted, [])

    @defer.inlineCallbacks
    def test_options_held_by_the_class(self):
        """
        An open connection reads the factory's options from its class, not from copies of its
        own; options set later apply to the connections that come after.
        """
        factory = self.server.service.site.resource.children[b"ws"]._factory
        client = yield connect(self, self.server, self.server.token("alice"))
        yield client.frames.get()
        [first] = self.server.hub.connections_of("alice")
        self.assertEqual([name for name in OPTION_NAMES if name in vars(first)], [])
        self.assertEqual({name: getattr(first, name) for name in OPTION_NAMES},
                         {name: getattr(factory, name) for name in OPTION_NAMES})
        factory.setProtocolOptions(closeHandshakeTimeout=7)
        client = yield connect(self, self.server, self.server.token("bob"))
        yield client.frames.get()
        [second] = self.server.hub.connections_of("bob")
        self.assertEqual((first.closeHandshakeTimeout, second.closeHandshakeTimeout), (5, 7))


def _holds(value, needle: str, depth: int = 3) -> bool:
    """Whether C{value}, or what it contains (a few levels down), holds the text C{needle}."""
    if isinstance(value, (bytes, bytearray)):
        return needle.encode() in value
    if isinstance(value, str):
        return needle in value
    if depth and isinstance(value, dict):
        return any(_holds(k, needle, depth - 1) or _holds(v, needle, depth - 1)
                   for k, v in value.items())
    if depth and isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds(item, needle, depth - 1) for item in value)
    return False


class ForgetHandshakeTests(unittest.TestCase):
    """Once a connection is open, its protocol keeps nothing of the handshake, the token least."""

    def setUp(self):
        self.server = start_server(self)

    @defer.inlineCallbacks
    def open_connection(self, token, **options):
        client = yield connect(self, self.server, token, **options)
        yield client.next_of("snapshot")
        [conn] = self.server.hub.connections_of("carol")
        return client, conn

    @defer.inlineCallbacks
    def assert_forgotten(self, **options):
        token = self.server.token("carol")
        client, conn = yield self.open_connection(token, **options)
        self.assertEqual(sorted(HANDSHAKE_DATA & set(vars(conn))), [])
        held = [name for name, value in vars(conn).items() if _holds(value, token)]
        self.assertEqual(held, [])
        # The connection still works: a frame is answered.
        client.send_json({"type": "ping", "id": "p1"})
        pong = yield client.next_of("pong")
        self.assertEqual(pong["id"], "p1")

    def test_token_in_query_not_kept(self):
        """A token sent in the query is in none of the open protocol's attributes."""
        return self.assert_forgotten(in_header=False)

    def test_token_in_header_not_kept(self):
        """A token sent in the Authorization header is in none of them either."""
        return self.assert_forgotten()

    @defer.inlineCallbacks
    def test_connect_request_reaches_the_hub(self):
        """The query read at the handshake is the hub's once open (the protocol drops its copy)."""
        token = self.server.token("carol")
        client, conn = yield self.open_connection(token, query="client=tab-1")
        [detail] = self.server.hub.registry.iter_connection_details()
        self.assertEqual(detail["client"], "tab-1")
        self.assertNotIn("_connect_request", vars(conn))

    @defer.inlineCallbacks
    def test_state_at_class_value_not_in_instance(self):
        """
        The flags Autobahn set at the upgrade and left at their usual value are read from the
        class, not held by each connection; a flag that changes is set on the instance again.
        """
        client, conn = yield self.open_connection(self.server.token("carol"))
        for name in STATE_NONE + STATE_FALSE:
            self.assertNotIn(name, vars(conn))
        self.assertIs(conn.wasClean, False)
        self.assertIsNone(conn.localCloseCode)
        client.sendClose(1000)
        yield client.closed
        self.assertIs(vars(conn)["wasClean"], True)
        self.assertEqual(conn.localCloseCode, 1000)


class ForgetHandshakeUnitTests(unittest.SynchronousTestCase):
    """L{HandshakeProtocol.forget_handshake} on its own."""

    def test_drops_handshake_and_class_valued_scalars(self):
        """
        The handshake's attributes go, as do scalars that are their class's value; anything else,
        a scalar that differs from the class's or a mutable value equal to it, stays.
        """
        proto = HandshakeProtocol()
        built = dict(vars(proto))  # Autobahn's own, from its constructor: kept as they are
        queue: list = []
        proto.__dict__.update(http_request_data=b"GET /ws?token=secret", _wskey="k",
                              wasClean=False, closedByMe=True, localCloseCode=None,
                              send_state=0, state=3, send_queue=queue, custom=None)
        proto.forget_handshake()
        self.assertEqual(vars(proto), {**built, "closedByMe": True, "state": 3,
                                       "send_queue": queue, "custom": None})
        self.assertIs(proto.wasClean, False)
        self.assertIsNone(proto.localCloseCode)
        self.assertEqual(proto.send_state, 0)


class ExactQueryParamsTests(unittest.SynchronousTestCase):
    """Query parameters by their names as written, values decoded."""

    def test_values_decoded(self):
        """Values are percent-decoded and + is a space; a name given twice keeps both, in order."""
        self.assertEqual(exact_query_params("/ws?token=a%2Eb&channels=x+y&token=c"),
                         {"token": ["a.b", "c"], "channels": ["x y"]})

    def test_encoded_names_are_nobodys(self):
        """A name with a percent escape or a + is left out: %74oken is never the token."""
        self.assertEqual(exact_query_params("/ws?%74oken=t1&to+ken=t2&tok%65n=t3"), {})
        self.assertEqual(exact_query_params("/ws?%74oken=t1&token=t2"), {"token": ["t2"]})

    def test_blank_fields_left_out(self):
        """A field without =, without a name or without a value is no parameter (as parse_qs)."""
        self.assertEqual(exact_query_params("/ws?token&=v&since=&&epoch=e"), {"epoch": ["e"]})

    def test_no_query(self):
        """A URI without a query has no parameters; a fragment is not part of the query."""
        self.assertEqual(exact_query_params("/ws"), {})
        self.assertEqual(exact_query_params("/ws?since=4#token=x"), {"since": ["4"]})

    def test_undecodable_values_replaced(self):
        """Bytes that are not UTF-8 become U+FFFD; a broken escape stays as written."""
        self.assertEqual(exact_query_params("/ws?a=%ff&b=%zz"), {"a": ["\ufffd"], "b": ["%zz"]})


class _RecordingLogger:
    def __init__(self):
        self.calls = []

    def __getattr__(self, level):
        return lambda *args, **kwargs: self.calls.append((level, args))


class WithoutDebugTests(unittest.SynchronousTestCase):
    """Autobahn's logger, with its debug and trace levels silenced."""

    def test_debug_and_trace_dropped(self):
        """debug and trace never reach the logger underneath: they would log whole handshakes."""
        underneath = _RecordingLogger()
        log = _WithoutDebug(underneath)
        log.debug("headers {headers}", headers={"authorization": "Bearer t"})
        log.trace("query {q}", q="token=t")
        self.assertEqual(underneath.calls, [])

    def test_other_levels_pass(self):
        """Every other level is the logger's own."""
        underneath = _RecordingLogger()
        log = _WithoutDebug(underneath)
        log.info("one")
        log.warn("two")
        log.failure("three")
        self.assertEqual(underneath.calls, [("info", ("one",)), ("warn", ("two",)),
                                            ("failure", ("three",))])


class PrintableTests(unittest.SynchronousTestCase):
    """Text from a request, made fit for one log line."""

    def test_control_characters_replaced(self):
        """Line breaks, escapes and other unprintable characters become ?."""
        self.assertEqual(_printable("a\r\nb\x1b[31mc\u200b"), "a??b?[31mc?")

    def test_truncated(self):
        """At most C{limit} characters are kept (200 unless told)."""
        self.assertEqual(len(_printable("x" * 500)), 200)
        self.assertEqual(_printable("abcdef", limit=3), "abc")

    def test_any_object(self):
        """What is not text is logged as its str()."""
        self.assertEqual(_printable(401), "401")
