"""
Tests for L{mission_control.hub.commits}: the publishes added in one reactor turn are stored by
one L{IBroker.append_each} at the end of it, each answered after that, in order; a store failure
answers every one of them with it and stores nothing; a session a waiting publish claims is
already taken for every check.
"""

from __future__ import annotations

import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mission_control.hub.broker import InProcessBroker
from mission_control.hub.commits import GroupCommit
from mission_control.store import IdempotencyConflict, MemoryStore

TS = "2027-01-01T00:00:00.000Z"


def status(agent: str, state: str = "busy") -> dict:
    return {"agentId": agent, "status": state, "timestamp": TS}


def activity(session: str, agent: str) -> dict:
    return {"sessionId": session, "activity": "started", "agentId": agent, "timestamp": TS}


class GroupCommitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore()
        self.broker = InProcessBroker(self.store)
        self.heard: list[int] = []
        self.broker.subscribe(lambda event: self.heard.append(event.seq))
        self.groups: list[int] = []
        append_each = self.broker.append_each

        def counted(items, ts, now):
            self.groups.append(len(items))
            return append_each(items, ts, now)

        self.broker.append_each = counted
        self.commits = GroupCommit(self.clock, self.broker, self.store.session_owner)
        self.answers: list[tuple[str, object]] = []

    def add(self, name, event_type="agent:status", payload=None, idempotency=None):
        payload = payload if payload is not None else status(name)
        self.commits.add(event_type, payload, idempotency,
                         lambda result: self.answers.append((name, result)))

    def test_one_transaction_at_the_end_of_the_turn(self):
        """
        Publishes added in one turn are stored together, by one append_each, only when the turn
        ends; then each is answered with its event, in the order added, after every listener
        heard of them all.
        """
        for name in ("a", "b", "c"):
            self.add(name)
        self.assertEqual((self.answers, self.store.last_seq, len(self.commits)), ([], 0, 3))
        self.clock.advance(0)
        self.assertEqual(self.groups, [3])
        self.assertEqual([(name, result[0].seq, result[1]) for name, result in self.answers],
                         [("a", 1, True), ("b", 2, True), ("c", 3, True)])
        self.assertEqual((self.heard, len(self.commits)), ([1, 2, 3], 0))
        self.add("d")
        self.clock.advance(0)
        self.assertEqual(self.groups, [3, 1])

    def test_commit_now(self):
        """commit() stores the waiting publishes at once and leaves nothing for the turn's end."""
        self.add("a")
        self.commits.commit()
        self.assertEqual((len(self.answers), self.clock.getDelayedCalls()), (1, []))
        self.commits.commit()  # nothing waiting: nothing stored, nothing answered
        self.assertEqual((self.groups, len(self.answers)), ([1], 1))

    def test_keys_within_a_group(self):
        """
        A key repeated in the same group (same fingerprint) is answered with the first item's
        event, not appended; with another fingerprint it is a conflict for that item alone.
        """
        self.add("a", idempotency=("u", "k", "f"))
        self.add("b", payload=status("a"), idempotency=("u", "k", "f"))
        self.add("c", payload=status("a", "idle"), idempotency=("u", "k", "other"))
        self.add("d")
        self.clock.advance(0)
        results = dict(self.answers)
        self.assertEqual(results["b"], (results["a"][0], False))
        self.assertIsInstance(results["c"], IdempotencyConflict)
        self.assertEqual((results["d"][0].seq, self.store.last_seq, self.heard), (2, 2, [1, 2]))

    def test_store_failure_answers_every_publish(self):
        """
        When the store fails as a whole, every publish of the group is answered with that
        failure, in order; nothing is stored and nobody hears of anything.
        """
        def broken(items, ts, now):
            raise sqlite3.OperationalError("disk I/O error")

        self.broker.append_each = broken
        for name in ("a", "b"):
            self.add(name)
        self.clock.advance(0)
        self.assertEqual([name for name, _ in self.answers], ["a", "b"])
        for _, result in self.answers:
            self.assertIsInstance(result, sqlite3.OperationalError)
        self.assertEqual((self.store.last_seq, self.heard), (0, []))
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)

    def test_waiting_claim_is_seen(self):
        """
        A session a waiting publish claims is that agent's for every check until it is
        stored; then the store says so itself.
        """
        self.assertIsNone(self.commits.session_owner("s1"))
        self.add("a", "session:activity", activity("s1", "a1"))
        self.add("b", "session:activity", activity("s1", "a2"))
        self.assertEqual((self.commits.session_owner("s1"), self.store.session_owner("s1")),
                         ("a1", None))
        self.clock.advance(0)
        self.assertEqual((self.commits.session_owner("s1"), self.store.session_owner("s1")),
                         ("a1", "a1"))
