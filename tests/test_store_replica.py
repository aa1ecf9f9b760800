# -*- test-case-name: tests.test_store_replica -*-
"""
L{Replica}: a node's copy of a shared history, applied in seq order, reads as the store that
appended the same events.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.store import MemoryStore, Retention, StoredEvent
from mission_control.store.replica import OutOfOrder, Replica
from tests.helpers import T0, activity, status


def reads(store: MemoryStore) -> dict:
    """Everything a hub reads of a store, for comparing two of them."""
    return {
        "last_seq": store.last_seq,
        "first_seq": store.first_seq,
        "history": store.events_after(0, 10_000),
        "agents": store.agents(),
        "sessions": store.sessions(),
        "state": [entry.encoded for entry in store.state("session:activity")],
        "owners": {s: store.session_owner(s) for s in ("s1", "s2", "s3", "nobody")},
    }


class ReplicaTests(SynchronousTestCase):
    """A replica fed with a store's events reads as that store."""

    def fill(self, store: MemoryStore) -> list[StoredEvent]:
        """Append a mix of statuses and session activity; return what was appended."""
        items = [
            ("agent:status", status("a1")),
            ("session:activity", activity("s1", agentId="a1")),
            ("agent:status", status("a2", "busy")),
            ("session:activity", activity("s2")),
            ("session:activity", activity("s2", "message", agentId="a2")),
            ("agent:status", status("a1", "idle")),
            ("session:activity", activity("s1", "completed", agentId="a1")),
            ("agent:status", status("a3")),
        ]
        return [store.append(kind, payload, "ts", T0 + i)[0]
                for i, (kind, payload) in enumerate(items)]

    def test_applied_events_read_as_the_store(self):
        """Applying a store's events in order gives the same history, state and owners."""
        store = MemoryStore()
        appended = self.fill(store)
        replica = Replica(store.epoch)
        for i, event in enumerate(appended):
            replica.apply(event, T0 + i)
        self.assertEqual(reads(replica), reads(store))
        self.assertEqual(replica.epoch, store.epoch)

    def test_caps_apply_as_in_the_store(self):
        """The latest-state caps evict the same entries on a replica as on the store."""
        retention = Retention(max_agents=2, max_events=3)
        store = MemoryStore(retention)
        appended = self.fill(store)
        replica = Replica(store.epoch, retention)
        for event in appended:
            replica.apply(event, T0)
        self.assertEqual(reads(replica), reads(store))
        self.assertEqual([a["agentId"] for a in replica.agents()], ["a1", "a3"])

    def test_out_of_order_refused(self):
        """An event that is not the next seq raises OutOfOrder and changes nothing."""
        store = MemoryStore()
        appended = self.fill(store)
        replica = Replica(store.epoch)
        replica.apply(appended[0], T0)
        before = reads(replica)
        self.assertRaises(OutOfOrder, replica.apply, appended[2], T0)
        self.assertRaises(OutOfOrder, replica.apply, appended[0], T0)
        self.assertEqual(reads(replica), before)

    def test_append_refused(self):
        """A replica assigns no seqs: each append method raises TypeError."""
        replica = Replica("epoch")
        self.assertRaises(TypeError, replica.append, "agent:status", status("a1"), "ts", T0)
        self.assertRaises(TypeError, replica.append_many, [], "ts", T0)
        self.assertRaises(TypeError, replica.append_each, [], "ts", T0)
        self.assertEqual(replica.last_seq, 0)

    def test_starts_at_a_seq(self):
        """A replica started at a seq applies the one after it first; its history starts there."""
        replica = Replica("epoch", last_seq=41)
        self.assertRaises(OutOfOrder, replica.apply,
                          StoredEvent(1, "agent:status", status("a1"), "ts"), T0)
        replica.apply(StoredEvent(42, "agent:status", status("a1"), "ts"), T0)
        self.assertEqual((replica.first_seq, replica.last_seq), (42, 42))

    def test_load_from_retained_history_and_latest_state(self):
        """
        A replica loaded from what a shared store retains (its latest state, its owners, its
        retained history, its last seq) reads as that store, owners of sessions whose events
        left the history included, and goes on with the next seq.
        """
        store = MemoryStore(Retention(max_events=3))
        self.fill(store)
        retained = [(event, T0) for event in store.events_after(0, 100)]
        owners = {s: store.session_owner(s) for s in ("s1", "s2") if store.session_owner(s)}
        replica = Replica(store.epoch, Retention(max_events=3))
        replica.load(retained, store.state("agent:status"), store.state("session:activity"),
                     owners, store.last_seq)
        self.assertEqual(reads(replica), reads(store))
        self.assertEqual(replica.session_owner("s2"), "a2")
        following = store.append("agent:status", status("a4"), "ts", T0)[0]
        replica.apply(following, T0)
        self.assertEqual(reads(replica), reads(store))

    def test_load_without_history(self):
        """With every event trimmed, the replica starts after the last seq: nothing to replay."""
        store = MemoryStore()
        store.append("agent:status", status("a1"), "ts", T0)
        replica = Replica("epoch")
        replica.load([], store.state("agent:status"), [], {}, 9)
        self.assertEqual((replica.first_seq, replica.last_seq), (10, 9))
        self.assertEqual(replica.events_after(0, 10), [])
        self.assertEqual(replica.agent("a1"), status("a1"))
