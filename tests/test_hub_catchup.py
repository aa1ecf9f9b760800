"""
Tests for L{mission_control.hub.catchup}: the snapshot of a new connection, and the replay of
a resuming one, through a hub on a L{Clock} with fake connections.
"""

from __future__ import annotations

from mission_control import events as events_module
from mission_control.hub import ConnectRequest, Hub
from mission_control.store import MemoryStore, Retention
from tests.hubfakes import FakeConnection, HeldStreamConnection, HubTestCase


class SnapshotTests(HubTestCase):
    """The snapshot a new connection gets: the latest state, encoded once, streamed when large."""

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
        self.assertEqual(heads, [self.hub.catchup.snapshot_cache[1]] * 3)
        self.assertEqual(a.frames[1]["payload"], b.frames[1]["payload"])
        self.assertEqual(a.frames[1]["payload"], c.frames[1]["payload"])
        cached = self.hub.catchup.snapshot_cache[1]
        self.publish(1)
        self.connect("d")
        self.assertIsNot(self.hub.catchup.snapshot_cache[1], cached)
        self.assertEqual(self.hub.catchup.snapshot_cache[0], 3)

    def test_large_snapshot_streams_then_catches_up(self):
        """
        A snapshot past the stream threshold goes out as a stream; what is published while it
        streams follows it from the history (no resumed frame), and then the connection is live.
        """
        self.hub.catchup.snapshot_stream_threshold = 0
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
        self.hub.catchup.snapshot_stream_threshold = 0
        self.publish(1)
        conn = HeldStreamConnection("alice")
        self.hub.register(conn)
        self.hub.unregister(conn)
        conn.finish()
        self.publish(1)
        self.assertEqual(conn.types(), ["welcome", "snapshot"])
        self.assertEqual(self.hub.connection_count, 0)

    def test_snapshot_has_latest_state(self):
        """The snapshot holds the latest status per agent and activity per session."""
        op = self.principal()
        self.publish_for(op, "agent:status", {"status": "online"}, "a1")
        self.publish_for(op, "agent:status", {"status": "busy"}, "a1")
        self.publish_for(op, "agent:status", {"status": "idle"}, "a2")
        self.publish_for(op, "session:activity", {"activity": "started"}, "s1")
        snapshot = self.connect().frames[1]
        self.assertEqual([a["status"] for a in snapshot["payload"]["agents"]], ["busy", "idle"])
        self.assertEqual(snapshot["payload"]["lastSeq"], 4)
        self.assertEqual(len(snapshot["payload"]["sessions"]), 1)


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
        self.hub.catchup.replay_batch = 3
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
        self.hub.catchup.replay_batch = 2
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
        """
        A transport that pauses after a write in the middle of a page gets no more of the page
        until writable(); what was written before the pause arrived whole and in order.
        """
        self.publish(6)
        self.hub.catchup.replay_write_bytes = 1  # one frame per write
        conn = FakeConnection("alice")
        flush, pauses = conn.flush, [2]

        def flush_then_pause():
            flush()
            if pauses and conn.frames and conn.frames[-1].get("seq") == pauses[0]:
                conn.paused = True  # the kernel stopped taking data after seq 2
                pauses.pop()

        conn.flush = flush_then_pause
        self.hub.register(conn, ConnectRequest(since=0, epoch=self.hub.store.epoch))
        self.clock.advance(0)
        self.assertEqual([f.get("seq") for f in conn.frames], [None, 1, 2])
        conn.paused = False
        self.hub.writable(conn)
        self.clock.advance(0)
        self.assertEqual([f.get("seq") for f in conn.frames], [None, 1, 2, 3, 4, 5, 6, None])

    def test_replay_page_is_one_write(self):
        """A page of replayed events that fits the write size leaves in one write, not one each."""
        self.publish(6)
        conn = FakeConnection("alice")
        self.hub.register(conn, ConnectRequest(since=0, epoch=self.hub.store.epoch))
        self.clock.advance(0)
        self.assertEqual([f.get("seq") for f in conn.frames], [None, 1, 2, 3, 4, 5, 6, None])
        self.assertEqual(conn.writes, 1)

    def test_replayed_frames_prepared_once(self):
        """Clients that replay the same seqs share one prepared frame per event."""
        self.publish(3)
        prepared = []

        def prepare(data):
            prepared.append(data)
            return data

        self.hub.set_prepare(prepare)
        for user in ("alice", "bob", "carol"):
            conn = FakeConnection(user)
            self.hub.register(conn, ConnectRequest(since=0, epoch=self.hub.store.epoch))
            self.clock.advance(0)
            self.assertEqual([f.get("seq") for f in conn.delivered[:3]], [1, 2, 3])
        self.assertEqual(len(prepared), 3)

    def test_replay_page_read_once_while_history_unchanged(self):
        """
        Clients resuming from the same seq share one read of the store's page; a new event
        changes the history, so the next client reads it again and gets the new event too.
        """
        self.publish(3)
        reads = []
        events_after = self.hub.store.events_after

        def counted(seq, limit):
            reads.append(seq)
            return events_after(seq, limit)

        self.hub.store.events_after = counted
        for user in ("alice", "bob"):
            conn = FakeConnection(user)
            self.hub.register(conn, ConnectRequest(since=1, epoch=self.hub.store.epoch))
            self.clock.advance(0)
            self.assertEqual([f["seq"] for f in conn.delivered if "seq" in f], [2, 3])
        self.assertEqual(reads, [1])
        self.publish(1)
        conn = FakeConnection("carol")
        self.hub.register(conn, ConnectRequest(since=1, epoch=self.hub.store.epoch))
        self.clock.advance(0)
        self.assertEqual([f["seq"] for f in conn.delivered if "seq" in f], [2, 3, 4])
        self.assertEqual(reads, [1, 1])

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
            self.successResultOf(
                hub.publish_for(self.principal(), "agent:status", {"status": "idle"}, "a1"))
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

