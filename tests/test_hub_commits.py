"""
Tests for L{mission_control.hub.commits}: the publishes added in one reactor turn are stored by
one L{IBroker.append_each} at the end of it, each answered after that, in order; a store failure
answers every one of them with it and stores nothing; a session a waiting publish claims is
already taken for every check.  With a broker that answers later, one group is in flight at a
time: the next waits for it, so answers and seqs keep the order of arrival, and the claims of
the group in flight stay visible until it is answered.
"""

from __future__ import annotations

import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mission_control.hub.broker import InProcessBroker
from mission_control.hub.commits import GroupCommit, InFlight
from mission_control.hub.publishing import PendingOwners
from mission_control.store import IdempotencyConflict, MemoryStore
from tests.hubfakes import deferred_broker

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


class GroupInFlightTests(SynchronousTestCase):
    """
    A broker that answers late (L{DeferredBroker}): one group in flight at a time, the next one
    stored once it is answered, answers in arrival order, claims held until then.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore()
        self.broker = deferred_broker(self.store)
        self.in_flight = InFlight()
        self.owners = PendingOwners(self.store.session_owner)
        self.commits = GroupCommit(self.clock, self.broker, self.owners, self.in_flight)
        self.answers: list[tuple[str, object]] = []

    def add(self, name, event_type="agent:status", payload=None):
        payload = payload if payload is not None else status(name)
        self.commits.add(event_type, payload, None,
                         lambda result: self.answers.append((name, result)))

    def answered(self):
        return [(name, result[0].seq if isinstance(result, tuple) else type(result).__name__)
                for name, result in self.answers]

    def groups(self):
        """The items of each append held by the broker, by the names of their agents."""
        return [[payload["agentId"] for _, payload, *_ in args[0]]
                for _, args, _ in self.broker.pending]

    def test_next_group_waits_for_the_one_in_flight(self):
        """
        While a group is in flight, the publishes of later turns wait and are not handed to the
        broker; once it is answered they are stored at once, as the next group, and answered
        after the first group's publishes: answers and seqs follow the order of arrival, so a
        later group can never be answered (nor stored) before an earlier one.
        """
        self.add("a")
        self.add("b")
        self.clock.advance(0)
        self.assertEqual((self.groups(), self.answers, self.commits.storing),
                         ([["a", "b"]], [], True))
        self.add("c")
        self.clock.advance(0)
        self.add("d")
        self.clock.advance(0)
        self.assertEqual((self.groups(), len(self.commits)), ([["a", "b"]], 2))
        self.broker.fire()
        self.assertEqual(self.answered(), [("a", 1), ("b", 2)])
        self.assertEqual((self.groups(), len(self.commits)), ([["c", "d"]], 0))
        self.broker.fire()
        self.assertEqual(self.answered(), [("a", 1), ("b", 2), ("c", 3), ("d", 4)])
        self.assertEqual((self.broker.pending, self.commits.storing, self.in_flight.count),
                         ([], False, 0))

    def test_next_group_waits_for_its_turn(self):
        """
        A group answered before the turn of the next publishes ended leaves them for the end of
        their turn, as when nothing is in flight.
        """
        self.add("a")
        self.clock.advance(0)
        self.add("b")
        self.broker.fire()
        self.assertEqual((self.answered(), self.groups()), ([("a", 1)], []))
        self.clock.advance(0)
        self.assertEqual(self.groups(), [["b"]])

    def test_commit_while_in_flight(self):
        """
        commit() while a group is in flight (a connection's next frame, the hub stopping) hands
        nothing more to the broker; the waiting publishes go as soon as the group is answered,
        without waiting for a turn.
        """
        self.add("a")
        self.commits.commit()
        self.add("b")
        self.commits.commit()
        self.assertEqual((self.groups(), self.clock.getDelayedCalls()), ([["a"]], []))
        self.broker.fire()
        self.assertEqual(self.groups(), [["b"]])
        self.broker.fire()
        self.assertEqual(self.answered(), [("a", 1), ("b", 2)])

    def test_claims_of_a_group_in_flight_are_seen(self):
        """
        A session a group in flight claims is that agent's for every check (the commit's own
        session_owner, and the hub's owners that HTTP publishes are checked with) until the
        group is answered; then the store says so itself, and nothing is held any more.
        """
        self.add("a", "session:activity", activity("s1", "a1"))
        self.clock.advance(0)
        self.assertEqual(self.groups(), [["a1"]])
        self.assertEqual((self.commits.session_owner("s1"), self.owners("s1"),
                          self.store.session_owner("s1")), ("a1", "a1", None))
        self.add("b", "session:activity", activity("s1", "a2"))  # waiting behind: no claim
        self.assertEqual(self.commits.session_owner("s1"), "a1")
        self.broker.fire()
        self.assertEqual((self.store.session_owner("s1"), len(self.owners)), ("a1", 0))
        self.assertEqual(self.commits.session_owner("s1"), "a1")

    def test_failed_group_releases_its_claims(self):
        """
        A group whose append fails later answers every publish of it with that failure, in
        order, logged once; its claims are released, and the publishes that waited are stored
        next.
        """
        self.add("a", "session:activity", activity("s1", "a1"))
        self.add("b")
        self.clock.advance(0)
        self.add("c")
        self.clock.advance(0)
        self.broker.fail(sqlite3.OperationalError("disk I/O error"))
        self.assertEqual(self.answered(), [("a", "OperationalError"), ("b", "OperationalError")])
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual((self.commits.session_owner("s1"), len(self.owners)), (None, 0))
        self.assertEqual(self.groups(), [["c"]])
        self.broker.fire()
        self.assertEqual(self.answered()[-1], ("c", 1))

    def test_in_flight_counted_until_answered(self):
        """
        InFlight counts a group from the moment it is handed to the broker until it is
        answered, the group that follows it included: when_none fires only then.
        """
        self.add("a")
        self.clock.advance(0)
        self.add("b")
        self.commits.commit()
        done = self.in_flight.when_none()
        self.assertNoResult(done)
        self.broker.fire()
        self.assertNoResult(done)
        self.broker.fail(RuntimeError("gone"))
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNone(self.successResultOf(self.in_flight.when_none()))

    def test_answer_never_before_add_returns(self):
        """
        A publish added by an answer (as a reply can lead to another frame) is answered after
        its add() returned, never inside it, with a broker that answers at once.
        """
        commits = GroupCommit(self.clock, InProcessBroker(self.store), self.store.session_owner)
        order = []

        def first(result):
            order.append("first answered")
            commits.add("agent:status", status("b"), None, lambda _: order.append("b answered"))
            order.append("b added")

        commits.add("agent:status", status("a"), None, first)
        self.assertEqual(order, [])
        self.clock.advance(0)
        self.assertEqual(order, ["first answered", "b added", "b answered"])
