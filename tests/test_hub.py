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

from mission_control import auth
from mission_control import events as events_module
from mission_control.auth import Refusal, TokenVerifier
from mission_control.policy import Principal
from mission_control.events import ValidationError
from mission_control.hub import ConnectRequest, Hub, IConnection
from mission_control.store import IdempotencyConflict, MemoryStore, Retention

SECRET = b"k" * 32


FAR_FUTURE = 4_000_000_000.0


@implementer(IConnection)
class FakeConnection:
    """
    Records what the hub hands it, in order, in C{frames} (deliveries and direct sends alike);
    C{open} false models a half-closed connection, C{paused} a transport that takes no data.
    """

    def __init__(self, sub="alice", role="viewer", expires_at=FAR_FUTURE):
        self.principal = Principal(sub=sub, role=role, name=None, expires_at=expires_at)
        self.connection_id = None
        self.delivered = []
        self.frames = []
        self.closed_with = None
        self.open = True
        self.paused = False

    def deliver(self, prepared):
        if self.open:
            frame = json.loads(prepared)
            self.frames.append(frame)
            if frame["type"] != "snapshot":  # broadcasts only; the snapshot is in frames
                self.delivered.append(frame)

    def send_frame(self, frame):
        self.frames.append(json.loads(json.dumps(frame)))

    def send_stream(self, chunks, done):
        self.deliver(b"".join(chunks))
        done()

    def close(self, code, reason):
        self.closed_with = (code, reason)

    def bytes_waiting(self):
        return 0

    def types(self):
        return [f["type"] for f in self.frames]


class HeldStreamConnection(FakeConnection):
    """
    A connection whose streamed message completes only when the test says so; as the real one
    does, it keeps what is sent meanwhile (C{held}) until the message ends.
    """

    held = None

    def send_stream(self, chunks, done):
        self._stream, self.held = (chunks, done), []

    def deliver(self, prepared):
        if self.held is not None:
            self.held.append(("deliver", prepared))
        else:
            super().deliver(prepared)

    def send_frame(self, frame):
        if self.held is not None:
            self.held.append(("send_frame", frame))
        else:
            super().send_frame(frame)

    def finish(self):
        (chunks, done), held, self.held = self._stream, self.held, None
        self.deliver(b"".join(chunks))
        for method, value in held:
            getattr(self, method)(value)
        done()


class HubTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.prepared = []

        def prepare(data):
            self.prepared.append(data)
            return data

        self.verifier = TokenVerifier(key=SECRET, algorithms=["HS256"], leeway=5)
        self.hub = Hub(self.clock, MemoryStore(), heartbeat_interval=30, prepare=prepare,
                       max_connections=5, max_connections_per_user=3, verifier=self.verifier,
                       message_rate=2, message_burst=4)

    def connect(self, sub="alice", role="viewer", request=None, **kwargs):
        conn = FakeConnection(sub, role, **kwargs)
        self.hub.register(conn, request)
        return conn

    def publish(self, count=1, agent="a1"):
        return [self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, agent)
                for _ in range(count)]

    def principal(self, sub="op", role="operator"):
        return Principal(sub=sub, role=role, name=None, expires_at=0)


class RegistryTests(HubTestCase):
    """Connections are tracked by user id."""

    def test_fake_provides_interface(self):
        """The fake used here is a complete IConnection."""
        verifyObject(IConnection, FakeConnection())

    def test_register_sends_welcome_then_snapshot(self):
        """The first frames are welcome (with connection id, user, heartbeat, lastSeq) and snapshot."""
        conn = self.connect("alice", "operator")
        welcome, snapshot = conn.frames
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(welcome["payload"]["connectionId"], conn.connection_id)
        self.assertEqual(welcome["payload"]["user"], {"id": "alice", "name": None, "role": "operator"})
        self.assertEqual(welcome["payload"]["heartbeatInterval"], 30)
        self.assertEqual(welcome["payload"]["lastSeq"], 0)
        self.assertEqual(welcome["payload"]["epoch"], self.hub.store.epoch)
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

    def test_close_all_in_batches(self):
        """close_all asks every connection to close with 1001, close_batch per reactor turn."""
        self.hub.close_batch = 2
        conns = [self.connect(f"u{i}") for i in range(5)]
        self.hub.close_all()
        self.assertEqual([c.closed_with is not None for c in conns], [True, True] + [False] * 3)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual({c.closed_with for c in conns}, {(1001, "server going away")})


