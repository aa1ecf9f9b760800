# -*- test-case-name: tests.test_store_latest -*-
"""
Tests for L{mission_control.store.latest}: the bounded latest state both stores serve from
memory.  The stores' contract tests (tests/test_store.py) check the same caps through each store.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.store.interface import Retention, StateEntry
from mission_control.store.latest import LatestState, LatestStateReads


def status(agent: str, word: str = "online") -> dict:
    """An C{agent:status} payload."""
    return {"agentId": agent, "status": word}


def activity(session: str, agent: str | None = None) -> dict:
    """A C{session:activity} payload, naming C{agent} when given."""
    payload = {"sessionId": session, "activity": "started"}
    if agent is not None:
        payload["agentId"] = agent
    return payload


class LatestStateTests(SynchronousTestCase):
    """The newest payload per agent and per session, least recently updated first."""

    def test_most_recent_last(self):
        """An update replaces the entry and makes it the most recently updated."""
        latest = LatestState(Retention())
        latest.set("agent:status", "a1", status("a1"), b"1")
        latest.set("agent:status", "a2", status("a2"), b"2")
        latest.set("agent:status", "a1", status("a1", "busy"), b"3")
        self.assertEqual(latest.values("agent:status"), [status("a2"), status("a1", "busy")])
        self.assertEqual(latest.entries("agent:status"),
                         [StateEntry(status("a2"), b"2"), StateEntry(status("a1", "busy"), b"3")])
        self.assertEqual(latest.get("agent:status", "a1"), StateEntry(status("a1", "busy"), b"3"))
        self.assertIsNone(latest.get("agent:status", "a3"))

    def test_types_apart(self):
        """Agents and sessions are kept apart, even under the same key."""
        latest = LatestState(Retention())
        latest.set("agent:status", "x", status("x"), b"a")
        latest.set("session:activity", "x", activity("x"), b"s")
        self.assertEqual(latest.values("agent:status"), [status("x")])
        self.assertEqual(latest.values("session:activity"), [activity("x")])

    def test_cap_forgets_least_recently_updated(self):
        """Past the cap, the least recently updated entry is forgotten, and its key returned."""
        latest = LatestState(Retention(max_agents=2))
        self.assertEqual(latest.set("agent:status", "a1", status("a1"), b""), [])
        latest.set("agent:status", "a2", status("a2"), b"")
        latest.set("agent:status", "a1", status("a1"), b"")
        self.assertEqual(latest.set("agent:status", "a3", status("a3"), b""), ["a2"])
        self.assertEqual([p["agentId"] for p in latest.values("agent:status")], ["a1", "a3"])

    def test_sessions_capped_per_agent(self):
        """
        One agent's sessions past max_sessions_per_agent forget that agent's stalest one; other
        agents' sessions, and sessions naming no agent, are kept.
        """
        latest = LatestState(Retention(max_sessions_per_agent=2))
        latest.set("session:activity", "other", activity("other", "a2"), b"")
        latest.set("session:activity", "anon", activity("anon"), b"")
        latest.set("session:activity", "s1", activity("s1", "a1"), b"")
        latest.set("session:activity", "s2", activity("s2", "a1"), b"")
        self.assertEqual(latest.set("session:activity", "s3", activity("s3", "a1"), b""), ["s1"])
        self.assertEqual([p["sessionId"] for p in latest.values("session:activity")],
                         ["other", "anon", "s2", "s3"])

    def test_session_moves_to_its_new_agent(self):
        """A session whose newest activity names another agent counts against that agent only."""
        latest = LatestState(Retention(max_sessions_per_agent=1))
        latest.set("session:activity", "s1", activity("s1", "a1"), b"")
        latest.set("session:activity", "s1", activity("s1", "a2"), b"")
        self.assertEqual(latest.set("session:activity", "s2", activity("s2", "a1"), b""), [])
        self.assertEqual(latest.set("session:activity", "s3", activity("s3", "a2"), b""), ["s1"])


class LatestStateReadsTests(SynchronousTestCase):
    """The reads a store serves from its L{LatestState}."""

    def test_reads(self):
        """agents, sessions, state and agent read the latest state of their type."""
        reads = LatestStateReads()
        reads._latest = LatestState(Retention())
        reads._latest.set("agent:status", "a1", status("a1"), b"A")
        reads._latest.set("session:activity", "s1", activity("s1"), b"S")
        self.assertEqual(reads.agents(), [status("a1")])
        self.assertEqual(reads.sessions(), [activity("s1")])
        self.assertEqual(reads.state("session:activity"), [StateEntry(activity("s1"), b"S")])
        self.assertEqual(reads.agent("a1"), status("a1"))
        self.assertIsNone(reads.agent("a2"))
