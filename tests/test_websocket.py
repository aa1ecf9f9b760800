"""
End-to-end tests of the WebSocket over real loopback sockets: the handshake and every refusal,
broadcast, liveness, cleanup and hardening.  Clients are Autobahn's own, or raw sockets where a
well-behaved client cannot produce the bad input.
"""

from __future__ import annotations

import gc
import json

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mission_control.events import STATUSES
from mission_control.protocol import HubServerProtocol
from tests.helpers import (
    connect,
    http_request,
    is_dashboard_link,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


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


class BroadcastTests(unittest.TestCase):
    """Events published over HTTP reach every connected client."""

    def setUp(self):
        self.server = start_server(self)
        self.admin = self.server.token("root", role="admin")

    def publish(self, path, body):
        return raw_request(self.server.port, http_request("POST", path, body, token=self.admin))

    @defer.inlineCallbacks
    def connected(self, count):
        clients = []
        for i in range(count):
            client = yield connect(self, self.server, self.server.token(f"user{i}"))
            yield client.next_of("snapshot")
            clients.append(client)
        return clients

    @defer.inlineCallbacks
    def test_agent_status_to_all(self):
        """An agent:status reaches every client with type, payload, ts and seq."""
        clients = yield self.connected(3)
        response = yield self.publish("/api/agents/a1/status", {"status": "online", "name": "A"})
        self.assertEqual(response.status, 200)
        sent = response.json()["event"]
        for client in clients:
            frame = yield client.next_of("agent:status")
            self.assertEqual(frame, sent)
            self.assertEqual(set(frame), {"type", "payload", "ts", "seq"})
            self.assertEqual(set(frame["payload"]) >= {"agentId", "status", "timestamp"}, True)

    @defer.inlineCallbacks
    def test_session_activity_to_all(self):
        """A session:activity reaches every client with its required fields."""
        clients = yield self.connected(2)
        yield self.publish("/api/sessions/s1/activity",
                           {"activity": "tool_call", "agentId": "a1", "summary": "web.search"})
        for client in clients:
            frame = yield client.next_of("session:activity")
            self.assertEqual(frame["payload"]["sessionId"], "s1")
            self.assertEqual(frame["payload"]["activity"], "tool_call")
            self.assertIn("timestamp", frame["payload"])

    @defer.inlineCallbacks
    def test_every_status(self):
        """online, busy, idle, offline and error all arrive, in order, with increasing seq."""
        (client,) = yield self.connected(1)
        for status in STATUSES:
            yield self.publish("/api/agents/a1/status", {"status": status})
        frames = []
        for _ in STATUSES:
            frames.append((yield client.next_of("agent:status")))
        self.assertEqual([f["payload"]["status"] for f in frames], list(STATUSES))
        seqs = [f["seq"] for f in frames]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), len(seqs))

    @defer.inlineCallbacks
    def test_ten_clients_concurrently(self):
        """Ten clients all receive each of a burst of broadcasts, in the same order."""
        clients = yield self.connected(10)
        published = []
        for i in range(5):
            response = yield self.publish(f"/api/agents/a{i}/status", {"status": "busy"})
            published.append(response.json()["event"]["seq"])
        for client in clients:
            got = []
            for _ in published:
                got.append((yield client.next_of("agent:status"))["seq"])
            self.assertEqual(got, published)

    @defer.inlineCallbacks
    def test_snapshot_for_late_joiners(self):
        """A client that connects later gets the latest state in its snapshot."""
        yield self.publish("/api/agents/a1/status", {"status": "online"})
        yield self.publish("/api/agents/a1/status", {"status": "error", "message": "boom"})
        client = yield connect(self, self.server, self.server.token())
        welcome = yield client.frames.get()
        snapshot = yield client.frames.get()
        self.assertEqual(welcome["payload"]["lastSeq"], 2)
        self.assertEqual(snapshot["payload"]["agents"][0]["status"], "error")
        self.assertEqual(snapshot["payload"]["lastSeq"], 2)

    @defer.inlineCallbacks
    def test_tracking_by_user(self):
        """Connections are tracked by user id, several per user, as GET /api/connections shows."""
        yield connect(self, self.server, self.server.token("alice"))
        yield connect(self, self.server, self.server.token("alice"))
        yield connect(self, self.server, self.server.token("bob"))
        response = yield raw_request(self.server.port,
                                     http_request("GET", "/api/connections", token=self.admin))
        body = response.json()
        self.assertEqual((body["total"], body["users"]), (3, [
            {"id": "alice", "connections": 2}, {"id": "bob", "connections": 1}]))
        self.assertEqual(sorted(c["user"] for c in body["connections"]), ["alice", "alice", "bob"])