class BroadcastTests(HubTestCase):
    """Publishing and fan-out."""

    def test_broadcast_reaches_everyone_encoded_once(self):
        """One publish is encoded once and delivered to every connection."""
        conns = [self.connect(f"u{i % 3}") for i in range(4)]
        del self.prepared[:]  # the snapshots
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

    def test_snapshot_encoded_once_per_state(self):
        """
        Connections that arrive while the state is unchanged share one joined snapshot, and no
        payload of the state is encoded again for them.
        """
        self.publish(2)
        encoded = []
        original = events_module.encode_json

        def counting(value):
            encoded.append(value)
            return original(value)

        self.patch(events_module, "encode_json", counting)
        del self.prepared[:]
        a, b, c = self.connect("a"), self.connect("b"), self.connect("c")
        self.assertEqual([v for v in encoded if isinstance(v, dict)], [])
        heads = [data[:data.rindex(b'"ts":') + 5] for data in self.prepared]
        self.assertEqual(heads, [self.hub._snapshot_cache[1]] * 3)
        self.assertEqual(a.frames[1]["payload"], b.frames[1]["payload"])
        self.assertEqual(a.frames[1]["payload"], c.frames[1]["payload"])
        cached = self.hub._snapshot_cache[1]
        self.publish(1)
        self.connect("d")
        self.assertIsNot(self.hub._snapshot_cache[1], cached)
        self.assertEqual(self.hub._snapshot_cache[0], 3)

    def test_large_snapshot_streams_then_catches_up(self):
        """
        A snapshot past the stream threshold goes out as a stream; what is published while it
        streams follows it from the history (no resumed frame), and then the connection is live.
        """
        self.hub.snapshot_stream_threshold = 0
        self.publish(2)
        conn = HeldStreamConnection("alice")
        self.hub.register(conn)
        self.assertEqual(conn.types(), ["welcome"])
        self.publish(2)
        self.assertEqual(conn.types(), ["welcome"])  # not live while its snapshot streams
        conn.finish()
        self.assertEqual(conn.types(), ["welcome", "snapshot", "agent:status", "agent:status"])
        self.assertEqual(conn.frames[1]["payload"]["lastSeq"], 2)
        self.assertEqual([f["seq"] for f in conn.frames[2:]], [3, 4])
        self.publish(1)
        self.assertEqual(conn.frames[-1]["seq"], 5)

    def test_snapshot_stream_of_a_closed_connection(self):
        """A connection closed while its snapshot streams is forgotten; the end changes nothing."""
        self.hub.snapshot_stream_threshold = 0
        self.publish(1)
        conn = HeldStreamConnection("alice")
        self.hub.register(conn)
        self.hub.unregister(conn)
        conn.finish()
        self.publish(1)
        self.assertEqual(conn.types(), ["welcome", "snapshot"])
        self.assertEqual(self.hub.connection_count, 0)

    def test_broadcast_to_nobody(self):
        """Publishing with no connection stores the event and encodes nothing."""
        frame = self.hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        self.assertEqual((frame["seq"], self.prepared), (1, []))
        self.assertEqual(self.hub.store.agents(), [frame["payload"]])

    def test_half_closed_connection_skipped(self):
        """A connection that is closing does not receive, and does not stop the others."""
        closing, live = self.connect("a"), self.connect("b")  # noqa
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
        snapshot = self.connect().frames[1]
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
        self.hub.trim_interval = 10_000
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
        self.hub.unregister(conn)
        self.hub.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_off(self):
        """An interval of 0 schedules nothing."""
        hub = Hub(self.clock, MemoryStore(), heartbeat_interval=0)
        hub.trim_interval = 7
        hub.start()
        self.assertEqual(sorted(c.getTime() - self.clock.seconds()
                                for c in self.clock.getDelayedCalls()),
                         [7, hub.reconnect_grace])  # the retention pass and the liveness sweep


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
        self.publish(5)
        self.assertEqual(self.reply(conn, {"type": "ack", "seq": 4})["payload"], {"seq": 4})
        self.assertEqual(self.reply(conn, {"type": "ack", "seq": 2})["payload"], {"seq": 4})
        self.assertEqual(self.hub.connection_details()[0]["ackedSeq"], 4)
        for bad in (-1, "3", 1.5, True, None, 6):
            self.clock.advance(1)  # stay within the rate limit
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
            ({"type": "subscribe", "id": "r4", "channels": []}, "bad_request", "r4"),
        ]
        for value, code, frame_id in cases:
            self.clock.advance(1)
            reply = self.reply(conn, value)
            self.assertEqual(reply["type"], "error")
            self.assertEqual(reply["payload"]["code"], code, value)
            self.assertEqual(reply.get("id"), frame_id)
            self.assertTrue(reply["payload"]["message"])

    def test_binary(self):
        """Binary frames get an error, not silence."""
        reply = self.reply(self.connect(), b'{"type":"ping"}', binary=True)
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "bad_request"))


