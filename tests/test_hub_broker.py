"""
Tests for L{mission_control.hub.broker}: the in-process broker appends to its store and tells
every listener of each new event, in seq order, a batch's event by event; an idempotent repeat
tells nobody; a group of single appends tells of each event it created.  Each append answers with
a Deferred that has fired already, after the listeners were told; a failure fails it.
"""

from __future__ import annotations

import sqlite3

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mission_control.hub.broker import IBroker, InProcessBroker
from mission_control.store import IdempotencyConflict, MemoryStore

PAYLOAD = {"agentId": "a1", "status": "busy", "timestamp": "2027-01-01T00:00:00.000Z"}


class InProcessBrokerTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.broker = InProcessBroker(self.store)
        self.heard: list[tuple[str, int]] = []
        verifyObject(IBroker, self.broker)

    def append(self, idempotency=None):
        """Append PAYLOAD; the Deferred the broker answers with."""
        return self.broker.append("agent:status", PAYLOAD, "2027-01-01T00:00:00.000Z", 0.0,
                                  idempotency)

    def test_listeners_hear_every_append_in_order(self):
        """
        Each listener hears each appended event once, in seq order, before append's Deferred
        fires (it has fired when append returns).
        """
        self.broker.subscribe(lambda event: self.heard.append(("one", event.seq)))
        self.broker.subscribe(lambda event: self.heard.append(("two", event.seq)))
        d = self.append()
        heard_when_fired = []
        d.addCallback(lambda result: heard_when_fired.extend(self.heard) or result)
        event, created = self.successResultOf(d)
        self.assertTrue(created)
        self.assertEqual(event.seq, 1)
        self.assertEqual(heard_when_fired, [("one", 1), ("two", 1)])
        self.assertEqual(self.heard, [("one", 1), ("two", 1)])
        self.successResultOf(self.append())
        self.assertEqual(self.heard, [("one", 1), ("two", 1), ("one", 2), ("two", 2)])
        self.assertEqual(self.store.last_seq, 2)

    def test_repeat_tells_nobody(self):
        """An idempotent repeat returns the first event and tells no listener."""
        self.broker.subscribe(lambda event: self.heard.append(("one", event.seq)))
        first, _ = self.successResultOf(self.append(("alice", "k1", "f")))
        again, created = self.successResultOf(self.append(("alice", "k1", "f")))
        self.assertFalse(created)
        self.assertEqual(again.seq, first.seq)
        self.assertEqual(self.heard, [("one", 1)])
        self.failureResultOf(self.append(("alice", "k1", "other")), IdempotencyConflict)
        self.assertEqual(self.heard, [("one", 1)])

    def test_batch_heard_event_by_event_in_order(self):
        """
        A batch is appended at once, then each listener hears each of its events in seq order
        (the first event by every listener before the second); a repeat of it tells nobody.
        """
        self.broker.subscribe(lambda event: self.heard.append(("one", event.seq)))
        self.broker.subscribe(lambda event: self.heard.append(("two", event.seq)))
        self.successResultOf(self.append())
        items = [("agent:status", PAYLOAD), ("agent:status", dict(PAYLOAD, agentId="a2"))]
        stored, created = self.successResultOf(self.broker.append_many(
            items, "2027-01-01T00:00:00.000Z", 0.0, ("alice", "b", "f")))
        self.assertEqual(([event.seq for event in stored], created), ([2, 3], True))
        self.assertEqual(self.heard, [("one", 1), ("two", 1), ("one", 2), ("two", 2),
                                      ("one", 3), ("two", 3)])
        again, created = self.successResultOf(self.broker.append_many(
            items, "2027-01-01T00:00:00.000Z", 0.0, ("alice", "b", "f")))
        self.assertEqual((again, created, len(self.heard)), (stored, False, 6))

    def test_group_heard_for_created_events_only(self):
        """
        A group of single appends is stored at once, then each listener hears each created
        event in seq order; an item that repeats a key or conflicts is answered but tells
        nobody.
        """
        self.broker.subscribe(lambda event: self.heard.append(("one", event.seq)))
        self.broker.subscribe(lambda event: self.heard.append(("two", event.seq)))
        other = dict(PAYLOAD, agentId="a2")
        results = self.successResultOf(self.broker.append_each([
            ("agent:status", PAYLOAD, ("alice", "k", "f")),
            ("agent:status", PAYLOAD, ("alice", "k", "f")),
            ("agent:status", other, ("alice", "k", "g")),
            ("agent:status", other, None),
        ], "2027-01-01T00:00:00.000Z", 0.0))
        self.assertEqual([(r[0].seq, r[1]) for r in (results[0], results[1], results[3])],
                         [(1, True), (1, False), (2, True)])
        self.assertIsInstance(results[2], IdempotencyConflict)
        self.assertEqual(self.heard, [("one", 1), ("two", 1), ("one", 2), ("two", 2)])

    def test_unsubscribe(self):
        """An unsubscribed listener hears nothing more; unsubscribing a stranger is harmless."""
        def listener(event):
            self.heard.append(("one", event.seq))

        self.broker.subscribe(listener)
        self.successResultOf(self.append())
        self.broker.unsubscribe(listener)
        self.broker.unsubscribe(listener)
        self.successResultOf(self.append())
        self.assertEqual(self.heard, [("one", 1)])

    def test_store_failure_fails_the_deferred(self):
        """
        A store that fails makes each kind of append answer with a failed Deferred, never
        raise; nobody hears of anything.
        """
        self.broker.subscribe(lambda event: self.heard.append(("one", event.seq)))

        def broken(*args):
            raise sqlite3.OperationalError("disk I/O error")

        self.store.append = self.store.append_many = self.store.append_each = broken
        ts = "2027-01-01T00:00:00.000Z"
        self.failureResultOf(self.append(), sqlite3.OperationalError)
        self.failureResultOf(self.broker.append_many([("agent:status", PAYLOAD)], ts, 0.0),
                             sqlite3.OperationalError)
        self.failureResultOf(self.broker.append_each([("agent:status", PAYLOAD, None)], ts, 0.0),
                             sqlite3.OperationalError)
        self.assertEqual(self.heard, [])

    def test_bad_batch_fails_the_deferred(self):
        """An empty batch (a ValueError of the store) fails append_many's Deferred."""
        self.failureResultOf(self.broker.append_many([], "2027-01-01T00:00:00.000Z", 0.0),
                             ValueError)