class ClientFrameTests(unittest.TestCase):
    """Client frames get replies; bad ones get error frames and the connection stays open."""

    def setUp(self):
        self.server = start_server(self, ["--max-message-size", "1024"])

    @defer.inlineCallbacks
    def open_client(self):
        client = yield connect(self, self.server, self.server.token())
        yield client.next_of("snapshot")
        return client

    @defer.inlineCallbacks
    def test_ping_pong(self):
        """ping is answered by pong carrying the same id."""
        client = yield self.open_client()
        client.send_json({"type": "ping", "id": "r1"})
        pong = yield client.next_of("pong")
        self.assertEqual((pong["id"], pong["payload"]), ("r1", {}))

    @defer.inlineCallbacks
    def test_bad_frames_then_still_open(self):
        """Malformed JSON, a non-object, an unknown type and a binary frame each get an error."""
        client = yield self.open_client()
        client.sendMessage(b"{oops")
        client.sendMessage(b"[1]")
        client.send_json({"type": "teleport", "id": "x1"})
        client.sendMessage(b'{"type":"ping"}', isBinary=True)
        codes = []
        for _ in range(4):
            error = yield client.next_of("error")
            codes.append((error["payload"]["code"], error.get("id")))
        self.assertEqual(codes, [("bad_request", None), ("bad_request", None),
                                 ("unknown_type", "x1"), ("bad_request", None)])
        client.send_json({"type": "ping", "id": "after"})
        self.assertEqual((yield client.next_of("pong"))["id"], "after")

    @defer.inlineCallbacks
    def test_message_too_big(self):
        """A message over --max-message-size closes the connection with 1009."""
        client = yield self.open_client()
        client.sendMessage(json.dumps({"type": "ping", "pad": "x" * 2000}).encode())
        yield client.closed
        self.assertEqual(client.close_code, 1009)
        yield wait_until(lambda: self.server.hub.connection_count == 0)