class ResumeTests(HubTestCase):
    """A connection with since and epoch gets what it missed, then live events."""

    def resume(self, since, epoch=None, client=None, sub="alice"):
        epoch = self.hub.store.epoch if epoch is None else epoch
        return self.connect(sub, request=ConnectRequest(since=since, epoch=epoch, client=client))

    def seqs(self, conn):
        return [f["seq"] for f in conn.frames if "seq" in f]

    def test_replays_missed_events_then_resumed(self):
        """welcome, the events after since in order, then resumed {recovered, from, to}."""
        self.publish(5)
        conn = self.resume(2)
        self.assertEqual(conn.types(), ["welcome"] + ["agent:status"] * 3 + ["resumed"])
        self.assertEqual(self.seqs(conn), [3, 4, 5])
        self.assertEqual(conn.frames[-1]["payload"],
                         {"recovered": True, "from": 3, "to": 5, "epoch": self.hub.store.epoch})
        self.publish(1)
        self.assertEqual(self.seqs(conn), [3, 4, 5, 6])

    def test_nothing_missed(self):
        """Resuming at lastSeq replays nothing and says recovered with an empty range."""
        self.publish(2)
        conn = self.resume(2)
        self.assertEqual(conn.types(), ["welcome", "resumed"])
        self.assertEqual(conn.frames[-1]["payload"]["recovered"], True)

    def test_publishing_during_a_paged_replay(self):
        """Events published while a long replay is paged out arrive exactly once, in order."""
        self.hub.replay_batch = 3
        self.publish(10)
        conn = self.resume(1)
        self.assertEqual(self.seqs(conn), [2, 3, 4])
        for _ in range(20):
            self.publish(2)
            self.clock.advance(0)
        self.assertEqual(self.seqs(conn), list(range(2, 51)))
        self.assertEqual(conn.types().count("resumed"), 1)

    def test_replay_waits_for_a_paused_transport(self):
        """While the transport is paused nothing is replayed; writable() resumes the replay."""
        self.hub.replay_batch = 2
        self.publish(6)
        conn = FakeConnection("alice")
        conn.paused = True
        self.hub.register(conn, ConnectRequest(since=0, epoch=self.hub.store.epoch))
        self.clock.advance(0)
        self.assertEqual(self.seqs(conn), [])
        conn.paused = False
        self.hub.writable(conn)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.seqs(conn), [1, 2, 3, 4, 5, 6])

    def test_replay_stops_mid_page_when_paused(self):
        """A transport that pauses in the middle of a page gets no more of it until writable()."""
        self.publish(6)
        conn = FakeConnection("alice")
        sent = []

        def send_frame(frame):
            sent.append(frame.get("seq"))
            if frame.get("seq") == 2:
                conn.paused = True  # the kernel stopped taking data after seq 2

        conn.send_frame = send_frame
        self.hub.register(conn, ConnectRequest(since=0, epoch=self.hub.store.epoch))
        self.clock.advance(0)
        self.assertEqual(sent, [None, 1, 2])
        conn.paused = False
        self.hub.writable(conn)
        self.clock.advance(0)
        self.assertEqual(sent, [None, 1, 2, 3, 4, 5, 6, None])

    def test_other_epoch(self):
        """Another epoch: recovered false (reason epoch) and a fresh snapshot."""
        self.publish(3)
        conn = self.resume(1, epoch="someotherepoch")
        self.assertEqual(conn.types(), ["welcome", "resumed", "snapshot"])
        self.assertEqual(conn.frames[1]["payload"]["recovered"], False)
        self.assertEqual(conn.frames[1]["payload"]["reason"], "epoch")

    def test_too_old(self):
        """since older than the retained history: recovered false (too_old) and a snapshot."""
        hub = Hub(self.clock, MemoryStore(Retention(max_events=3)))
        for _ in range(10):
            hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        hub.store.trim(self.clock.seconds())
        conn = FakeConnection()
        hub.register(conn, ConnectRequest(since=2, epoch=hub.store.epoch))
        self.assertEqual(conn.types(), ["welcome", "resumed", "snapshot"])
        self.assertEqual(conn.frames[1]["payload"]["reason"], "too_old")
        recent = FakeConnection()
        hub.register(recent, ConnectRequest(since=7, epoch=hub.store.epoch))
        self.assertEqual([f.get("seq") for f in recent.frames[1:4]], [8, 9, 10])

    def test_ahead(self):
        """since beyond lastSeq (a client of a restored backup): recovered false."""
        self.publish(1)
        conn = self.resume(5)
        self.assertEqual(conn.frames[1]["payload"]["reason"], "ahead")

    def test_named_client_resumes_from_its_ack(self):
        """With a client name, acks are kept; the next connection without since resumes there."""
        self.publish(4)
        first = self.connect("alice", request=ConnectRequest(client="board"))
        self.hub.handle_frame(first, b'{"type":"ack","seq":3}', False)
        self.hub.unregister(first)
        self.publish(2)
        again = self.connect("alice", request=ConnectRequest(client="board"))
        self.assertEqual(self.seqs(again), [4, 5, 6])
        other_user = self.connect("bob", request=ConnectRequest(client="board"))
        self.assertEqual(other_user.types(), ["welcome", "snapshot"])

    def test_connect_request_from_params(self):
        """since, epoch and client are read and checked; malformed ones are a 400."""
        request = ConnectRequest.from_params({"since": ["12"], "epoch": ["ab12"], "client": ["c1"]})
        self.assertEqual((request.since, request.epoch, request.client), (12, "ab12", "c1"))
        for params in ({"since": ["-1"]}, {"since": ["x"]}, {"since": ["1" * 30]},
                       {"epoch": ["a b"]}, {"client": ["bad name"]}):
            error = self.assertRaises(Refusal, ConnectRequest.from_params, params)
            self.assertEqual(error.status, 400)


