"""
Channels, client publishing, presence and agent liveness end to end, over real sockets.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from tests.helpers import (
    SilentPeer,
    bearer,
    connect,
    http_request,
    raw_handshake,
    raw_request,
    start_server,
    upgrade_request,
    wait_until,
)


class ChannelE2ETests(unittest.TestCase):
    def setUp(self):
        self.server = start_server(self)
        self.admin = self.server.token("root", role="admin")

    def status(self, agent, status="busy"):
        return raw_request(self.server.port, http_request(
            "POST", f"/api/agents/{agent}/status", {"status": status}, token=self.admin))

    @defer.inlineCallbacks
    def test_filtering(self):
        """A client on agents:a1 receives a1's statuses and never a2's."""
        client = yield connect(self, self.server, self.server.token("v"),
                               query="channels=agents:a1")
        welcome = yield client.next_of("welcome")
        self.assertEqual(welcome["payload"]["channels"], ["agents:a1"])
        yield client.next_of("snapshot")
        yield self.status("a2")
        yield self.status("a1")
        frame = yield client.next_of("agent:status")
        self.assertEqual(frame["payload"]["agentId"], "a1")
        self.assertEqual([f["payload"]["agentId"] for f in client.received
                          if f["type"] == "agent:status"], ["a1"])

    @defer.inlineCallbacks
    def test_subscribe_unsubscribe(self):
        """subscribe and unsubscribe are answered with the resulting set, and take effect."""
        client = yield connect(self, self.server, self.server.token("v"))
        yield client.next_of("snapshot")
        client.send_json({"type": "unsubscribe", "id": "u", "channels": ["agents"]})
        reply = yield client.next_of("subscribed")
        self.assertEqual((reply["id"], reply["payload"]["channels"]), ("u", ["sessions"]))
        yield self.status("a1")
        client.send_json({"type": "subscribe", "id": "s", "channels": ["agents:a1"]})
        reply = yield client.next_of("subscribed")
        self.assertEqual(reply["payload"]["channels"], ["agents:a1", "sessions"])
        yield self.status("a1", "idle")
        frame = yield client.next_of("agent:status")
        self.assertEqual(frame["payload"]["status"], "idle")

    @defer.inlineCallbacks
    def test_claim_patterns(self):
        """A token whose claim is agents:* gets agents:<id> but not agents, nor sessions."""
        token = self.server.token("v", channels=["agents:*"])
        client = yield connect(self, self.server, token,
                               query="channels=agents,agents:a1,sessions")
        welcome = yield client.next_of("welcome")
        self.assertEqual(welcome["payload"]["channels"], ["agents:a1"])
        error = yield client.next_of("error")
        self.assertEqual(error["payload"]["code"], "forbidden")

    @defer.inlineCallbacks
    def test_bad_claim_refused(self):
        """A token with a malformed channels claim is refused at the handshake."""
        token = self.server.token("v", channels=["not a channel"])
        response = yield raw_request(self.server.port, upgrade_request(headers=bearer(token)))
        self.assertEqual((response.status, response.reason), (401, "invalid claims"))

    @defer.inlineCallbacks
    def test_bad_channels_param(self):
        """An invalid channel name in the query is a 400."""
        response = yield raw_request(self.server.port, upgrade_request(
            path="/ws?channels=agents,bogus", headers=bearer(self.server.token("v"))))
        self.assertEqual((response.status, response.reason), (400, "invalid channels"))

    @defer.inlineCallbacks
    def test_client_publish(self):
        """An agent publishes its status over its socket; a viewer is refused."""
        watcher = yield connect(self, self.server, self.server.token("v"))
        yield watcher.next_of("snapshot")
        agent = yield connect(self, self.server, self.server.token("a1", role="agent"))
        yield agent.next_of("snapshot")
        agent.send_json({"type": "publish", "id": "p1", "event": {
            "type": "agent:status", "payload": {"agentId": "a1", "status": "busy"}}})
        published = yield agent.next_of("published")
        seen = yield watcher.next_of("agent:status")
        while seen["payload"]["status"] != "busy":
            seen = yield watcher.next_of("agent:status")
        self.assertEqual(seen["seq"], published["payload"]["seq"])
        watcher.send_json({"type": "publish", "id": "p2", "event": {
            "type": "agent:status", "payload": {"agentId": "a1", "status": "idle"}}})
        error = yield watcher.next_of("error")
        self.assertEqual((error["id"], error["payload"]["code"]), ("p2", "forbidden"))

    @defer.inlineCallbacks
    def test_resume_with_narrow_subscription(self):
        """Resuming on agents:a1 replays only a1's missed events, then resumed over the range."""
        for agent in ("a1", "a2", "a1", "a2"):
            yield self.status(agent)
        client = yield connect(self, self.server, self.server.token("v"),
                               query=f"since=0&epoch={self.server.hub.store.epoch}"
                                     "&channels=agents:a1")
        resumed = yield client.next_of("resumed")
        self.assertEqual([f["seq"] for f in client.received if f["type"] == "agent:status"],
                         [1, 3])
        self.assertEqual(resumed["payload"]["to"], 4)