class LifecycleTests(unittest.TestCase):
    """Connections leave the registry however they end."""

    @defer.inlineCallbacks
    def test_clean_close(self):
        """A client's close handshake removes it from the registry."""
        server = start_server(self)
        client = yield connect(self, server, server.token())
        self.assertEqual(server.hub.connection_count, 1)
        client.sendClose(1000)
        yield client.closed
        yield wait_until(lambda: server.hub.connection_count == 0)

    @defer.inlineCallbacks
    def test_several_connections_cleaned(self):
        """Several tracked connections are all cleaned up as they close."""
        server = start_server(self)
        clients = []
        for name in ("a", "a", "b", "c"):
            clients.append((yield connect(self, server, server.token(name))))
        self.assertEqual(server.hub.connection_count, 4)
        for client in clients:
            client.sendClose(1000)
        yield wait_until(lambda: server.hub.connection_count == 0)
        self.assertEqual(server.hub.users(), [])

    @defer.inlineCallbacks
    def test_sudden_disconnect(self):
        """A client that vanishes without a close handshake is removed, and broadcast goes on."""
        server = start_server(self)
        gone = yield connect(self, server, server.token("gone"))
        stays = yield connect(self, server, server.token("stays"))
        yield stays.next_of("snapshot")
        gone.transport.abortConnection()
        yield wait_until(lambda: server.hub.connection_count == 1)
        server.hub.publish("agent:status", {"agentId": "a1", "status": "idle",
                                            "timestamp": "2026-01-01T00:00:00.000Z"})
        frame = yield stays.next_of("agent:status")
        self.assertEqual(frame["payload"]["agentId"], "a1")

    @defer.inlineCallbacks
    def test_ping_timeout(self):
        """A peer that stops answering pings is dropped within interval + timeout + 1 s."""
        server = start_server(self, ["--ping-interval", "1", "--ping-timeout", "1"])
        silent = _SilentPeer(upgrade_request(headers=bearer(server.token())))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), silent)
        yield wait_until(lambda: server.hub.connection_count == 1)
        started = reactor.seconds()
        yield wait_until(lambda: server.hub.connection_count == 0, timeout=5)
        self.assertLess(reactor.seconds() - started, 1 + 1 + 1)
        yield silent.lost

    @defer.inlineCallbacks
    def test_heartbeats(self):
        """Heartbeat frames arrive every --heartbeat-interval with timestamp and lastSeq."""
        server = start_server(self, ["--heartbeat-interval", "0.1"])
        client = yield connect(self, server, server.token())
        first = yield client.next_of("heartbeat")
        second = yield client.next_of("heartbeat")
        self.assertEqual(set(first["payload"]), {"timestamp", "lastSeq"})
        self.assertLessEqual(first["ts"], second["ts"])
        self.assertEqual(first["payload"]["timestamp"], first["ts"])

    @defer.inlineCallbacks
    def test_handshake_deadline(self):
        """A client that has not sent its whole handshake in time is dropped."""
        server = start_server(self)
        server.service.site.handshake_timeout = 0.3
        slow = _SilentPeer(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), slow)
        started = reactor.seconds()
        yield slow.lost
        self.assertLess(reactor.seconds() - started, 2)

    @defer.inlineCallbacks
    def test_rapid_cycles_leave_nothing(self):
        """50 connect/disconnect cycles leave no connection, timer or protocol object behind."""
        server = start_server(self)
        yield self._cycle(server, 2)  # warm up lazily created timers
        gc.collect()
        calls_before = len(reactor.getDelayedCalls())
        yield self._cycle(server, 50)
        yield wait_until(lambda: server.hub.connection_count == 0)
        # Timers of the last closes (Autobahn's close handshake) may still be winding down.
        yield wait_until(lambda: len(reactor.getDelayedCalls()) <= calls_before, timeout=10)
        gc.collect()
        self.assertEqual(server.hub.users(), [])
        alive = [o for o in gc.get_objects() if isinstance(o, HubServerProtocol)]
        self.assertEqual(alive, [])

    @defer.inlineCallbacks
    def _cycle(self, server, count):
        for i in range(count):
            client = yield connect(self, server, server.token(f"u{i % 3}"))
            yield client.next_of("snapshot")
            client.sendClose(1000)
            yield client.closed
        yield wait_until(lambda: server.hub.connection_count == 0)

    @defer.inlineCallbacks
    def test_shutdown_closes_with_1001(self):
        """
        Stopping the service closes every client with 1001 (going away), and waits for their
        close handshakes before it reports itself stopped; it stops listening first, so a new
        connection meanwhile is refused at once.
        """
        server = start_server(self)
        clients = []
        for name in ("a", "b", "c"):
            clients.append((yield connect(self, server, server.token(name))))
        stopped = server.service.stopService()
        yield self.assertFailure(
            raw_request(server.port, upgrade_request(headers=bearer(server.token("late")))),
            error.ConnectionRefusedError,
        )
        self.assertFalse(stopped.called)
        yield stopped
        self.assertEqual(server.hub.connection_count, 0)
        for client in clients:
            yield client.closed
            self.assertEqual(client.close_code, 1001)


class _SilentPeer(Protocol):
    """Sends C{request} and then reads nothing and answers nothing (no pongs)."""

    def __init__(self, request):
        self.request = request
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def connectionLost(self, reason):
        self.lost.callback(None)


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
