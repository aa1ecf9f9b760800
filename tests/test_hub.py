"""
Tests for L{mission_control.hub.node}: admitting and registering connections, publishing and
fan-out (also through a broker that answers late), heartbeats, presence, liveness and
robustness, without sockets (fake connections, a L{Clock}).  The same behaviour over real
sockets is in test_websocket.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mission_control.auth import Refusal
from mission_control.events import ValidationError
from mission_control.hub import ConnectRequest, Hub, IConnection
from mission_control.policy import Principal
from mission_control.store import IdempotencyConflict, MemoryStore
from tests.hubfakes import (
    FAR_FUTURE,
    DeferredBroker,
    FakeConnection,
    HeldStreamConnection,
    HubTestCase,
)


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
        frame = self.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        self.assertEqual(len(self.prepared), 1)
        for conn in conns:
            self.assertEqual(conn.delivered, [frame])

    def test_envelope_and_seq(self):
        """Published events carry type, payload, ts and an increasing seq."""
        first = self.publish_for(self.principal(), "agent:status", {"status": "online"}, "a1")
        second = self.publish_for(self.principal(), "session:activity",
                                  {"activity": "started"}, "s1")
        self.assertEqual(first["type"], "agent:status")
        self.assertEqual(first["payload"]["agentId"], "a1")
        self.assertEqual(first["ts"], "2027-01-15T08:00:00.000Z")
        self.assertEqual((first["seq"], second["seq"]), (1, 2))
        self.assertEqual(second["payload"]["sessionId"], "s1")

    def test_broadcast_to_nobody(self):
        """Publishing with no connection stores the event and encodes nothing."""
        frame = self.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
        self.assertEqual((frame["seq"], self.prepared), (1, []))
        self.assertEqual(self.hub.store.agents(), [frame["payload"]])

    def test_half_closed_connection_skipped(self):
        """A connection that is closing does not receive, and does not stop the others."""
        closing, live = self.connect("a"), self.connect("b")  # noqa
        closing.open = False
        self.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1")
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
        self.successResultOf(
            hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1"))
        self.assertTrue(all(len(c.delivered) == 1 for c in others))
        self.assertEqual(hub.connection_count, 3)

class HeartbeatTests(HubTestCase):
    """Heartbeat frames on the injected clock."""

    def test_heartbeat_every_interval(self):
        """After start, every interval each connection gets a heartbeat with timestamp and lastSeq."""
        self.hub.trim_interval = 10_000
        self.hub.start()
        conn = self.connect()
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


class IdempotencyTests(HubTestCase):
    """publish_for with an Idempotency-Key."""

    def test_repeat_returns_first_event(self):
        """The same key and request returns the first event and broadcasts nothing more."""
        conn = self.connect()
        first = self.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1",
                                 "key-1", "fp")
        again = self.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1",
                                 "key-1", "fp")
        self.assertEqual(first, again)
        self.assertEqual(self.hub.store.last_seq, 1)
        self.assertEqual(len(conn.delivered), 1)

    def test_conflict(self):
        """
        The same key for a different request is a conflict: checked and accepted at once, it
        fails through the Deferred, and nothing more is stored.
        """
        self.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1", "k", "fp1")
        self.failureResultOf(self.hub.publish_for(self.principal(), "agent:status",
                                                  {"status": "idle"}, "a1", "k", "fp2"),
                             IdempotencyConflict)
        self.assertEqual(self.hub.store.last_seq, 1)


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
        self.hub.catchup.snapshot_stream_threshold = 0
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
        self.publish_for(self.principal("a1", "agent"), "agent:status",
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
        self.clock.advance(self.hub.liveness.interval)
        self.hub.unregister(second)
        self.assertEqual(self.statuses(), [("a1", "offline", "connection closed")])
        self.assertEqual(self.hub.store.last_seq, 2)

    def test_offline_on_ping_timeout(self):
        """A connection dropped for not answering pings says so."""
        conn = self.connect("a1", role="agent")
        self.hub.timed_out(conn)
        self.hub.unregister(conn)
        self.clock.advance(self.hub.liveness.interval)
        self.assertEqual(self.statuses()[0][2], "connection timed out (no answer to pings)")

    def test_flapping_is_coalesced(self):
        """
        An agent that connects and disconnects in a loop costs at most one liveness event per
        liveness_interval, and the last one says where it ended; nothing is left behind.
        """
        interval = self.hub.liveness.interval
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
        self.assertEqual(list(self.hub.liveness.agents), ["a1"])
        self.hub.stop()
        self.assertEqual(self.hub.liveness.agents, {})

    def test_quick_reconnect_publishes_nothing(self):
        """An agent that reconnects within the interval after its online is not flickered offline."""
        self.connect("a1", role="agent")
        seq = self.hub.store.last_seq
        self.hub.unregister(self.hub.connections_of("a1").__iter__().__next__())
        self.connect("a1", role="agent")
        self.clock.advance(self.hub.liveness.interval * 2)
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
        self.publish_for(self.principal("a1", "agent"), "agent:status",
                         {"status": "offline"}, "a1")
        seq = self.hub.store.last_seq
        self.hub.unregister(conn)
        self.assertEqual(self.hub.store.last_seq, seq)

    def test_busy_agent_stays_busy_on_connect(self):
        """An agent already busy is not reset to online by a new connection."""
        self.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        self.connect("a1", role="agent")
        self.assertEqual(self.statuses()[0][1], "busy")

    def test_sweep_after_restart(self):
        """
        After a restart, an agent that was online by its connection and has not come back within
        the grace period is marked offline; one that reconnected, or set its own status, is not.
        """
        for agent in ("gone", "back", "self"):
            conn = self.connect(agent, role="agent")
        self.publish_for(self.principal("self", "agent"), "agent:status",
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
        self.hub.start()  # the first pass runs at start, and fails
        self.assertEqual(len(calls), 1)
        self.clock.advance(self.hub.trim_interval)
        self.assertEqual(len(calls), 2)
        self.clock.advance(self.hub.trim_interval)
        self.assertEqual(len(calls), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.hub.stop()

    def test_history_gone_during_replay(self):
        """If every event after the cursor is trimmed mid-replay, the client is told to redraw."""
        self.hub.catchup.replay_batch = 2
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
        self.publish_for(owner, "session:activity", {"activity": "started"}, "s-victim")
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


class FanOutBenchmarkTests(SynchronousTestCase):
    """benchmarks/hub_fanout.py keeps working (a tiny run; its numbers are not checked)."""

    def test_tiny_run(self):
        """A run with 10 subscribers and 5 events checks every delivery and prints its figures."""
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "benchmarks", "hub_fanout.py")
        spec = importlib.util.spec_from_file_location("hub_fanout", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.assertGreater(module.run(10, 5), 0)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        module.main(["--subscribers", "10", "--events", "5", "--repeat", "1"])
        figures = json.loads(out.getvalue())
        self.assertEqual((figures["subscribers"], figures["events"]), (10, 5))
        self.assertGreater(figures["us_per_publish"], 0)

    def test_tiny_run_with_a_window(self):
        """
        With C{--window} the events of one window are queued and flushed together, and every
        subscriber still gets every event (the run checks it, and fails otherwise).
        """
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "benchmarks", "hub_fanout.py")
        spec = importlib.util.spec_from_file_location("hub_fanout", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.assertGreater(module.run(10, 9, window=0.02, rate=200), 0)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        module.main(["--subscribers", "10", "--events", "9", "--repeat", "1", "--window", "0.02"])
        self.assertEqual(json.loads(out.getvalue())["window"], 0.02)


class LateBrokerTests(HubTestCase):
    """
    Publishing through a broker that answers late (L{DeferredBroker}): checked at once, stored
    later; the Deferreds fire with the envelopes once the broker answers, after the fan-out.
    """

    def setUp(self):
        super().setUp()
        self.broker = DeferredBroker.around(self, self.hub)

    def test_publish_for_fires_when_stored(self):
        """
        publish_for returns a Deferred that has not fired while the broker holds the append;
        once the broker answers, the event has been fanned out when the Deferred fires with its
        envelope.
        """
        conn = self.connect()
        stored = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"}, "a1")
        self.assertNoResult(stored)
        self.assertEqual((self.hub.store.last_seq, conn.delivered), (0, []))
        delivered_when_fired = []
        stored.addCallback(lambda envelope: delivered_when_fired.extend(conn.delivered)
                           or envelope)
        self.broker.fire()
        envelope = self.successResultOf(stored)
        self.assertEqual((envelope["seq"], envelope["payload"]["agentId"]), (1, "a1"))
        self.assertEqual(delivered_when_fired, [envelope])

    def test_checks_raise_before_anything_is_appended(self):
        """
        A refusal and a rule break are raised by publish_for and publish_many themselves,
        before anything reaches the broker.
        """
        viewer = self.principal("v", "viewer")
        self.assertRaises(Refusal, self.hub.publish_for, viewer, "agent:status",
                          {"status": "busy"}, "a1")
        self.assertRaises(ValidationError, self.hub.publish_for, self.principal(),
                          "agent:status", {"status": "dancing"}, "a1")
        self.assertRaises(Refusal, self.hub.publish_many, viewer,
                          [{"type": "agent:status", "payload": {"agentId": "a1",
                                                                "status": "busy"}}])
        self.assertEqual(self.broker.pending, [])

    def test_publish_many_fires_when_stored(self):
        """publish_many's Deferred fires with the envelopes, in seq order, once stored."""
        items = [{"type": "agent:status", "payload": {"agentId": f"a{i}", "status": "busy"}}
                 for i in (1, 2)]
        stored = self.hub.publish_many(self.principal(), items)
        self.assertNoResult(stored)
        self.broker.fire()
        self.assertEqual([e["seq"] for e in self.successResultOf(stored)], [1, 2])

    def test_failures_come_through_the_deferred(self):
        """
        A key used for another request and a store failure fail the Deferred of the publish,
        whenever the broker answers; nothing is raised to the caller.
        """
        conflict = self.hub.publish_for(self.principal(), "agent:status", {"status": "busy"},
                                        "a1", "k", "fp")
        broken = self.hub.publish_many(self.principal(), [
            {"type": "agent:status", "payload": {"agentId": "a1", "status": "busy"}}])
        self.broker.fail(IdempotencyConflict("used"))
        self.broker.fail(OSError("backbone unreachable"))
        self.failureResultOf(conflict, IdempotencyConflict)
        self.failureResultOf(broken, OSError)
        self.assertEqual(self.hub.store.last_seq, 0)

    def test_stopping_flushes_waiting_publishes(self):
        """
        Stopping while a group is in flight hands the publishes that wait behind it to the
        broker as soon as it is answered; when_stored fires only once every publish, those and
        an HTTP one, is answered.
        """
        conn = self.connect("op", role="operator")
        frame = {"type": "publish", "event": {"type": "agent:status",
                                              "payload": {"agentId": "a1", "status": "busy"}}}
        self.hub.handle_frame(conn, json.dumps(dict(frame, id="first")).encode(), False)
        self.clock.advance(0)
        self.hub.handle_frame(conn, json.dumps(dict(frame, id="second")).encode(), False)
        http = self.hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a2")
        self.hub.stop()
        stored = self.hub.when_stored()
        self.assertEqual([name for name, _, _ in self.broker.pending],
                         ["append_each", "append"])
        self.broker.fire()  # the first group: the second is handed over at once
        self.assertEqual([name for name, _, _ in self.broker.pending],
                         ["append", "append_each"])
        self.assertNoResult(stored)
        self.broker.fire()
        self.broker.fire()
        self.assertIsNone(self.successResultOf(stored))
        self.assertEqual(self.successResultOf(http)["seq"], 2)
        self.assertEqual([f["id"] for f in conn.frames if f["type"] == "published"],
                         ["first", "second"])
        self.assertEqual(self.hub.store.last_seq, 3)

    def test_when_stored_at_once_when_idle(self):
        """With nothing waiting or in flight, when_stored has fired already."""
        self.assertIsNone(self.successResultOf(self.hub.when_stored()))