class PresenceE2ETests(unittest.TestCase):
    """presence:join/leave and GET /api/presence with several connections per user."""

    @defer.inlineCallbacks
    def test_presence(self):
        """One join for alice's two connections, one leave after both closed."""
        server = start_server(self)
        token = server.token("root", role="admin")
        watcher = yield connect(self, server, server.token("w"), query="channels=presence")
        yield watcher.next_of("snapshot")
        a = yield connect(self, server, server.token("alice", name="Alice"))
        b = yield connect(self, server, server.token("alice", name="Alice"))
        join = yield watcher.next_of("presence:join")
        self.assertEqual((join["payload"]["userId"], join["payload"]["name"]), ("alice", "Alice"))
        response = yield raw_request(server.port, http_request("GET", "/api/presence", token=token))
        alice = [p for p in response.json()["presence"] if p["id"] == "alice"][0]
        self.assertEqual(alice["connections"], 2)
        a.sendClose(1000)
        yield a.closed
        b.sendClose(1000)
        yield b.closed
        leave = yield watcher.next_of("presence:leave")
        self.assertEqual((leave["payload"]["userId"], leave["payload"]["connections"]),
                         ("alice", 0))
        joins = [f for f in watcher.received if f["type"] == "presence:join"]
        self.assertEqual(len(joins), 1)


class LivenessE2ETests(unittest.TestCase):
    """An agent that dies shows as offline within the ping timeout, with no code of its own."""

    @defer.inlineCallbacks
    def test_offline_on_close(self):
        """An agent's socket opens: online; it closes: offline, connection closed."""
        server = start_server(self)
        watcher = yield connect(self, server, server.token("v"))
        yield watcher.next_of("snapshot")
        agent = yield connect(self, server, server.token("a7", role="agent"))
        online = yield watcher.next_of("agent:status")
        self.assertEqual((online["payload"]["agentId"], online["payload"]["status"]),
                         ("a7", "online"))
        agent.sendClose(1000)
        offline = yield watcher.next_of("agent:status")
        self.assertEqual((offline["payload"]["status"], offline["payload"]["message"]),
                         ("offline", "connection closed"))

    @defer.inlineCallbacks
    def test_offline_on_ping_timeout(self):
        """An agent process that freezes is offline within interval + timeout + 1 s."""
        server = start_server(self, ["--ping-interval", "1", "--ping-timeout", "1"])
        watcher = yield connect(self, server, server.token("v"))
        yield watcher.next_of("snapshot")
        frozen = SilentPeer(upgrade_request(headers=bearer(server.token("a8", role="agent"))))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), frozen)
        yield watcher.next_of("agent:status")
        started = reactor.seconds()
        offline = yield watcher.next_of("agent:status")
        self.assertLess(reactor.seconds() - started, 1 + 1 + 1 + 0.5)
        self.assertEqual(offline["payload"]["status"], "offline")
        self.assertIn("timed out", offline["payload"]["message"])
        yield frozen.lost


class ChurnTests(unittest.TestCase):
    """Connection churn cannot flood the store and the audience with liveness events."""

    @defer.inlineCallbacks
    def test_connect_close_loop(self):
        """
        An agent token opening and dropping connections in a loop gets 429 past its handshake
        burst, and the whole loop stores a couple of liveness events, ending offline.
        """
        server = start_server(self)
        watcher = yield connect(self, server, server.token("v"))
        yield watcher.next_of("snapshot")
        request = upgrade_request(headers=bearer(server.token("flapper", role="agent")))
        statuses = []
        for _ in range(60):
            response = yield raw_handshake(server.port, request)
            statuses.append(response.status)
        self.assertIn(429, statuses)
        self.assertLessEqual(statuses.count(101), 25)
        yield wait_until(lambda: server.hub.connection_count == 1)

        def seen():
            return [f["payload"]["status"] for f in watcher.received
                    if f["type"] == "agent:status"]

        yield wait_until(lambda: seen()[-1:] == ["offline"], timeout=5)
        self.assertLessEqual(server.hub.store.last_seq, 3)
        self.assertEqual(seen()[0], "online")