class TokenLifecycleTests(HubTestCase):
    """Expiry, the warning before it, and fresh tokens over the connection."""

    def token(self, sub="alice", ttl=300):
        return auth.mint_token(SECRET, sub, self.clock.seconds(), ttl=ttl)

    def auth(self, conn, token):
        return self.hub.handle_frame(conn, json.dumps({"type": "auth", "id": "t1", "token": token})
                                     .encode(), False)

    def test_warning_then_4001(self):
        """auth:expiring a minute before exp, close 4001 at exp + leeway, not before."""
        now = self.clock.seconds()
        conn = self.connect(expires_at=now + 300)
        self.clock.advance(239)
        self.assertNotIn("auth:expiring", conn.types())
        self.clock.advance(1)
        self.assertEqual(conn.frames[-1]["type"], "auth:expiring")
        self.assertEqual(conn.frames[-1]["payload"]["secondsLeft"], 60)
        self.clock.advance(64)
        self.assertIsNone(conn.closed_with)
        self.clock.advance(1)
        self.assertEqual(conn.closed_with, (4001, "token expired"))

    def test_fresh_token_moves_the_deadline(self):
        """A valid token for the same sub is answered auth:ok and the old deadline no longer holds."""
        now = self.clock.seconds()
        conn = self.connect(expires_at=now + 100)
        self.clock.advance(50)
        reply = self.auth(conn, self.token(ttl=1000))
        self.assertEqual((reply["type"], reply["id"]), ("auth:ok", "t1"))
        self.clock.advance(200)
        self.assertIsNone(conn.closed_with)
        self.clock.advance(1000)
        self.assertEqual(conn.closed_with[0], 4001)

    def test_same_expiry_is_warned_once(self):
        """
        A client that answers auth:expiring with a token of the same exp (its own, sent back)
        gets auth:ok but no second warning, at once or later: the warning is not a loop. A
        token that moves the exp is warned of again, a minute before its own end.
        """
        now = self.clock.seconds()
        conn = self.connect(expires_at=now + 100)
        same = auth.mint_token(SECRET, "alice", now, ttl=100)
        self.clock.advance(40)
        self.assertEqual(conn.types().count("auth:expiring"), 1)
        for _ in range(3):
            self.assertEqual(self.auth(conn, same)["type"], "auth:ok")
            self.clock.advance(0)
        self.clock.advance(30)
        self.assertEqual(conn.types().count("auth:expiring"), 1)
        later = self.token(ttl=170)  # exp at now + 240
        self.assertEqual(self.auth(conn, later)["type"], "auth:ok")
        self.clock.advance(109)
        self.assertEqual(conn.types().count("auth:expiring"), 1)
        self.clock.advance(1)
        self.assertEqual(conn.types().count("auth:expiring"), 2)

    def test_token_for_another_user(self):
        """A token for another sub gets an error frame and close 4003."""
        conn = self.connect()
        self.assertIsNone(self.auth(conn, self.token(sub="mallory")))
        self.assertEqual(conn.frames[-1]["payload"]["code"], "forbidden")
        self.assertEqual(conn.closed_with[0], 4003)

    def test_invalid_token(self):
        """An invalid or expired token gets an error frame and close 4003."""
        for token in ("junk", self.token(ttl=-60)):
            conn = self.connect()
            self.assertIsNone(self.auth(conn, token))
            self.assertEqual(conn.frames[-1]["payload"]["code"], "invalid_token")
            self.assertEqual(conn.closed_with[0], 4003)
            self.hub.unregister(conn)

    def test_timers_cancelled_on_close(self):
        """A closed connection leaves no expiry timer behind."""
        conn = self.connect(expires_at=self.clock.seconds() + 300)
        self.hub.unregister(conn)
        self.hub.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RateLimitTests(HubTestCase):
    """The per-connection inbound message rate (2/s, burst 4 here)."""

    def test_error_then_4029(self):
        """Past the burst each message gets rate_limited; going on past another burst closes 4029."""
        conn = self.connect()
        ping = b'{"type":"ping"}'
        replies = [self.hub.handle_frame(conn, ping, False)["type"] for _ in range(4)]
        self.assertEqual(replies, ["pong"] * 4)
        limited = self.hub.handle_frame(conn, ping, False)
        self.assertEqual(limited["payload"]["code"], "rate_limited")
        for _ in range(3):
            self.hub.handle_frame(conn, ping, False)
        self.assertIsNone(conn.closed_with)
        self.assertIsNone(self.hub.handle_frame(conn, ping, False))
        self.assertEqual(conn.closed_with, (4029, "too many messages"))

    def test_refills(self):
        """After a pause the client may send again."""
        conn = self.connect()
        for _ in range(5):
            self.hub.handle_frame(conn, b'{"type":"ping"}', False)
        self.clock.advance(1)
        self.assertEqual(self.hub.handle_frame(conn, b'{"type":"ping"}', False)["type"], "pong")


class IdempotencyTests(HubTestCase):
    """publish_for with an Idempotency-Key."""

    def test_repeat_returns_first_event(self):
        """The same key and request returns the first event and broadcasts nothing more."""
        conn = self.connect()
        first = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1",
                                     "key-1", "fp")
        again = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1",
                                     "key-1", "fp")
        self.assertEqual(first, again)
        self.assertEqual(self.hub.store.last_seq, 1)
        self.assertEqual(len(conn.delivered), 1)

    def test_conflict(self):
        """The same key for a different request is a conflict."""
        self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1", "k", "fp1")
        self.assertRaises(IdempotencyConflict, self.hub.publish_for, self.principal(),
                          "agent:status", {"status": "idle"}, "a1", "k", "fp2")


class ConnectionDetailTests(HubTestCase):
    """What operators see per connection."""

    def test_details(self):
        """User, role, client name, peer, connection time, acked seq, bytes waiting, replaying."""
        conn = self.connect("alice", request=ConnectRequest(client="wall", peer="tcp4:1.2.3.4:5"))
        (detail,) = self.hub.connection_details()
        self.assertEqual(detail, {
            "id": conn.connection_id, "user": "alice", "role": "viewer", "client": "wall",
            "peer": "tcp4:1.2.3.4:5", "connectedAt": "2027-01-15T08:00:00.000Z", "ackedSeq": 0,
            "bytesWaiting": 0, "replaying": False})


class ReviewFixTests(HubTestCase):
    """Edge cases of expiry, acks and closing."""

    def test_short_token_warned_at_once(self):
        """A token with less than a minute left gets auth:expiring at once, not only 4001."""
        conn = self.connect(expires_at=self.clock.seconds() + 20)
        self.clock.advance(0)
        self.assertIn("auth:expiring", conn.types())
        self.assertIsNone(conn.closed_with)

    def test_saved_position_never_goes_back(self):
        """A named connection that acks less than the saved position does not lower it."""
        self.publish(5)
        ahead = self.connect("alice", request=ConnectRequest(client="c"))
        self.hub.handle_frame(ahead, b'{"type":"ack","seq":5}', False)
        behind = self.connect("alice", request=ConnectRequest(since=1, epoch=self.hub.store.epoch,
                                                              client="c"))
        self.clock.advance(1)
        self.hub.handle_frame(behind, b'{"type":"ack","seq":3}', False)
        self.assertEqual(self.hub.store.position("alice", "c"), 5)

    def test_frames_after_4029_ignored(self):
        """Once closing for too many messages, later frames get no reply and no second close."""
        conn = self.connect()
        closes = []
        conn.close = lambda code, reason: closes.append(code)
        for _ in range(30):
            self.hub.handle_frame(conn, b'{"type":"ping"}', False)
        self.assertEqual(closes, [4029])


