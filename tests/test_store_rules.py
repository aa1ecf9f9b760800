# -*- test-case-name: tests.test_store_rules -*-
"""
Tests for L{mission_control.store.rules}: the rules both stores apply, as pure functions.  The
stores' contract tests (tests/test_store.py) check that each store follows them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.store.interface import IDEMPOTENCY_WINDOW, Retention
from mission_control.store.rules import (
    check_retention,
    is_live,
    is_match,
    new_epoch,
    scan_window,
    state_key,
)


class StateKeyTests(SynchronousTestCase):
    """Which agent or session an event's payload is the latest state of."""

    def test_agent_status_keyed_by_agent(self):
        """An agent:status payload is the latest state of its agentId."""
        self.assertEqual(state_key("agent:status", {"agentId": "a1", "sessionId": "s1"}), "a1")

    def test_session_activity_keyed_by_session(self):
        """A session:activity payload is the latest state of its sessionId, not of its agent."""
        self.assertEqual(state_key("session:activity", {"agentId": "a1", "sessionId": "s1"}),
                         "s1")

    def test_other_type_refused(self):
        """A type that is not stored (presence) is refused, naming the type."""
        error = self.assertRaises(ValueError, state_key, "presence:join", {"agentId": "a1"})
        self.assertIn("presence:join", str(error))

    def test_missing_or_empty_key_refused(self):
        """A payload without its key field, with an empty one or a non-string one, is refused."""
        for payload in ({}, {"agentId": ""}, {"agentId": 7}, {"agentId": None}):
            self.assertRaises(ValueError, state_key, "agent:status", payload)


class IsMatchTests(SynchronousTestCase):
    """The filter of a read of one channel's events."""

    def test_type_must_match(self):
        """An event of another type never matches, whatever its payload."""
        self.assertFalse(is_match("agent:status", {"sessionId": "s1"}, "session:activity", None))

    def test_without_subject_every_event_of_the_type(self):
        """Without a subject, every event of the wanted type matches."""
        self.assertTrue(is_match("agent:status", {"agentId": "a1"}, "agent:status", None))

    def test_subject_is_the_state_key(self):
        """
        A subject is compared with the field that keys the type's latest state: an activity's
        session, not the agent it names.
        """
        payload = {"sessionId": "s1", "agentId": "a1"}
        self.assertTrue(is_match("session:activity", payload, "session:activity", "s1"))
        self.assertFalse(is_match("session:activity", payload, "session:activity", "a1"))
        self.assertTrue(is_match("agent:status", {"agentId": "a1"}, "agent:status", "a1"))
        self.assertFalse(is_match("agent:status", {"agentId": "a2"}, "agent:status", "a1"))


class ScanWindowTests(SynchronousTestCase):
    """The seqs one filtered read looks at: C{(start, end]}."""

    def test_scan_seqs_after_seq(self):
        """Within the history, the window is the scan seqs after seq."""
        self.assertEqual(scan_window(10, 5, first_seq=1, last_seq=100), (10, 15))

    def test_ends_at_last_seq(self):
        """The window never reaches past the newest event."""
        self.assertEqual(scan_window(98, 5, first_seq=1, last_seq=100), (98, 100))

    def test_starts_at_retained_history(self):
        """A seq older than the retained history starts the window before first_seq."""
        self.assertEqual(scan_window(0, 5, first_seq=50, last_seq=100), (49, 54))

    def test_empty_when_nothing_after(self):
        """At or past the newest event, or with a scan of 0 or less, the window is empty."""
        for seq, scan in ((100, 5), (120, 5), (10, 0), (10, -3)):
            start, end = scan_window(seq, scan, first_seq=1, last_seq=100)
            self.assertGreaterEqual(start, end, (seq, scan))


class RetentionTests(SynchronousTestCase):
    """Limits no store can honour are refused."""

    def test_defaults_accepted(self):
        """The default limits, and limits of 0, are accepted."""
        check_retention(Retention())
        check_retention(Retention(max_events=0, max_age=0, max_agents=0, max_sessions=0))

    def test_negative_refused(self):
        """A negative limit is refused, naming it."""
        for name in ("max_events", "max_age", "max_agents", "max_sessions"):
            error = self.assertRaises(ValueError, check_retention, Retention(**{name: -1}))
            self.assertIn(name, str(error))


class IdempotencyWindowTests(SynchronousTestCase):
    """An idempotency key counts for IDEMPOTENCY_WINDOW seconds."""

    def test_live_within_the_window(self):
        """A key counts from when it was recorded until just before the window ends."""
        self.assertTrue(is_live(1000.0, 1000.0))
        self.assertTrue(is_live(1000.0, 1000.0 + IDEMPOTENCY_WINDOW - 0.001))

    def test_expired_at_the_window(self):
        """At the end of the window, and after it, the key no longer counts."""
        self.assertFalse(is_live(1000.0, 1000.0 + IDEMPOTENCY_WINDOW))
        self.assertFalse(is_live(1000.0, 1000.0 + 2 * IDEMPOTENCY_WINDOW))


class NewEpochTests(SynchronousTestCase):
    """The name of a new history."""

    def test_sixteen_hex_digits(self):
        """An epoch is 16 lower-case hex digits."""
        epoch = new_epoch()
        self.assertEqual(len(epoch), 16)
        self.assertEqual(epoch.strip("0123456789abcdef"), "")

    def test_each_new(self):
        """Each call names another history."""
        self.assertEqual(len({new_epoch() for _ in range(100)}), 100)
