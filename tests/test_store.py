# -*- test-case-name: tests.test_store -*-
"""
Tests for L{mission_control.store}: one contract, L{StoreContractMixin}, run against every
implementation of L{IEventStore} (memory, and SQLite on a real file), plus what only the durable
store promises: surviving a close, a reopen and a killed process, and refusing unusable files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mission_control.store import (
    IDEMPOTENCY_WINDOW,
    IdempotencyConflict,
    IEventStore,
    MemoryStore,
    Retention,
    SQLiteStore,
    StoredEvent,
)
from mission_control.store.schema import SCHEMA_1, SCHEMA_VERSION
from tests.helpers import T0, TS, activity, status

class StoreContractMixin:
    """
    The behaviour every L{IEventStore} shares.  A subclass mixes this into a L{SynchronousTestCase}
    and provides L{make_store}.
    """

    def make_store(self, retention: Retention = Retention()) -> IEventStore:
        """A new, empty store with C{retention}, closed when the test ends."""
        raise NotImplementedError

    def publish(self, store: IEventStore, n: int, now: float = T0, start: int = 0) -> list[int]:
        """Append C{n} agent statuses of agents C{a<start>}... at C{now}; their seqs."""
        return [
            store.append("agent:status", status(f"a{i}"), TS, now)[0].seq
            for i in range(start, start + n)
        ]

    def seqs(self, store: IEventStore, after: int = 0, limit: int = 1000) -> list[int]:
        """The seqs of the retained events after C{after}."""
        return [event.seq for event in store.events_after(after, limit)]

    # The interface

    def test_provides_interface(self):
        """The store provides every attribute and method of IEventStore."""
        self.assertTrue(verifyObject(IEventStore, self.make_store()))

    def test_empty(self):
        """A new store has no events and no state: last_seq 0, first_seq 1."""
        store = self.make_store()
        self.assertEqual(
            (store.last_seq, store.first_seq, store.events_after(0, 10)),
            (0, 1, []),
        )
        self.assertEqual((store.agents(), store.sessions()), ([], []))

    def test_close_twice(self):
        """Closing a store twice is harmless."""
        store = self.make_store()
        store.close()
        store.close()

    def test_negative_retention_refused(self):
        """A negative limit is refused with ValueError when the store is made."""
        self.assertRaises(ValueError, self.make_store, Retention(max_events=-1))

    # Sequence numbers

    def test_seq_starts_at_one_without_gaps(self):
        """Appends get seq 1, 2, 3, ... and last_seq follows; first_seq stays at 1."""
        store = self.make_store()
        self.assertEqual(self.publish(store, 5), [1, 2, 3, 4, 5])
        self.assertEqual((store.last_seq, store.first_seq), (5, 1))

    def test_append_returns_stored_event(self):
        """append returns the StoredEvent it stored, with created true."""
        store = self.make_store()
        payload = status("a1", "busy", message="compiling")
        event, created = store.append("agent:status", payload, TS, T0)
        self.assertTrue(created)
        self.assertEqual(event, StoredEvent(seq=1, type="agent:status", payload=payload, ts=TS))
        self.assertEqual(
            event.envelope(),
            {"type": "agent:status", "payload": payload, "ts": TS, "seq": 1},
        )

    def test_bad_event_consumes_no_seq(self):
        """
        An unknown type, or a payload without its agentId / sessionId, raises ValueError and
        consumes no seq: the next good event still gets seq 1.
        """
        store = self.make_store()
        self.assertRaises(ValueError, store.append, "presence:join", {"agentId": "a"}, TS, T0)
        self.assertRaises(ValueError, store.append, "agent:status", {"status": "idle"}, TS, T0)
        self.assertRaises(ValueError, store.append, "session:activity", status("a1"), TS, T0)
        self.assertEqual((store.last_seq, store.events_after(0, 10)), (0, []))
        self.assertEqual(self.publish(store, 1), [1])

    # History

    def test_events_after_in_order(self):
        """events_after gives the events with a greater seq, oldest first, as appended."""
        store = self.make_store()
        appended = [
            store.append("agent:status", status("a1"), "2027-01-15T08:00:00.001Z", T0)[0],
            store.append("session:activity", activity("s1"), "2027-01-15T08:00:00.002Z", T0)[0],
            store.append("agent:status", status("a1", "idle"), "2027-01-15T08:00:00.003Z", T0)[0],
        ]
        self.assertEqual(store.events_after(0, 10), appended)
        self.assertEqual(store.events_after(1, 10), appended[1:])
        self.assertEqual(store.events_after(3, 10), [])

    def test_events_after_limit(self):
        """At most limit events come back, the oldest ones; a limit of 0 gives none."""
        store = self.make_store()
        self.publish(store, 10)
        self.assertEqual(self.seqs(store, 0, 3), [1, 2, 3])
        self.assertEqual(self.seqs(store, 3, 3), [4, 5, 6])
        self.assertEqual(self.seqs(store, 8, 3), [9, 10])
        self.assertEqual(store.events_after(0, 0), [])

    def test_events_matching_filters_by_type_and_subject(self):
        """
        events_matching gives the events of one type, or of one agent or session of it (by the
        payload's agentId or sessionId, not by a field inside detail), oldest first.
        """
        store = self.make_store()
        store.append("session:activity", activity("s1"), TS, T0)
        store.append("agent:status", status("s1"), TS, T0)
        store.append("session:activity", activity("s2", detail={"sessionId": "s1"}), TS, T0)
        store.append("session:activity", activity("s1", "completed"), TS, T0)
        store.append("session:activity", activity("s10"), TS, T0)

        def seqs(event_type, subject=None, since=0, limit=10):
            found, through = store.events_matching(since, limit, 100, event_type, subject)
            return [event.seq for event in found], through

        self.assertEqual(seqs("session:activity", "s1"), ([1, 4], 5))
        self.assertEqual(seqs("session:activity"), ([1, 3, 4, 5], 5))
        self.assertEqual(seqs("agent:status", "s1"), ([2], 5))
        self.assertEqual(seqs("agent:status", "a9"), ([], 5))
        self.assertEqual(seqs("session:activity", "s1", since=1), ([4], 5))
        [event], _ = store.events_matching(3, 10, 100, "session:activity", "s1")
        self.assertEqual(event, store.events_after(3, 1)[0])

    def test_events_matching_stops_at_limit(self):
        """With limit matches found, the call stops and names the last match's seq as through."""
        store = self.make_store()
        for i in range(10):
            store.append("session:activity", activity("s1" if i % 2 else "s2"), TS, T0)
        found, through = store.events_matching(0, 2, 100, "session:activity", "s1")
        self.assertEqual(([e.seq for e in found], through), ([2, 4], 4))
        found, through = store.events_matching(through, 2, 100, "session:activity", "s1")
        self.assertEqual(([e.seq for e in found], through), ([6, 8], 8))
        found, through = store.events_matching(through, 2, 100, "session:activity", "s1")
        self.assertEqual(([e.seq for e in found], through), ([10], 10))
        self.assertEqual(store.events_matching(0, 0, 100, "session:activity"), ([], 0))

    def test_events_matching_looks_at_scan_seqs_at_most(self):
        """
        Only the scan seqs after since are looked at: a rare match further on is found by the
        next call, from through, and through never passes last_seq or goes below since.
        """
        store = self.make_store()
        self.publish(store, 25)
        store.append("session:activity", activity("s1"), TS, T0)
        self.assertEqual(store.events_matching(0, 10, 10, "session:activity", "s1"), ([], 10))
        self.assertEqual(store.events_matching(10, 10, 10, "session:activity", "s1"), ([], 20))
        found, through = store.events_matching(20, 10, 10, "session:activity", "s1")
        self.assertEqual(([e.seq for e in found], through), ([26], 26))
        self.assertEqual(store.events_matching(26, 10, 10, "session:activity"), ([], 26))
        self.assertEqual(store.events_matching(40, 10, 10, "session:activity"), ([], 40))

    def test_events_matching_starts_at_first_seq(self):
        """From a since that retention passed, the window starts at the oldest retained event."""
        store = self.make_store(Retention(max_events=5))
        for i in range(12):
            store.append("session:activity", activity(f"s{i % 3}"), TS, T0)
        store.trim(T0)
        self.assertEqual(store.first_seq, 8)
        found, through = store.events_matching(0, 10, 3, "session:activity", "s1")
        self.assertEqual(([e.seq for e in found], through), ([8], 10))
        found, through = store.events_matching(0, 10, 100, "session:activity", "s0")
        self.assertEqual(([e.seq for e in found], through), ([10], 12))

    def test_events_matching_empty_store(self):
        """An empty store has nothing to match: through is since."""
        store = self.make_store()
        self.assertEqual(store.events_matching(0, 10, 100, "agent:status"), ([], 0))
        self.assertEqual(store.events_matching(7, 10, 100, "agent:status", "a1"), ([], 7))

    def test_payload_round_trip(self):
        """Nested objects, non-ASCII text and numbers come back exactly as appended."""
        store = self.make_store()
        payload = activity(
            "s1", "tool_call", agentId="a1", summary="Résumé ✓ 日本",
            detail={"args": [1, 2.5, None, True], "nested": {"quote": "\"'\\"}},
        )
        store.append("session:activity", payload, TS, T0)
        self.assertEqual(store.events_after(0, 1)[0].payload, payload)
        self.assertEqual(store.sessions(), [payload])

    # Latest state

    def test_latest_most_recent_wins(self):
        """Only the newest payload per agent is kept, least recently updated first."""
        store = self.make_store()
        store.append("agent:status", status("a1", "online"), TS, T0)
        store.append("agent:status", status("a2", "idle"), TS, T0)
        store.append("agent:status", status("a1", "busy"), TS, T0)
        self.assertEqual(store.agents(), [status("a2", "idle"), status("a1", "busy")])

    def test_sessions_apart_from_agents(self):
        """Session activity is latest state per session, and does not touch the agents' list."""
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0)
        store.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        store.append("session:activity", activity("s2"), TS, T0)
        store.append("session:activity", activity("s1", "completed"), TS, T0)
        self.assertEqual(store.agents(), [status("a1")])
        self.assertEqual(store.sessions(), [activity("s2"), activity("s1", "completed")])

    def test_agent_cap_evicts_least_recently_updated(self):
        """Past max_agents the agent updated longest ago is forgotten, before and after trim."""
        store = self.make_store(Retention(max_agents=2))
        for agent in ("a1", "a2", "a1", "a3"):
            store.append("agent:status", status(agent), TS, T0)
        self.assertEqual([a["agentId"] for a in store.agents()], ["a1", "a3"])
        store.trim(T0)
        self.assertEqual([a["agentId"] for a in store.agents()], ["a1", "a3"])
        store.append("agent:status", status("a2"), TS, T0)
        self.assertEqual([a["agentId"] for a in store.agents()], ["a3", "a2"])

    def test_session_cap_evicts_least_recently_updated(self):
        """Past max_sessions the session updated longest ago is forgotten."""
        store = self.make_store(Retention(max_sessions=1))
        store.append("session:activity", activity("s1"), TS, T0)
        store.append("session:activity", activity("s2"), TS, T0)
        store.trim(T0)
        self.assertEqual(store.sessions(), [activity("s2")])

    def test_state_entries_carry_their_encoding(self):
        """state() gives each latest payload with its JSON encoding, in the order of agents()."""
        store = self.make_store()
        store.append("agent:status", status("a1", message="Résumé ✓"), TS, T0)
        store.append("agent:status", status("a2"), TS, T0)
        entries = store.state("agent:status")
        self.assertEqual([entry.payload for entry in entries], store.agents())
        self.assertEqual([json.loads(entry.encoded) for entry in entries], store.agents())
        self.assertEqual(store.state("session:activity"), [])

    def test_agent_lookup(self):
        """agent() is the latest status of one agent, None for an unknown one."""
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0)
        store.append("agent:status", status("a1", "busy"), TS, T0)
        self.assertEqual(store.agent("a1"), status("a1", "busy"))
        self.assertIsNone(store.agent("a2"))

    def test_sessions_capped_per_agent(self):
        """
        Past max_sessions_per_agent, an agent's least recently updated session leaves the latest
        state; other agents' sessions and sessions naming no agent are not touched.
        """
        store = self.make_store(Retention(max_sessions_per_agent=2))
        store.append("session:activity", activity("x1", agentId="other"), TS, T0)
        store.append("session:activity", activity("n1"), TS, T0)
        for session in ("s1", "s2", "s1", "s3", "s4"):
            store.append("session:activity", activity(session, agentId="flood"), TS, T0)
        self.assertEqual([s["sessionId"] for s in store.sessions()], ["x1", "n1", "s3", "s4"])
        store.trim(T0)
        self.assertEqual([s["sessionId"] for s in store.sessions()], ["x1", "n1", "s3", "s4"])

    def test_non_json_payload_consumes_no_seq(self):
        """
        A payload that is not JSON (a lone surrogate, NaN) raises ValueError before a seq is used,
        and leaves no state behind that would break later reads.
        """
        store = self.make_store()
        for bad in (status("a1", message="\ud800"), status("a1", metadata={"x": float("nan")})):
            self.assertRaises(ValueError, store.append, "agent:status", bad, TS, T0)
        self.assertEqual((store.last_seq, store.agents(), store.events_after(0, 10)), (0, [], []))
        self.assertEqual(self.publish(store, 1), [1])

    # Session owners

    def test_session_owner_is_the_first_agent_named(self):
        """
        A session belongs to the first agent its activity names; later activity naming another
        agent or none does not change that.  A session no activity named an agent has no owner.
        """
        store = self.make_store()
        store.append("session:activity", activity("s1"), TS, T0)
        self.assertIsNone(store.session_owner("s1"))
        store.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        store.append("session:activity", activity("s1"), TS, T0)
        store.append("session:activity", activity("s1", agentId="a2"), TS, T0)
        self.assertEqual(store.session_owner("s1"), "a1")
        self.assertIsNone(store.session_owner("s2"))

    def test_session_owner_outlives_the_latest_state(self):
        """
        A session pushed out of the latest state keeps its owner while the history still holds
        one of its events, and loses it once the history does not.
        """
        store = self.make_store(Retention(max_sessions=1, max_events=3))
        store.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        store.append("session:activity", activity("s1"), TS, T0)
        store.append("session:activity", activity("s2", agentId="a2"), TS, T0)
        store.trim(T0)
        self.assertEqual([s["sessionId"] for s in store.sessions()], ["s2"])
        self.assertEqual(store.session_owner("s1"), "a1")
        self.publish(store, 2)  # s1's events leave the history
        store.trim(T0)
        self.assertIsNone(store.session_owner("s1"))
        self.assertEqual(store.session_owner("s2"), "a2")

    def test_session_owner_outlives_the_history(self):
        """A session whose events all aged out keeps its owner while its latest state is kept."""
        store = self.make_store(Retention(max_age=10))
        store.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        store.trim(T0 + 1000)
        self.assertEqual(store.events_after(0, 10), [])
        self.assertEqual(store.session_owner("s1"), "a1")

    # Retention

    def test_retention_by_count(self):
        """
        At most max_events events are retained, the newest: first_seq moves up as soon as the
        limit is passed, and trim keeps it there.
        """
        store = self.make_store(Retention(max_events=3))
        self.publish(store, 5)
        self.assertEqual((store.first_seq, self.seqs(store)), (3, [3, 4, 5]))
        store.trim(T0)
        self.assertEqual((store.first_seq, store.last_seq, self.seqs(store)), (3, 5, [3, 4, 5]))

    def test_events_after_below_first_seq(self):
        """Asking for events after a seq that was trimmed gives the retained ones from first_seq."""
        store = self.make_store(Retention(max_events=2))
        self.publish(store, 4)
        store.trim(T0)
        self.assertEqual(self.seqs(store, 1), [3, 4])
        self.assertEqual(self.seqs(store, 0, 1), [3])

    def test_retention_by_age(self):
        """trim drops events older than max_age at the given now, and nothing before that."""
        store = self.make_store(Retention(max_age=100))
        for offset in (0, 50, 100):
            store.append("agent:status", status("a1"), TS, T0 + offset)
        store.trim(T0 + 100)
        self.assertEqual(self.seqs(store), [1, 2, 3])
        store.trim(T0 + 160)
        self.assertEqual((store.first_seq, self.seqs(store)), (3, [3]))

    def test_age_retention_keeps_an_unbroken_range(self):
        """
        When the clock stepped back, trimming by age stops at the first event young enough, so
        the retained events stay one unbroken range of seqs (no hole a resume could fall into).
        """
        store = self.make_store(Retention(max_age=100))
        for offset in (0, 200, -100, 300):
            store.append("agent:status", status("a1"), TS, T0 + offset)
        store.trim(T0 + 150)
        self.assertEqual((store.first_seq, self.seqs(store)), (2, [2, 3, 4]))

    def test_last_seq_survives_trimming_everything(self):
        """
        When every event has aged out, last_seq stays, first_seq is last_seq + 1, and the next
        append continues the sequence.
        """
        store = self.make_store(Retention(max_age=10))
        self.publish(store, 3)
        store.trim(T0 + 1000)
        self.assertEqual((store.last_seq, store.first_seq, self.seqs(store)), (3, 4, []))
        self.assertEqual(self.publish(store, 1, now=T0 + 1000), [4])
        self.assertEqual((store.first_seq, self.seqs(store)), (4, [4]))

    def test_trim_keeps_latest_state(self):
        """Trimming the history by age does not forget the latest state of agents and sessions."""
        store = self.make_store(Retention(max_age=10))
        store.append("agent:status", status("a1"), TS, T0)
        store.append("session:activity", activity("s1"), TS, T0)
        store.trim(T0 + 1000)
        self.assertEqual((store.agents(), store.sessions()), ([status("a1")], [activity("s1")]))

    # Epoch

    def test_epoch_stable(self):
        """A store's epoch is a non-empty string that appends and trims do not change."""
        store = self.make_store(Retention(max_events=1))
        epoch = store.epoch
        self.publish(store, 3)
        store.trim(T0 + 10**6)
        self.assertIsInstance(epoch, str)
        self.assertTrue(epoch)
        self.assertEqual(store.epoch, epoch)

    def test_epoch_per_store(self):
        """Two new stores are two histories with different epochs."""
        self.assertNotEqual(self.make_store().epoch, self.make_store().epoch)

    # Client positions

    def test_position_absent(self):
        """An unknown user and client name has no position."""
        self.assertIsNone(self.make_store().position("alice", "wall"))

    def test_position_saved_and_overwritten(self):
        """save_position is read back by position; a later save replaces it."""
        store = self.make_store()
        store.save_position("alice", "wall", 41, T0)
        self.assertEqual(store.position("alice", "wall"), 41)
        store.save_position("alice", "wall", 57, T0)
        self.assertEqual(store.position("alice", "wall"), 57)

    def test_position_per_user_and_client(self):
        """Positions are kept apart per user and per client name."""
        store = self.make_store()
        store.save_position("alice", "wall", 1, T0)
        store.save_position("alice", "laptop", 2, T0)
        store.save_position("bob", "wall", 3, T0)
        self.assertEqual(
            [store.position(u, c) for u, c in [("alice", "wall"), ("alice", "laptop"),
                                               ("bob", "wall"), ("bob", "laptop")]],
            [1, 2, 3, None],
        )

    def test_stale_position_trimmed(self):
        """trim forgets a position not saved within max_age, and keeps a recent one."""
        store = self.make_store(Retention(max_age=100))
        store.save_position("alice", "old", 1, T0)
        store.save_position("alice", "new", 2, T0 + 150)
        store.trim(T0 + 200)
        self.assertIsNone(store.position("alice", "old"))
        self.assertEqual(store.position("alice", "new"), 2)

    # Idempotency

    def test_idempotent_repeat(self):
        """
        A repeat of a key with the same fingerprint within the window returns the first event
        with created false, and appends nothing: no seq, no history, no latest-state change.
        """
        store = self.make_store()
        first, created = store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        self.assertTrue(created)
        again, created = store.append(
            "agent:status", status("a1", "error"), TS, T0 + 5, ("alice", "k1", "f1")
        )
        self.assertEqual((again, created), (first, False))
        self.assertEqual((store.last_seq, self.seqs(store)), (1, [1]))
        self.assertEqual(store.agents(), [status("a1")])

    def test_idempotency_conflict(self):
        """The same key with another fingerprint raises IdempotencyConflict and appends nothing."""
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        self.assertRaises(
            IdempotencyConflict,
            store.append, "agent:status", status("a2"), TS, T0, ("alice", "k1", "f2"),
        )
        self.assertEqual((store.last_seq, store.agents()), (1, [status("a1")]))

    def test_idempotency_per_user(self):
        """Another user's identical key is a different key: it appends."""
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        event, created = store.append("agent:status", status("a1"), TS, T0, ("bob", "k1", "f1"))
        self.assertEqual((event.seq, created), (2, True))

    def test_idempotency_expires(self):
        """
        IDEMPOTENCY_WINDOW seconds after the first use, a key is new again: it appends (even with
        another fingerprint), and its later repeats return the new event.
        """
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        _, created = store.append(
            "agent:status", status("a1"), TS, T0 + IDEMPOTENCY_WINDOW - 1, ("alice", "k1", "f1")
        )
        self.assertFalse(created)
        later = T0 + IDEMPOTENCY_WINDOW
        second, created = store.append(
            "agent:status", status("a1"), TS, later, ("alice", "k1", "f2")
        )
        self.assertEqual((second.seq, created), (2, True))
        again, created = store.append(
            "agent:status", status("a9"), TS, later + 1, ("alice", "k1", "f2")
        )
        self.assertEqual((again, created), (second, False))

    def test_idempotency_forgotten_by_trim(self):
        """trim forgets keys older than the window: a late repeat appends."""
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        store.append("agent:status", status("a2"), TS, T0 + 300, ("alice", "k2", "f1"))
        store.trim(T0 + IDEMPOTENCY_WINDOW + 1)
        _, created1 = store.append("agent:status", status("a1"), TS, T0 + 1, ("alice", "k1", "f1"))
        _, created2 = store.append(
            "agent:status", status("a2"), TS, T0 + 301, ("alice", "k2", "f1")
        )
        self.assertEqual((created1, created2), (True, False))

    def test_idempotent_repeat_after_event_left_history(self):
        """A repeat is answered with the first event even after retention dropped that event."""
        store = self.make_store(Retention(max_events=1))
        first, _ = store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        self.publish(store, 2)
        store.trim(T0)
        again, created = store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        self.assertEqual((again, created, store.last_seq), (first, False, 3))


    # Batches

    def test_append_many_consecutive_seqs(self):
        """
        A batch takes the next seqs, consecutive and in order, after single appends and before
        the next; every event carries the batch's ts and is in the history as returned.
        """
        store = self.make_store()
        self.publish(store, 2)
        items = [("agent:status", status("b1")), ("session:activity", activity("s1")),
                 ("agent:status", status("b2", "busy"))]
        stored, created = store.append_many(items, TS, T0)
        self.assertTrue(created)
        self.assertEqual([(e.seq, e.type, e.payload, e.ts) for e in stored],
                         [(3 + i, kind, payload, TS) for i, (kind, payload) in enumerate(items)])
        self.assertEqual(store.events_after(2, 10), stored)
        self.assertEqual((store.last_seq, self.publish(store, 1, start=9)), (5, [6]))

    def test_append_many_latest_state_in_order(self):
        """
        The latest state after a batch is what as many single appends leave: the last event of
        an agent in the batch wins, and the order of updates is the batch's.
        """
        store = self.make_store()
        store.append("agent:status", status("a0"), TS, T0)
        store.append_many([("agent:status", status("a1")), ("agent:status", status("a0", "busy")),
                           ("agent:status", status("a1", "error"))], TS, T0)
        self.assertEqual(store.agents(), [status("a0", "busy"), status("a1", "error")])

    def test_append_many_owners_claimed_within_the_batch(self):
        """
        The first activity of a session in a batch that names an agent makes it the owner, and
        a later one naming another agent does not change that, as with single appends.
        """
        store = self.make_store()
        store.append_many([("session:activity", activity("s1")),
                           ("session:activity", activity("s1", agentId="a1")),
                           ("session:activity", activity("s1", "message", agentId="a2")),
                           ("session:activity", activity("s2", agentId="a2"))], TS, T0)
        self.assertEqual((store.session_owner("s1"), store.session_owner("s2")), ("a1", "a2"))

    def test_append_many_bad_event_appends_nothing(self):
        """
        A batch with an event that cannot be stored (no id, not JSON) raises and appends none of
        them: no seq used, no latest state, no owner.  An empty batch is refused too.
        """
        store = self.make_store()
        self.publish(store, 1)
        for bad in (("agent:status", {"status": "online"}), ("agent:status", status("x", x={1})),
                    ("presence:join", {"userId": "u"})):
            items = [("session:activity", activity("s1", agentId="a1")), bad,
                     ("agent:status", status("a9"))]
            self.assertRaises((ValueError, TypeError), store.append_many, items, TS, T0)
        self.assertRaises(ValueError, store.append_many, [], TS, T0)
        self.assertEqual((store.last_seq, self.seqs(store)), (1, [1]))
        self.assertEqual((store.sessions(), store.session_owner("s1")), ([], None))
        self.assertEqual([a["agentId"] for a in store.agents()], ["a0"])
        self.assertEqual(self.publish(store, 1, start=5), [2])

    def test_append_many_idempotent_repeat(self):
        """
        A batch's key repeated with the same fingerprint returns every event of the first
        batch, created false, and appends nothing; another fingerprint is a conflict.
        """
        store = self.make_store()
        items = [("agent:status", status("a1")), ("session:activity", activity("s1"))]
        first, _ = store.append_many(items, TS, T0, ("alice", "k1", "f1"))
        store.append("agent:status", status("a2"), TS, T0)
        again, created = store.append_many([("agent:status", status("a7"))], "later", T0 + 5,
                                           ("alice", "k1", "f1"))
        self.assertEqual((again, created), (first, False))
        self.assertRaises(IdempotencyConflict, store.append_many, items, TS, T0,
                          ("alice", "k1", "f2"))
        self.assertEqual(store.last_seq, 3)

    def test_append_many_repeat_after_events_left_history(self):
        """A batch's repeat is answered with its events even after retention dropped them."""
        store = self.make_store(Retention(max_events=1))
        first, _ = store.append_many([("agent:status", status("a1")),
                                      ("agent:status", status("a2"))], TS, T0, ("alice", "k", "f"))
        self.publish(store, 2)
        store.trim(T0)
        again, created = store.append_many([("agent:status", status("a1"))], TS, T0,
                                           ("alice", "k", "f"))
        self.assertEqual((again, created, store.last_seq), (first, False, 4))

    def test_batch_and_single_keys_do_not_mix(self):
        """
        A key first used by a batch is a conflict for a single append, and the other way round,
        even with the same fingerprint: neither answer has the shape the other expects.
        """
        store = self.make_store()
        store.append_many([("agent:status", status("a1"))], TS, T0, ("alice", "kb", "f"))
        store.append("agent:status", status("a1"), TS, T0, ("alice", "ks", "f"))
        self.assertRaises(IdempotencyConflict, store.append, "agent:status", status("a1"), TS, T0,
                          ("alice", "kb", "f"))
        self.assertRaises(IdempotencyConflict, store.append_many, [("agent:status", status("a1"))],
                          TS, T0, ("alice", "ks", "f"))
        self.assertEqual(store.last_seq, 2)

    # Groups of single appends

    def test_append_each_consecutive_seqs(self):
        """
        A group takes the next seqs, consecutive and in order, each item answered as its own
        append would be (created, the group's ts); the latest state and owners are as after as
        many single appends.
        """
        store = self.make_store()
        self.publish(store, 1)
        items = [("agent:status", status("b1"), None),
                 ("session:activity", activity("s1", agentId="a1"), ("alice", "k1", "f")),
                 ("session:activity", activity("s1", "message", agentId="a2"), None)]
        results = store.append_each(items, TS, T0)
        self.assertEqual([(e.seq, e.type, e.payload, e.ts, created) for e, created in results],
                         [(2 + i, kind, payload, TS, True)
                          for i, (kind, payload, _) in enumerate(items)])
        self.assertEqual(store.events_after(1, 10), [e for e, _ in results])
        self.assertEqual((store.session_owner("s1"), store.last_seq), ("a1", 4))
        again = store.append("session:activity", activity("s1", agentId="a1"), TS, T0,
                             ("alice", "k1", "f"))
        self.assertEqual(again, (results[1][0], False))

    def test_append_each_item_fails_alone(self):
        """
        An item whose key was used for another request, or that cannot be stored, is answered
        with its exception and appends nothing; the items around it are appended, with
        consecutive seqs.
        """
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0, ("alice", "used", "f1"))
        results = store.append_each([
            ("agent:status", status("b1"), None),
            ("agent:status", status("a1", "busy"), ("alice", "used", "f2")),
            ("agent:status", status("x", x={1}), None),
            ("agent:status", {"status": "online"}, None),
            ("agent:status", status("b2"), None),
        ], TS, T0)
        self.assertIsInstance(results[1], IdempotencyConflict)
        self.assertIsInstance(results[2], (TypeError, ValueError))
        self.assertIsInstance(results[3], (TypeError, ValueError))
        self.assertEqual([(results[i][0].seq, results[i][1]) for i in (0, 4)],
                         [(2, True), (3, True)])
        self.assertEqual((store.last_seq, self.seqs(store)), (3, [1, 2, 3]))
        self.assertEqual([a["agentId"] for a in store.agents()], ["a1", "b1", "b2"])

    def test_append_each_key_repeated_within_the_group(self):
        """
        An item that repeats an earlier item's key with the same fingerprint is answered with
        that item's event, created false, and appends nothing; another fingerprint under that
        key is a conflict; a key of a batch is one too.
        """
        store = self.make_store()
        store.append_many([("agent:status", status("a9"))], TS, T0, ("alice", "batch", "f"))
        results = store.append_each([
            ("agent:status", status("a1"), ("alice", "k", "f")),
            ("agent:status", status("a1"), ("alice", "k", "f")),
            ("agent:status", status("a1", "idle"), ("alice", "k", "g")),
            ("agent:status", status("a1"), ("bob", "k", "f")),
            ("agent:status", status("a1"), ("alice", "batch", "f")),
        ], TS, T0)
        first = results[0][0]
        self.assertEqual((first.seq, results[0][1], results[1]), (2, True, (first, False)))
        self.assertIsInstance(results[2], IdempotencyConflict)
        self.assertEqual((results[3][0].seq, results[3][1]), (3, True))
        self.assertIsInstance(results[4], IdempotencyConflict)
        self.assertEqual(store.last_seq, 3)

    def test_append_each_nothing_appended(self):
        """A group none of whose items is appended changes nothing and uses no seq."""
        store = self.make_store()
        first, _ = store.append("agent:status", status("a1"), TS, T0, ("alice", "k", "f"))
        self.assertEqual(store.append_each([("agent:status", status("a1"), ("alice", "k", "f"))],
                                           TS, T0), [(first, False)])
        self.assertEqual(store.append_each([], TS, T0), [])
        self.assertEqual((store.last_seq, self.publish(store, 1)), (1, [2]))