class ChannelTests(HubTestCase):
    """Subscriptions decide who receives what."""

    def sub(self, conn, names, verb="subscribe"):
        self.clock.advance(1)
        return self.hub.handle_frame(conn, json.dumps({"type": verb, "id": "s", "channels": names})
                                     .encode(), False)

    def test_filtering(self):
        """A client on agents:a1 receives a1's statuses and never a2's."""
        only = self.connect("v", request=ConnectRequest(channels=("agents:a1",)))
        everything = self.connect("w")
        self.publish(1, agent="a1")
        self.publish(1, agent="a2")
        self.assertEqual([f["payload"]["agentId"] for f in only.delivered], ["a1"])
        self.assertEqual(len(everything.delivered), 2)

    def test_index_not_scan(self):
        """Fan-out reaches subscribers through the channel index, each connection once."""
        both = self.connect("v", request=ConnectRequest(channels=("agents", "agents:a1")))
        self.publish(1, agent="a1")
        self.assertEqual(len(both.delivered), 1)
        self.assertEqual(set(self.hub._subscribers), {"agents", "agents:a1"})

    def test_subscribe_and_unsubscribe_reply_with_the_set(self):
        """subscribe and unsubscribe are answered with the resulting subscription set."""
        conn = self.connect("v")
        reply = self.sub(conn, ["presence", "agents:x"])
        self.assertEqual((reply["type"], reply["payload"]["channels"]),
                         ("subscribed", ["agents", "agents:x", "presence", "sessions"]))
        reply = self.sub(conn, ["agents", "sessions"], verb="unsubscribe")
        self.assertEqual(reply["payload"]["channels"], ["agents:x", "presence"])
        self.publish(1, agent="a1")
        self.assertEqual(conn.delivered, [])

    def test_forbidden_part(self):
        """A refused channel gets a forbidden error; the rest of the request still applies."""
        agent = self.connect("a1", role="agent")
        reply = self.sub(agent, ["agents:a2", "agents:a1"])
        self.assertEqual(reply["type"], "subscribed")
        errors = [f for f in agent.frames if f["type"] == "error"]
        self.assertEqual(errors[-1]["payload"]["code"], "forbidden")
        self.assertIn("agents:a2", errors[-1]["payload"]["message"])
        self.assertEqual(reply["payload"]["channels"], ["agents:a1"])

    def test_forbidden_at_connect(self):
        """Refused channels in the query: an error after welcome, the allowed ones apply."""
        agent = FakeConnection("a1", "agent")
        self.hub.register(agent, ConnectRequest(channels=("agents", "agents:a1")))
        self.assertEqual(agent.types()[:3], ["welcome", "error", "snapshot"])
        self.assertEqual(agent.frames[0]["payload"]["channels"], ["agents:a1"])

    def test_claim_narrows(self):
        """A token claim narrows what a viewer may subscribe to."""
        conn = FakeConnection("v")
        conn.principal = Principal(sub="v", role="viewer", name=None, expires_at=FAR_FUTURE,
                                   channels=("agents:a*", "agents:a1"))
        self.hub.register(conn, ConnectRequest(channels=("agents", "agents:a1")))
        self.assertEqual(conn.frames[0]["payload"]["channels"], ["agents:a1"])

    def test_agent_sees_its_sessions(self):
        """An agent may subscribe to a session it publishes, not to another's."""
        agent_principal = self.principal("a1", "agent")
        self.hub.publish_for(agent_principal, "session:activity", {"activity": "started"}, "s1")
        self.hub.publish_for(self.principal(), "session:activity",
                             {"activity": "started", "agentId": "a2"}, "s2")
        agent = self.connect("a1", role="agent")
        reply = self.sub(agent, ["sessions:s1", "sessions:s2"])
        self.assertEqual(reply["payload"]["channels"], ["agents:a1", "sessions:s1"])

    def test_snapshot_and_resume_honour_the_subscription(self):
        """The snapshot holds only subscribed state; a resume replays only subscribed events."""
        self.publish(1, agent="a1")
        self.publish(1, agent="a2")
        narrow = self.connect("v", request=ConnectRequest(channels=("agents:a2",)))
        self.assertEqual([a["agentId"] for a in narrow.frames[1]["payload"]["agents"]], ["a2"])
        resumed = self.connect("v", request=ConnectRequest(
            since=0, epoch=self.hub.store.epoch, channels=("agents:a1",)))
        self.assertEqual([f.get("seq") for f in resumed.frames if f["type"] == "agent:status"],
                         [1])
        self.assertEqual(resumed.frames[-1]["payload"]["to"], 2)


