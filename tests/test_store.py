"""
Tests for L{mission_control.store.memory.MemoryStore}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.store import MemoryStore


class MemoryStoreTests(SynchronousTestCase):
    """Sequence numbers and latest state."""

    def test_seq_increases_without_gaps(self):
        """Each append gets the next seq, starting at 1; last_seq follows."""
        store = MemoryStore()
        self.assertEqual(store.last_seq, 0)
        seqs = [store.append("agent:status", {"agentId": f"a{i}"}) for i in range(5)]
        self.assertEqual((seqs, store.last_seq), ([1, 2, 3, 4, 5], 5))

    def test_latest_per_key(self):
        """Only the newest payload per agent and per session is kept, most recent last."""
        store = MemoryStore()
        store.append("agent:status", {"agentId": "a1", "status": "online"})
        store.append("agent:status", {"agentId": "a2", "status": "idle"})
        store.append("agent:status", {"agentId": "a1", "status": "busy"})
        store.append("session:activity", {"sessionId": "s1", "activity": "started"})
        self.assertEqual(store.agents(), [{"agentId": "a2", "status": "idle"},
                                          {"agentId": "a1", "status": "busy"}])
        self.assertEqual(store.sessions(), [{"sessionId": "s1", "activity": "started"}])

    def test_bounded(self):
        """Past the cap the least recently updated entry is forgotten."""
        store = MemoryStore(max_agents=2, max_sessions=1)
        for agent in ("a1", "a2", "a1", "a3"):
            store.append("agent:status", {"agentId": agent})
        self.assertEqual([a["agentId"] for a in store.agents()], ["a1", "a3"])
        store.append("session:activity", {"sessionId": "s1"})
        store.append("session:activity", {"sessionId": "s2"})
        self.assertEqual(store.sessions(), [{"sessionId": "s2"}])

    def test_epoch_per_store(self):
        """Each new store is a new history with its own epoch."""
        self.assertNotEqual(MemoryStore().epoch, MemoryStore().epoch)