class MemoryStoreTests(StoreContractMixin, SynchronousTestCase):
    """The store contract, in memory."""

    def make_store(self, retention: Retention = Retention()) -> IEventStore:
        store = MemoryStore(retention)
        self.addCleanup(store.close)
        return store

    def test_history_bounded_without_trim(self):
        """Without any trim, the memory held for history stays within twice max_events."""
        store = MemoryStore(Retention(max_events=10))
        self.publish(store, 1000)
        self.assertLessEqual(len(store._events), 20)
        self.assertEqual(self.seqs(store), list(range(991, 1001)))


class SQLiteStoreTests(StoreContractMixin, SynchronousTestCase):
    """The store contract on a real SQLite file, and what only a durable store promises."""

    def make_store(self, retention: Retention = Retention(), path: Optional[str] = None):
        store = SQLiteStore(path or self.new_path(), retention)
        self.addCleanup(store.close)
        return store

    def new_path(self) -> str:
        """A database path in a directory that does not exist yet."""
        return os.path.join(self.mktemp(), "events.db")

    def reopen(self, store: SQLiteStore, retention: Retention = Retention()) -> SQLiteStore:
        """Close C{store} and open its file again."""
        store.close()
        return self.make_store(retention, store.path)

    def write_file(self, content: bytes) -> str:
        """A file holding C{content}, at a path the store may open."""
        path = self.new_path()
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(content)
        return path

    # Surviving a restart

    def test_history_survives_reopen(self):
        """Epoch, seq, retained events and first_seq are the same after close and reopen."""
        store = self.make_store(Retention(max_events=3))
        epoch = store.epoch
        self.publish(store, 5)
        store.trim(T0)
        events = store.events_after(0, 10)
        store = self.reopen(store, Retention(max_events=3))
        self.assertEqual(
            (store.epoch, store.last_seq, store.first_seq, store.events_after(0, 10)),
            (epoch, 5, 3, events),
        )
        self.assertEqual(self.publish(store, 1), [6])

    def test_state_survives_reopen(self):
        """Latest state (in its order), positions and idempotency keys survive a reopen."""
        store = self.make_store()
        store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        store.append("agent:status", status("a2"), TS, T0)
        store.append("agent:status", status("a1", "busy"), TS, T0)
        store.append("session:activity", activity("s1"), TS, T0)
        store.save_position("alice", "wall", 3, T0)
        store = self.reopen(store)
        self.assertEqual(store.agents(), [status("a2"), status("a1", "busy")])
        self.assertEqual(store.sessions(), [activity("s1")])
        self.assertEqual(store.position("alice", "wall"), 3)
        event, created = store.append("agent:status", status("a1"), TS, T0, ("alice", "k1", "f1"))
        self.assertEqual((event.seq, event.payload, created), (1, status("a1"), False))

    def test_latest_caps_survive_reopen(self):
        """
        Reopened, the latest state keeps to the caps in the order of updates, whether or not a
        trim deleted the rows past the cap; trim does delete them from the file.
        """
        retention = Retention(max_agents=2)
        store = self.make_store(retention)
        for agent in ("a1", "a2", "a1", "a3"):
            store.append("agent:status", status(agent), TS, T0)
        store = self.reopen(store, retention)
        self.assertEqual([a["agentId"] for a in store.agents()], ["a1", "a3"])
        store.trim(T0)
        reader = sqlite3.connect(store.path)
        self.addCleanup(reader.close)
        rows = reader.execute("SELECT key FROM latest WHERE kind = 'agent:status' ORDER BY seq")
        self.assertEqual([key for (key,) in rows], ["a1", "a3"])

    def test_session_owner_survives_reopen(self):
        """
        The owner of a session is on disk: after a reopen it is still the first agent named, even
        when the latest state of that session names no agent (an admin's note came last).
        """
        store = self.make_store()
        store.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        store.append("session:activity", activity("s1", "message"), TS, T0)
        store = self.reopen(store)
        self.assertEqual(store.session_owner("s1"), "a1")
        store.trim(T0)
        self.assertEqual(store.session_owner("s1"), "a1")

    def test_per_agent_cap_survives_reopen(self):
        """Sessions an agent's cap pushed out of the latest state stay out after trim and reopen."""
        retention = Retention(max_sessions_per_agent=1)
        store = self.make_store(retention)
        store.append("session:activity", activity("s1", agentId="a1"), TS, T0)
        store.append("session:activity", activity("s2", agentId="a1"), TS, T0)
        store = self.reopen(store, retention)
        self.assertEqual([s["sessionId"] for s in store.sessions()], ["s2"])
        store.trim(T0)
        store = self.reopen(store, Retention())
        self.assertEqual([s["sessionId"] for s in store.sessions()], ["s2"])

    def test_version_1_database_upgraded(self):
        """
        A database of schema version 1 (no session owners) is upgraded when opened: each session's
        owner is the first agent its history names, else the agent its latest state names, and
        its history and epoch are kept.
        """
        path = self.new_path()
        os.makedirs(os.path.dirname(path))
        db = sqlite3.connect(path, isolation_level=None)
        for statement in SCHEMA_1.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO meta (name, value) VALUES ('epoch', 'old-epoch')")
        rows = [
            (1, activity("s1", agentId="a1")),
            (2, activity("s1", "message")),
            (3, activity("s2", agentId="a2")),
        ]
        for seq, payload in rows:
            db.execute("INSERT INTO events (seq, type, payload, ts, created) VALUES (?, ?, ?, ?, ?)",
                       (seq, "session:activity", json.dumps(payload), TS, T0))
        latest = [("s1", activity("s1", "message"), 2), ("s2", activity("s2", agentId="a2"), 3),
                  ("s3", activity("s3", agentId="a3"), 0)]
        for key, payload, seq in latest:
            db.execute("INSERT INTO latest (kind, key, payload, seq, updated) VALUES (?, ?, ?, ?, ?)",
                       ("session:activity", key, json.dumps(payload), seq, T0))
        db.execute("PRAGMA user_version = 1")
        db.close()
        store = self.make_store(path=path)
        self.assertEqual((store.epoch, store.last_seq), ("old-epoch", 3))
        self.assertEqual([store.session_owner(s) for s in ("s1", "s2", "s3", "s4")],
                         ["a1", "a2", "a3", None])
        store = self.reopen(store)
        self.assertEqual(store.session_owner("s1"), "a1")
        with sqlite3.connect(path) as check:
            self.assertEqual(check.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_last_seq_survives_trimming_everything_and_reopen(self):
        """With every event trimmed, a reopened store still continues the sequence."""
        store = self.make_store(Retention(max_age=10))
        self.publish(store, 3)
        store.trim(T0 + 1000)
        store = self.reopen(store, Retention(max_age=10))
        self.assertEqual((store.last_seq, store.first_seq), (3, 4))
        self.assertEqual(self.publish(store, 1, now=T0 + 1000), [4])

    def test_survives_killed_process(self):
        """
        Events appended by a process that is then killed with SIGKILL, without closing the
        store, are all there when the file is opened again.
        """
        path = self.new_path()
        script = (
            "import os, signal, sys\n"
            "from mission_control.store import SQLiteStore\n"
            "store = SQLiteStore(sys.argv[1])\n"
            "for i in range(200):\n"
            "    store.append('agent:status', {'agentId': 'a%d' % i, 'status': 'busy'}, 't', 1.0)\n"
            "print(store.epoch, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        child = subprocess.run(
            [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(child.returncode, -9, child.stderr)
        self.assertTrue(os.path.exists(path + "-wal"), "the child did not die before closing")
        store = self.make_store(path=path)
        self.assertEqual((store.epoch, store.last_seq), (child.stdout.strip(), 200))
        self.assertEqual(len(store.events_after(0, 1000)), 200)
        self.assertEqual(store.agents()[-1], {"agentId": "a199", "status": "busy"})

    # Epoch

    def test_new_file_new_epoch(self):
        """A database created at another path is another history."""
        self.assertNotEqual(self.make_store().epoch, self.make_store().epoch)

    def test_deleted_file_new_epoch(self):
        """Deleting the database loses the history: a new epoch, and seq starts again at 1."""
        store = self.make_store()
        epoch = store.epoch
        self.publish(store, 3)
        store.close()
        os.remove(store.path)
        store = self.make_store(path=store.path)
        self.assertNotEqual(store.epoch, epoch)
        self.assertEqual(self.publish(store, 1), [1])

    # Failures

    def test_failed_transaction_consumes_no_seq(self):
        """
        When SQLite fails after the event row was inserted, the whole append is rolled back:
        no event, no latest state, no seq used, in memory or on disk.
        """
        store = self.make_store()
        self.publish(store, 2)
        saboteur = sqlite3.connect(store.path)
        self.addCleanup(saboteur.close)
        saboteur.execute(
            "CREATE TRIGGER sabotage BEFORE INSERT ON latest WHEN NEW.key = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'sabotaged'); END"
        )
        saboteur.commit()
        self.assertRaises(
            sqlite3.DatabaseError, store.append, "agent:status", status("boom"), TS, T0
        )
        self.assertEqual((store.last_seq, self.seqs(store)), (2, [1, 2]))
        self.assertNotIn("boom", [a["agentId"] for a in store.agents()])
        self.assertEqual(self.publish(store, 1, start=7), [3])
        store = self.reopen(store)
        self.assertEqual((store.last_seq, self.seqs(store)), (3, [1, 2, 3]))
        self.assertNotIn("boom", [a["agentId"] for a in store.agents()])

    def test_failed_batch_leaves_nothing(self):
        """
        When SQLite fails in the middle of a batch, after earlier events of it were inserted,
        the whole batch is rolled back: no event, latest state, owner or key of it, in memory or
        on disk, and the next append takes the next seq, so seqs stay gap-free.
        """
        store = self.make_store()
        self.publish(store, 2)
        saboteur = sqlite3.connect(store.path)
        self.addCleanup(saboteur.close)
        saboteur.execute(
            "CREATE TRIGGER sabotage BEFORE INSERT ON latest WHEN NEW.key = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'sabotaged'); END"
        )
        saboteur.commit()
        items = [("agent:status", status("b1")), ("session:activity", activity("s1", agentId="b1")),
                 ("agent:status", status("boom")), ("agent:status", status("b2"))]
        self.assertRaises(sqlite3.DatabaseError, store.append_many, items, TS, T0,
                          ("alice", "k", "f"))
        self.assertEqual((store.last_seq, self.seqs(store)), (2, [1, 2]))
        self.assertEqual((store.session_owner("s1"), store.sessions()), (None, []))
        self.assertEqual([a["agentId"] for a in store.agents()], ["a0", "a1"])
        stored, created = store.append_many(items[:2], TS, T0, ("alice", "k", "f"))
        self.assertEqual(([e.seq for e in stored], created), ([3, 4], True))
        store = self.reopen(store)
        self.assertEqual((store.last_seq, self.seqs(store)), (4, [1, 2, 3, 4]))
        self.assertEqual(store.session_owner("s1"), "b1")
        self.assertNotIn("boom", [a["agentId"] for a in store.agents()])

    def test_append_each_failure_stores_nothing(self):
        """
        When the database fails in the middle of a group, the whole transaction is rolled back:
        no event, no latest state, no key, no seq of the group is left, in memory or on disk.
        """
        store = self.make_store()
        self.publish(store, 1)
        insert, calls = SQLiteStore._insert, []

        def failing(db, row, ts, now):
            calls.append(row)
            if len(calls) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return insert(db, row, ts, now)

        store._insert = failing
        items = [("agent:status", status("b1"), ("alice", "k", "f")),
                 ("agent:status", status("b2"), None)]
        self.assertRaises(sqlite3.OperationalError, store.append_each, items, TS, T0)
        del store._insert
        self.assertEqual((store.last_seq, self.seqs(store)), (1, [1]))
        self.assertEqual([a["agentId"] for a in store.agents()], ["a0"])
        results = store.append_each(items, TS, T0)
        self.assertEqual([(e.seq, created) for e, created in results], [(2, True), (3, True)])
        path = store.path
        store.close()
        reopened = self.make_store(path=path)
        self.assertEqual((reopened.last_seq, self.seqs(reopened)), (3, [1, 2, 3]))

    def test_batch_survives_reopen_with_its_key(self):
        """A committed batch and its idempotency key are on disk: a reopened store repeats it."""
        store = self.make_store()
        items = [("agent:status", status("a1")), ("session:activity", activity("s1"))]
        first, _ = store.append_many(items, TS, T0, ("alice", "k", "f"))
        store = self.reopen(store)
        self.assertEqual(store.events_after(0, 10), first)
        self.assertEqual(store.append_many(items, TS, T0 + 1, ("alice", "k", "f")), (first, False))

    def test_unencodable_payload_consumes_no_seq(self):
        """A payload that is not JSON raises TypeError before anything is written."""
        store = self.make_store()
        self.assertRaises(TypeError, store.append, "agent:status", status("a1", x={1}), TS, T0)
        self.assertEqual(self.publish(store, 1), [1])

    def assertUnusable(self, path: str, *words: str) -> None:
        """Opening C{path} raises ValueError, in one line naming the file and C{words}."""
        error = self.assertRaises(ValueError, SQLiteStore, path)
        message = str(error)
        self.assertNotIn("\n", message)
        for word in (path, *words):
            self.assertIn(word, message)

    def test_garbage_file_refused(self):
        """A file that is not SQLite is refused with a one-line ValueError."""
        self.assertUnusable(self.write_file(b"not a database\n" * 1000), "not a SQLite database")

    def test_corrupt_database_refused(self):
        """A SQLite file with damaged pages is refused at open, not at some later read."""
        store = self.make_store()
        for i in range(300):
            store.append("agent:status", status(f"a{i}", message="x" * 500), TS, T0)
        store.close()
        # Two pages in the middle of the events table: the schema and the counters stay readable.
        with open(store.path, "r+b") as f:
            f.seek(4096 * 40)
            f.write(b"\xff" * 4096 * 2)
        self.assertUnusable(store.path, "corrupt")

    def test_other_application_database_refused(self):
        """A SQLite database with someone else's tables is refused, and left untouched."""
        path = self.new_path()
        os.makedirs(os.path.dirname(path))
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        other.commit()
        other.close()
        self.assertUnusable(path, "other application")
        other = sqlite3.connect(path)
        self.addCleanup(other.close)
        self.assertEqual(other.execute("PRAGMA user_version").fetchone()[0], 0)

    def test_newer_schema_refused(self):
        """A database written by a newer schema version is refused, naming both versions."""
        store = self.make_store()
        store.close()
        newer = sqlite3.connect(store.path)
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        newer.close()
        self.assertUnusable(store.path, "newer", str(SCHEMA_VERSION + 1), str(SCHEMA_VERSION))

    def test_directory_refused(self):
        """A directory where the database should be is refused with ValueError."""
        path = self.new_path()
        os.makedirs(path)
        self.assertUnusable(path)

    # The file

    def test_creates_directory(self):
        """The database's directory is created when missing."""
        path = os.path.join(self.mktemp(), "deeper", "events.db")
        self.make_store(path=path)
        self.assertTrue(os.path.isfile(path))

    def test_file_mode(self):
        """The database is created readable and writable by its owner only, whatever the umask."""
        old = os.umask(0)
        try:
            store = self.make_store()
        finally:
            os.umask(old)
        self.publish(store, 1)
        self.assertEqual(os.stat(store.path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(store.path + "-wal").st_mode & 0o777, 0o600)

    def test_write_ahead_log(self):
        """
        The database is in WAL mode with synchronous=NORMAL: commits reach the operating system
        before append returns, without an fsync each.
        """
        store = self.make_store()
        reader = sqlite3.connect(store.path)
        self.addCleanup(reader.close)
        self.assertEqual(reader.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(store._db.execute("PRAGMA synchronous").fetchone()[0], 1)
        self.assertEqual(store._db.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)


class MachineRestartTests(SynchronousTestCase):
    """The epoch is renewed when the machine restarted while the database was open."""

    def open(self, path, boot):
        store = SQLiteStore(path, Retention(), boot_id=lambda: boot)
        self.addCleanup(store.close)
        return store

    def crash(self, store):
        """Drop the connection without the clean-close mark, as a dying process would."""
        store._db.close()
        store._db = None

    def test_power_loss_renews_epoch(self):
        """Open when the machine went down (other boot, no clean close): a new epoch."""
        path = os.path.join(self.mktemp(), "events.db")
        store = self.open(path, "boot-1")
        epoch = store.epoch
        self.crash(store)
        again = self.open(path, "boot-2")
        self.assertNotEqual(again.epoch, epoch)
        self.assertIsNotNone(again.epoch_renewed)

    def test_process_crash_keeps_epoch(self):
        """kill -9 of the process (same boot, no clean close) keeps the epoch: commits survived."""
        path = os.path.join(self.mktemp(), "events.db")
        store = self.open(path, "boot-1")
        epoch = store.epoch
        self.crash(store)
        self.assertEqual(self.open(path, "boot-1").epoch, epoch)

    def test_clean_stop_then_reboot_keeps_epoch(self):
        """A clean close before the machine restarted keeps the epoch."""
        path = os.path.join(self.mktemp(), "events.db")
        store = self.open(path, "boot-1")
        epoch = store.epoch
        store.close()
        again = self.open(path, "boot-2")
        self.assertEqual((again.epoch, again.epoch_renewed), (epoch, None))

    def test_unknown_boot_keeps_epoch(self):
        """Where the boot cannot be told, nothing is renewed."""
        path = os.path.join(self.mktemp(), "events.db")
        store = self.open(path, None)
        epoch = store.epoch
        self.crash(store)
        self.assertEqual(self.open(path, None).epoch, epoch)