class PublishFrameTests(HubTestCase):
    """publish from a client."""

    def publish_frame(self, conn, event, frame_id="p1", key=None):
        self.clock.advance(1)
        frame = {"type": "publish", "event": event}
        if frame_id:
            frame["id"] = frame_id
        if key is not None:
            frame["idempotencyKey"] = key
        return self.hub.handle_frame(conn, json.dumps(frame).encode(), False)

    def test_agent_publishes_its_status(self):
        """An agent publishes its own status; the reply carries the stored seq."""
        agent = self.connect("a1", role="agent")
        watcher = self.connect("v")
        reply = self.publish_frame(agent, {"type": "agent:status",
                                           "payload": {"agentId": "a1", "status": "busy"}})
        self.assertEqual((reply["type"], reply["id"], reply["payload"]["type"]),
                         ("published", "p1", "agent:status"))
        self.assertEqual(watcher.delivered[-1]["seq"], reply["payload"]["seq"])

    def test_forbidden_and_bad(self):
        """A viewer gets forbidden; another agent's status is forbidden; bad events bad_request."""
        viewer = self.connect("v")
        agent = self.connect("a1", role="agent")
        status = {"type": "agent:status", "payload": {"agentId": "a1", "status": "busy"}}
        self.assertEqual(self.publish_frame(viewer, status)["payload"]["code"], "forbidden")
        other = {"type": "agent:status", "payload": {"agentId": "a2", "status": "busy"}}
        self.assertEqual(self.publish_frame(agent, other)["payload"]["code"], "forbidden")
        for bad in ({"type": "agent:status", "payload": {"agentId": "a1"}}, "x",
                    {"type": "agent:status"}, {"type": "agent:status", "payload": {}, "x": 1}):
            self.assertEqual(self.publish_frame(agent, bad)["payload"]["code"], "bad_request")
        self.assertEqual(self.publish_frame(agent, {"type": "presence:join", "payload": {}})
                         ["payload"]["code"], "unknown_type")

    def test_retry_with_same_key(self):
        """
        A retried publish with the same idempotencyKey (fields in any order) returns the same
        seq and stores nothing more; the same key for another event is a conflict; a plain id
        is only for matching the reply, never deduplicated.
        """
        agent = self.connect("a1", role="agent")
        # Connecting published "online" for the agent (liveness): seq 1.
        event = {"type": "agent:status", "payload": {"agentId": "a1", "status": "busy"}}
        reordered = {"payload": {"status": "busy", "agentId": "a1"}, "type": "agent:status"}
        first = self.publish_frame(agent, event, "x", key="k1")
        again = self.publish_frame(agent, reordered, "y", key="k1")
        self.assertEqual(first["payload"]["seq"], again["payload"]["seq"])
        self.assertEqual(self.hub.store.last_seq, first["payload"]["seq"])
        other = {"type": "agent:status", "payload": {"agentId": "a1", "status": "idle"}}
        self.assertEqual(self.publish_frame(agent, other, key="k1")["payload"]["code"],
                         "idempotency_conflict")
        plain = [self.publish_frame(agent, event, "same")["payload"]["seq"] for _ in range(2)]
        self.assertEqual(plain[1], plain[0] + 1)

    def test_fresh_token_narrows_subscriptions(self):
        """An auth frame with a token that allows less drops the channels it no longer allows."""
        conn = self.connect("op", role="operator")
        self.clock.advance(1)
        narrower = auth.mint_token(SECRET, "op", self.clock.seconds(), role="viewer",
                                   channels=["presence"])
        reply = self.hub.handle_frame(conn, json.dumps({"type": "auth", "token": narrower})
                                      .encode(), False)
        self.assertEqual(reply["payload"]["channels"], [])
        self.publish(1)
        self.assertEqual(conn.delivered, [])


class CloseByAdministratorTests(HubTestCase):
    """Hub.close_connection: an administrator closes one connection with 4009."""

    def admin(self):
        return Principal(sub="root", role="admin", name=None, expires_at=FAR_FUTURE)

    def test_closes_with_4009(self):
        """The named connection gets close 4009 "closed by an administrator"; others do not."""
        target, other = self.connect("alice"), self.connect("bob")
        self.assertTrue(self.hub.close_connection(target.connection_id, self.admin()))
        self.assertEqual(target.closed_with, (4009, "closed by an administrator"))
        self.assertIsNone(other.closed_with)

    def test_unknown_ids(self):
        """An id no connection has, or had, is not found and closes nothing."""
        conn = self.connect()
        for unknown in ("0" * 32, "", "nope", conn.connection_id.upper()):
            self.assertFalse(self.hub.close_connection(unknown, self.admin()))
        self.assertIsNone(conn.closed_with)
        self.hub.unregister(conn)
        self.assertFalse(self.hub.close_connection(conn.connection_id, self.admin()))

    def test_counts_as_any_close(self):
        """
        Once its close completes, the connection is gone from every count as after any other
        close: its user's count drops, presence:leave goes out with the user's last connection.
        """
        watcher = self.connect("w", request=ConnectRequest(channels=("presence",)))
        first, second = self.connect("alice"), self.connect("alice")
        self.hub.close_connection(first.connection_id, self.admin())
        self.hub.unregister(first)  # what the protocol does when the close handshake ends
        self.assertEqual((self.hub.connection_count, len(self.hub.connections_of("alice"))),
                         (2, 1))
        self.assertFalse([f for f in watcher.delivered if f["type"] == "presence:leave"])
        self.hub.close_connection(second.connection_id, self.admin())
        self.hub.unregister(second)
        leaves = [f["payload"] for f in watcher.delivered if f["type"] == "presence:leave"]
        self.assertEqual([(p["userId"], p["connections"]) for p in leaves], [("alice", 0)])
        self.assertEqual((self.hub.connection_count, self.hub.users()),
                         (1, [{"id": "w", "connections": 1}]))

    def test_closing_connection_is_not_answered(self):
        """Frames that arrive after the close began are not answered, as after any close."""
        conn = self.connect()
        self.hub.close_connection(conn.connection_id, self.admin())
        self.assertIsNone(self.hub.handle_frame(conn, b'{"type": "ping"}', False))

    def test_already_closing_keeps_its_code(self):
        """A connection already closing (its token expired) keeps that code, and is found."""
        conn = self.connect(expires_at=self.clock.seconds() + 10)
        self.clock.advance(20)
        self.assertEqual(conn.closed_with[0], 4001)
        self.assertTrue(self.hub.close_connection(conn.connection_id, self.admin()))
        self.assertEqual(conn.closed_with[0], 4001)

    def test_audit_line(self):
        """One log line names the administrator, the connection, its user and its peer."""
        from tests.helpers import LogCapture

        logged = LogCapture(self)
        conn = FakeConnection("alice")
        self.hub.register(conn, ConnectRequest(peer="tcp4:192.0.2.7:5000"))
        self.hub.close_connection(conn.connection_id, self.admin())
        [line] = logged.matching("closed by administrator")
        self.assertEqual(line, f"closing connection {conn.connection_id} of alice "
                               f"(tcp4:192.0.2.7:5000): closed by administrator root")


