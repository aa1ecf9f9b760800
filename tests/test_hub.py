"""
Tests for L{mission_control.hub}: the registry, fan-out, heartbeats and client frames, without
sockets (fake connections, a L{Clock}).  The same behaviour over real sockets is in test_websocket.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from zope.interface import implementer

from mission_control.auth import Principal, Refusal
from mission_control.events import ValidationError
from mission_control.hub import Hub, IConnection
from mission_control.store import MemoryStore


@implementer(IConnection)
class FakeConnection:
    """Records what the hub hands it; C{open} false models a half-closed connection."""

    def __init__(self, sub="alice", role="viewer"):
        self.principal = Principal(sub=sub, role=role, name=None, expires_at=0)
        self.connection_id = None
        self.delivered = []
        self.sent = []
        self.closed_with = None
        self.open = True

    def deliver(self, prepared):
        if self.open:
            self.delivered.append(json.loads(prepared))

    def send_frame(self, frame):
        self.sent.append(frame)

    def close(self, code, reason):
        self.closed_with = (code, reason)


class HubTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.prepared = []

        def prepare(data):
            self.prepared.append(data)
            return data

        self.hub = Hub(self.clock, MemoryStore(), heartbeat_interval=30, prepare=prepare,
                       max_connections=5, max_connections_per_user=3)

    def connect(self, sub="alice", role="viewer"):
        conn = FakeConnection(sub, role)
        self.hub.register(conn)
        return conn

    def principal(self, sub="op", role="operator"):
        return Principal(sub=sub, role=role, name=None, expires_at=0)


class RegistryTests(HubTestCase):
    """Connections are tracked by user id."""

    def test_fake_provides_interface(self):
        """The fake used here is a complete IConnection."""
        verifyObject(IConnection, FakeConnection())

    def test_register_returns_welcome_then_snapshot(self):
        """The first frames are welcome (with connection id, user, heartbeat, lastSeq) and snapshot."""
        conn = FakeConnection("alice", "operator")
        welcome, snapshot = self.hub.register(conn)
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(welcome["payload"]["connectionId"], conn.connection_id)
        self.assertEqual(welcome["payload"]["user"], {"id": "alice", "name": None, "role": "operator"})
        self.assertEqual(welcome["payload"]["heartbeatInterval"], 30)
        self.assertEqual(welcome["payload"]["lastSeq"], 0)
        self.assertEqual(snapshot["type"], "snapshot")
        self.assertEqual(snapshot["payload"], {"agents": [], "sessions": [], "lastSeq": 0})

    def test_several_connections_per_user(self):
        """One user may hold several connections; each is counted and listed."""
        a, b = self.connect("alice"), self.connect("alice")
        self.connect("bob")
        self.assertNotEqual(a.connection_id, b.connection_id)
        self.assertEqual(self.hub.connection_count, 3)
        self.assertEqual(self.hub.connections_of("alice"), frozenset([a, b]))
        self.assertEqual(self.hub.users(), [{"id": "alice", "connections": 2},
                                            {"id": "bob", "connections": 1}])

    def test_unregister(self):
        """Unregistering removes the connection, and the user when it was their last."""
        a, b = self.connect("alice"), self.connect("alice")
        self.hub.unregister(a)
        self.assertEqual(self.hub.connections_of("alice"), frozenset([b]))
        self.hub.unregister(b)
        self.assertEqual((self.hub.connection_count, self.hub.users()), (0, []))

    def test_unregister_twice_or_unknown(self):
        """Unregistering twice, or a connection never registered, changes nothing."""
        a = self.connect()
        self.hub.unregister(a)
        self.hub.unregister(a)
        self.hub.unregister(FakeConnection())
        self.assertEqual(self.hub.connection_count, 0)

    def test_admit_caps(self):
        """Past the per-user cap: 429; past the total cap: 503; after stop: 503."""
        for _ in range(3):
            self.hub.admit(self.principal("alice"))
            self.connect("alice")
        error = self.assertRaises(Refusal, self.hub.admit, self.principal("alice"))
        self.assertEqual(error.status, 429)
        self.connect("bob")
        self.connect("carol")
        error = self.assertRaises(Refusal, self.hub.admit, self.principal("dave"))
        self.assertEqual((error.status, error.reason), (503, "too many connections"))
        self.hub.stop()
        error = self.assertRaises(Refusal, self.hub.admit, self.principal("bob"))
        self.assertEqual((error.status, error.reason), (503, "shutting down"))

    def test_close_all(self):
        """close_all asks every connection to close with 1001 by default."""
        a, b = self.connect("alice"), self.connect("bob")
        self.hub.close_all()
        self.assertEqual((a.closed_with[0], b.closed_with[0]), (1001, 1001))


class BroadcastTests(HubTestCase):
    """Publishing and fan-out."""

    def test_broadcast_reaches_everyone_encoded_once(self):
        """One publish is encoded once and delivered to every connection."""
        conns = [self.connect(f"u{i}") for i in range(4)]
        frame = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        self.assertEqual(len(self.prepared), 1)
        for conn in conns:
            self.assertEqual(conn.delivered, [frame])

    def test_envelope_and_seq(self):
        """Published events carry type, payload, ts and an increasing seq."""
        first = self.hub.publish_for(self.principal(), "agent:status", {"status": "online"}, "a1")
        second = self.hub.publish_for(self.principal(), "session:activity",
                                      {"activity": "started"}, "s1")
        self.assertEqual(first["type"], "agent:status")
        self.assertEqual(first["payload"]["agentId"], "a1")
        self.assertEqual(first["ts"], "2027-01-15T08:00:00.000Z")
        self.assertEqual((first["seq"], second["seq"]), (1, 2))
        self.assertEqual(second["payload"]["sessionId"], "s1")

    def test_broadcast_to_nobody(self):
        """Publishing with no connection stores the event and encodes nothing."""
        frame = self.hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        self.assertEqual((frame["seq"], self.prepared), (1, []))
        self.assertEqual(self.hub.store.agents(), [frame["payload"]])

    def test_half_closed_connection_skipped(self):
        """A connection that is closing does not receive, and does not stop the others."""
        closing, live = self.connect("a"), self.connect("b")
        closing.open = False
        self.hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        self.assertEqual((len(closing.delivered), len(live.delivered)), (0, 1))

    def test_connection_closing_during_fanout(self):
        """A connection that unregisters itself while being delivered to does not break fan-out."""
        hub = self.hub
        others = [self.connect(f"u{i}") for i in range(3)]

        class Leaving(FakeConnection):
            def deliver(self, prepared):
                hub.unregister(self)

        leaving = Leaving("z")
        hub.register(leaving)
        hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        self.assertTrue(all(len(c.delivered) == 1 for c in others))
        self.assertEqual(hub.connection_count, 3)

    def test_snapshot_has_latest_state(self):
        """The snapshot holds the latest status per agent and activity per session."""
        op = self.principal()
        self.hub.publish_for(op, "agent:status", {"status": "online"}, "a1")
        self.hub.publish_for(op, "agent:status", {"status": "busy"}, "a1")
        self.hub.publish_for(op, "agent:status", {"status": "idle"}, "a2")
        self.hub.publish_for(op, "session:activity", {"activity": "started"}, "s1")
        _, snapshot = self.hub.register(FakeConnection())
        self.assertEqual([a["status"] for a in snapshot["payload"]["agents"]], ["busy", "idle"])
        self.assertEqual(snapshot["payload"]["lastSeq"], 4)
        self.assertEqual(len(snapshot["payload"]["sessions"]), 1)


class PublishPermissionTests(HubTestCase):
    """Who may publish what, through publish_for."""

    def test_viewer_refused(self):
        """A viewer may not publish anything."""
        viewer = self.principal("v", "viewer")
        for event_type, body, subject in (("agent:status", {"status": "idle"}, "a1"),
                                          ("session:activity", {"activity": "x"}, "s1")):
            error = self.assertRaises(Refusal, self.hub.publish_for, viewer, event_type, body, subject)
            self.assertEqual(error.status, 403)
        self.assertEqual(self.hub.store.last_seq, 0)

    def test_agent_only_for_itself(self):
        """An agent publishes its own status, not another's."""
        agent = self.principal("a1", "agent")
        self.hub.publish_for(agent, "agent:status", {"status": "busy"}, "a1")
        error = self.assertRaises(Refusal, self.hub.publish_for, agent, "agent:status",
                                  {"status": "busy"}, "a2")
        self.assertEqual(error.status, 403)

    def test_agent_activity_attributed(self):
        """An agent's activity without agentId is attributed to it; naming another is refused."""
        agent = self.principal("a1", "agent")
        frame = self.hub.publish_for(agent, "session:activity", {"activity": "started"}, "s1")
        self.assertEqual(frame["payload"]["agentId"], "a1")
        error = self.assertRaises(Refusal, self.hub.publish_for, agent, "session:activity",
                                  {"activity": "started", "agentId": "a2"}, "s1")
        self.assertEqual(error.status, 403)

    def test_invalid_payload(self):
        """Bad payloads raise ValidationError and store nothing."""
        self.assertRaises(ValidationError, self.hub.publish_for, self.principal(), "agent:status",
                          {"status": "sleeping"}, "a1")
        self.assertRaises(ValidationError, self.hub.publish_for, self.principal(), "other", {}, None)
        self.assertEqual(self.hub.store.last_seq, 0)


