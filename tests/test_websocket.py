"""
End-to-end tests of the WebSocket (L{mission_control.protocol}) over real loopback sockets, from
the upgrade on: broadcast, client frames, liveness, cleanup.  Clients are Autobahn's own, or raw
sockets where a well-behaved client cannot produce the bad input.  The handshake and its refusals
are tested in L{tests.test_handshake}, admission (Origins, caps) in L{tests.test_factory}.
Publish frames in flight together are stored by group commits, each durable when answered.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from mission_control.events import STATUSES
from mission_control.protocol import HubServerProtocol
from tests.helpers import (
    SilentPeer,
    bearer,
    connect,
    http_request,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


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


class GroupCommitTests(unittest.TestCase):
    """Publish frames in flight together over a real socket, stored by group commits."""

    @defer.inlineCallbacks
    def test_many_publishes_in_flight_all_durable(self):
        """
        500 publishes sent at once on one connection are stored in groups of more than one:
        every frame is answered published, in the order sent, with consecutive seqs, and every
        event is in the database file when the reply arrives (read by another connection to it).
        """
        server = start_server(self, ["--max-messages-per-second", "100000"])
        groups = []
        store = server.hub.store
        append_each = store.append_each

        def counted(items, ts, now):
            groups.append(len(items))
            return append_each(items, ts, now)

        store.append_each = counted
        client = yield connect(self, server, server.token("op", role="operator"))
        yield client.next_of("snapshot")
        path = os.path.join(server.options["data-dir"], "mission-control.sqlite3")
        reader = sqlite3.connect(path)
        self.addCleanup(reader.close)
        count = 500
        for i in range(count):
            client.send_json({"type": "publish", "id": f"p{i}", "event": {
                "type": "agent:status",
                "payload": {"agentId": f"g{i % 7}", "status": "busy", "message": f"n{i}"}}})
        replies, found = [], []
        for _ in range(count):
            reply = yield client.next_of("published", "error")
            replies.append(reply)
            row = reader.execute("SELECT payload FROM events WHERE seq = ?",
                                 (reply["payload"].get("seq"),)).fetchone()
            found.append(None if row is None else json.loads(row[0])["message"])
        self.assertEqual([r["id"] for r in replies], [f"p{i}" for i in range(count)])
        self.assertEqual(found, [f"n{i}" for i in range(count)])
        seqs = [r["payload"]["seq"] for r in replies]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + count)))
        self.assertEqual((sum(groups), max(groups) > 1), (count, True))


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
        self.successResultOf(server.hub.publish(
            "agent:status", {"agentId": "a1", "status": "idle",
                             "timestamp": "2026-01-01T00:00:00.000Z"}))
        frame = yield stays.next_of("agent:status")
        self.assertEqual(frame["payload"]["agentId"], "a1")

    @defer.inlineCallbacks
    def test_ping_timeout(self):
        """A peer that stops answering pings is dropped within interval + timeout + 1 s."""
        server = start_server(self, ["--ping-interval", "1", "--ping-timeout", "1"])
        silent = SilentPeer(upgrade_request(headers=bearer(server.token())))
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
        slow = SilentPeer(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
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