class PresenceTests(HubTestCase):
    """presence:join and presence:leave, per user not per connection."""

    def test_join_and_leave_once_per_user(self):
        """Joins on a user's first connection, leaves on their last, with the count."""
        watcher = self.connect("w", request=ConnectRequest(channels=("presence",)))
        a = self.connect("alice")
        b = self.connect("alice")
        joins = [f for f in watcher.delivered if f["type"] == "presence:join"]
        self.assertEqual([j["payload"]["userId"] for j in joins], ["alice"])
        self.assertEqual(joins[0]["payload"]["role"], "viewer")
        self.hub.unregister(a)
        self.assertFalse([f for f in watcher.delivered if f["type"] == "presence:leave"])
        self.assertEqual(self.hub.presence()[0]["connections"], 2 - 1)
        self.hub.unregister(b)
        leaves = [f for f in watcher.delivered if f["type"] == "presence:leave"]
        self.assertEqual([(l["payload"]["userId"], l["payload"]["connections"]) for l in leaves],
                         [("alice", 0)])
        self.assertNotIn("seq", leaves[0])
        self.assertEqual([p["id"] for p in self.hub.presence()], ["w"])


    def test_presence_while_catching_up(self):
        """
        A connection subscribed to presence that is still replaying (its transport paused) or
        still streaming its snapshot hears who joins meanwhile: presence is not replayed.
        """
        self.publish(3)
        resuming = FakeConnection("r")
        resuming.paused = True
        self.hub.register(resuming, ConnectRequest(since=0, epoch=self.hub.store.epoch,
                                                   channels=("agents", "presence")))
        self.hub.snapshot_stream_threshold = 0
        streaming = HeldStreamConnection("s")
        self.hub.register(streaming, ConnectRequest(channels=("agents", "presence")))
        self.connect("late")
        joins = [f["payload"]["userId"] for f in resuming.frames if f["type"] == "presence:join"]
        self.assertIn("late", joins)
        self.assertNotIn("resumed", resuming.types())  # still replaying
        self.assertEqual([method for method, _ in streaming.held], ["deliver"])  # the join
        streaming.finish()
        self.assertEqual(streaming.types(), ["welcome", "snapshot", "presence:join"])
        self.assertEqual(streaming.frames[2]["payload"]["userId"], "late")


class LivenessTests(HubTestCase):
    """An agent's connections make it online; its last close makes it offline, once."""

    def statuses(self):
        return [(a["agentId"], a["status"], a.get("message")) for a in self.hub.store.agents()]

    def test_offline_keeps_the_published_name(self):
        """The hub's offline status keeps the display name the agent published."""
        conn = self.connect("a1", role="agent")
        self.hub.publish_for(self.principal("a1", "agent"), "agent:status",
                             {"status": "busy", "name": "Atlas"}, "a1")
        self.hub.unregister(conn)
        self.assertEqual(self.hub.store.agents()[0]["name"], "Atlas")

    def test_online_then_offline_on_close(self):
        """First connection: online; last one closed: offline with why; only once."""
        first = self.connect("a1", role="agent")
        second = self.connect("a1", role="agent")
        self.assertEqual(self.statuses(), [("a1", "online", "connected")])
        self.hub.unregister(first)
        self.assertEqual(self.statuses()[0][1], "online")
        self.clock.advance(self.hub.liveness_interval)
        self.hub.unregister(second)
        self.assertEqual(self.statuses(), [("a1", "offline", "connection closed")])
        self.assertEqual(self.hub.store.last_seq, 2)

    def test_offline_on_ping_timeout(self):
        """A connection dropped for not answering pings says so."""
        conn = self.connect("a1", role="agent")
        self.hub.timed_out(conn)
        self.hub.unregister(conn)
        self.clock.advance(self.hub.liveness_interval)
        self.assertEqual(self.statuses()[0][2], "connection timed out (no answer to pings)")

    def test_flapping_is_coalesced(self):
        """
        An agent that connects and disconnects in a loop costs at most one liveness event per
        liveness_interval, and the last one says where it ended; nothing is left behind.
        """
        interval = self.hub.liveness_interval
        for _ in range(50):
            self.hub.unregister(self.connect("a1", role="agent"))
            self.clock.advance(interval / 10)
        self.clock.advance(interval)
        self.assertLessEqual(self.hub.store.last_seq, 50 / 10 + 2)
        self.assertEqual(self.statuses()[0][1], "offline")
        seq = self.hub.store.last_seq
        for _ in range(7):
            self.hub.unregister(self.connect("a1", role="agent"))
        self.connect("a1", role="agent")
        self.clock.advance(interval * 3)
        self.assertEqual(self.statuses()[0][1], "online")
        self.assertEqual(self.hub.store.last_seq, seq + 1)
        self.assertEqual(list(self.hub._agents_live), ["a1"])
        self.hub.stop()
        self.assertEqual(self.hub._agents_live, {})

    def test_quick_reconnect_publishes_nothing(self):
        """An agent that reconnects within the interval after its online is not flickered offline."""
        self.connect("a1", role="agent")
        seq = self.hub.store.last_seq
        self.hub.unregister(self.hub.connections_of("a1").__iter__().__next__())
        self.connect("a1", role="agent")
        self.clock.advance(self.hub.liveness_interval * 2)
        self.assertEqual((self.hub.store.last_seq, self.statuses()[0][1]), (seq, "online"))

    def test_handshakes_rate_limited_per_user(self):
        """
        Past its burst, a user's handshakes are refused with 429 (rate_limited) until the rate
        refills the bucket; another user is not affected.
        """
        hub = Hub(self.clock, MemoryStore(), handshake_rate=2, handshake_burst=3)
        alice = self.principal("alice")
        results = []
        for _ in range(4):
            try:
                hub.admit(alice)
                results.append(200)
            except Refusal as refusal:
                results.append((refusal.status, refusal.code))
        self.assertEqual(results, [200, 200, 200, (429, "rate_limited")])
        hub.admit(self.principal("bob"))
        self.clock.advance(0.5)
        hub.admit(alice)

    def test_agent_that_said_offline(self):
        """An agent that reported offline itself is not reported offline again."""
        conn = self.connect("a1", role="agent")
        self.hub.publish_for(self.principal("a1", "agent"), "agent:status",
                             {"status": "offline"}, "a1")
        seq = self.hub.store.last_seq
        self.hub.unregister(conn)
        self.assertEqual(self.hub.store.last_seq, seq)

    def test_busy_agent_stays_busy_on_connect(self):
        """An agent already busy is not reset to online by a new connection."""
        self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        self.connect("a1", role="agent")
        self.assertEqual(self.statuses()[0][1], "busy")

    def test_sweep_after_restart(self):
        """
        After a restart, an agent that was online by its connection and has not come back within
        the grace period is marked offline; one that reconnected, or set its own status, is not.
        """
        for agent in ("gone", "back", "self"):
            conn = self.connect(agent, role="agent")
        self.hub.publish_for(self.principal("self", "agent"), "agent:status",
                             {"status": "busy"}, "self")
        restarted = Hub(self.clock, self.hub.store)
        restarted.trim_interval = 10_000
        restarted.start()
        back = FakeConnection("back", "agent")
        restarted.register(back)
        self.clock.advance(restarted.reconnect_grace)
        by_id = {a["agentId"]: (a["status"], a.get("message")) for a in self.hub.store.agents()}
        self.assertEqual(by_id["gone"], ("offline", "did not reconnect after the hub restarted"))
        self.assertEqual(by_id["back"][0], "online")
        self.assertEqual(by_id["self"][0], "busy")
        restarted.stop()
        self.assertIsNone(conn.closed_with)

    def test_no_offline_during_shutdown(self):
        """Closing everyone for a restart does not mark every agent offline."""
        conn = self.connect("a1", role="agent")
        self.hub.stop()
        self.hub.unregister(conn)
        self.assertEqual(self.statuses()[0][1], "online")