class HeartbeatTests(HubTestCase):
    """Heartbeat frames on the injected clock."""

    def test_heartbeat_every_interval(self):
        """After start, every interval each connection gets a heartbeat with timestamp and lastSeq."""
        conn = self.connect()
        self.hub.start()
        self.clock.advance(29)
        self.assertEqual(conn.delivered, [])
        self.clock.advance(1)
        self.assertEqual(len(conn.delivered), 1)
        beat = conn.delivered[0]
        self.assertEqual(beat["type"], "heartbeat")
        self.assertEqual(beat["payload"], {"timestamp": beat["ts"], "lastSeq": 0})
        self.clock.advance(30)
        self.assertEqual(len(conn.delivered), 2)
        self.hub.stop()
        self.clock.advance(300)
        self.assertEqual(len(conn.delivered), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_off(self):
        """An interval of 0 schedules nothing."""
        hub = Hub(self.clock, MemoryStore(), heartbeat_interval=0)
        hub.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ClientFrameTests(HubTestCase):
    """Replies to client frames."""

    def reply(self, conn, value, binary=False):
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        return self.hub.handle_frame(conn, data, binary)

    def test_ping(self):
        """ping gets pong with the same id."""
        reply = self.reply(self.connect(), {"type": "ping", "id": "r1"})
        self.assertEqual((reply["type"], reply["id"], reply["payload"]), ("pong", "r1", {}))

    def test_ack(self):
        """ack records the position (never backwards) and replies with it."""
        conn = self.connect()
        for _ in range(5):
            self.hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        self.assertEqual(self.reply(conn, {"type": "ack", "seq": 4})["payload"], {"seq": 4})
        self.assertEqual(self.reply(conn, {"type": "ack", "seq": 2})["payload"], {"seq": 4})
        self.assertEqual(conn.acked_seq, 4)
        for bad in (-1, "3", 1.5, True, None, 6):
            reply = self.reply(conn, {"type": "ack", "seq": bad})
            self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "bad_request"))

    def test_errors(self):
        """Bad frames get error frames with a code, and the id when there was one."""
        conn = self.connect()
        cases = [
            (b"not json", "bad_request", None),
            (b"[]", "bad_request", None),
            ({"type": "dance", "id": "r2"}, "unknown_type", "r2"),
            ({"id": "r3"}, "bad_request", "r3"),
            ({"type": "subscribe", "id": "r4", "channels": []}, "not_supported", "r4"),
        ]
        for value, code, frame_id in cases:
            reply = self.reply(conn, value)
            self.assertEqual(reply["type"], "error")
            self.assertEqual(reply["payload"]["code"], code, value)
            self.assertEqual(reply.get("id"), frame_id)
            self.assertTrue(reply["payload"]["message"])

    def test_binary(self):
        """Binary frames get an error, not silence."""
        reply = self.reply(self.connect(), b'{"type":"ping"}', binary=True)
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "bad_request"))