class RobustnessTests(HubTestCase):
    """Failures inside the hub, and hostile agents."""

    def test_store_failure_answered_not_dropped(self):
        """An exception while answering a frame becomes an internal_error frame, logged."""
        conn = self.connect()

        def broken(*args):
            raise RuntimeError("disk full")

        self.patch(self.hub.store, "save_position", broken)
        self.publish(2)
        conn2 = self.connect("bob", request=ConnectRequest(client="c"))
        self.clock.advance(1)
        reply = self.hub.handle_frame(conn2, b'{"type":"ack","seq":1}', False)
        self.assertEqual(reply["payload"]["code"], "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNone(conn.closed_with)

    def test_trim_failure_does_not_stop_retention(self):
        """A failing retention pass is logged, and the next one still runs."""
        calls = []

        def trim(now):
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("database is locked")

        self.patch(self.hub.store, "trim", trim)
        self.hub.start()
        self.clock.advance(self.hub.trim_interval)
        self.clock.advance(self.hub.trim_interval)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.hub.stop()

    def test_history_gone_during_replay(self):
        """If every event after the cursor is trimmed mid-replay, the client is told to redraw."""
        self.hub.replay_batch = 2
        self.publish(6)
        conn = FakeConnection("alice")
        self.hub.register(conn, ConnectRequest(since=0, epoch=self.hub.store.epoch))
        self.patch(self.hub.store, "events_after", lambda seq, limit: [])
        self.clock.advance(0)
        self.assertEqual(conn.types()[-2:], ["resumed", "snapshot"])
        self.assertEqual(conn.frames[-2]["payload"]["reason"], "too_old")
        pending = [c for c in self.clock.getDelayedCalls() if c.getTime() == self.clock.seconds()]
        self.assertEqual(pending, [])  # no replay step scheduled again

    def test_agent_cannot_take_over_a_session(self):
        """An agent may not publish into another agent's session, nor then read it."""
        owner, thief = self.principal("a1", "agent"), self.principal("evil", "agent")
        self.hub.publish_for(owner, "session:activity", {"activity": "started"}, "s-victim")
        error = self.assertRaises(Refusal, self.hub.publish_for, thief, "session:activity",
                                  {"activity": "message"}, "s-victim")
        self.assertEqual(error.status, 403)
        self.assertFalse(self.hub.may_see(thief, "session:activity",
                                          {"sessionId": "s-victim", "agentId": "a1"}))
        restarted = Hub(self.clock, self.hub.store)
        self.assertRaises(Refusal, restarted.publish_for, thief, "session:activity",
                          {"activity": "message"}, "s-victim")

    def test_pings_charged_to_the_rate_limit(self):
        """allow_message spends the same bucket as frames, and closes 4029 past the burst."""
        conn = self.connect()
        allowed = [self.hub.allow_message(conn) for _ in range(10)]
        self.assertEqual(allowed, [True] * 4 + [False] * 6)
        self.assertEqual(conn.closed_with, (4029, "too many messages"))
