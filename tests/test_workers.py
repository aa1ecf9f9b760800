"""
Tests for L{mission_control.workers}: the rules of C{--workers} (with C{--store} and C{--listen})
and the assignment a supervisor hands each worker.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.workers import (
    WORKER_VARIABLE,
    WorkerAssignment,
    assignment_for,
    assignment_from,
    is_shared_store,
    refusal,
)

REDIS = "redis://127.0.0.1:6379/0"
NEEDS_SHARED = "--workers above 1 needs a shared store (--store redis://...)"


class RuleTests(SynchronousTestCase):
    """L{refusal} and L{is_shared_store}, the pure rules."""

    def test_shared_stores(self):
        """Redis, over TCP or TLS, is shared; SQLite and memory are not; the scheme's case
        does not matter."""
        for store in ("redis://r:6379/0", "rediss://:pw@r:6380/1?prefix=a", "REDIS://r"):
            self.assertTrue(is_shared_store(store), store)
        for store in ("sqlite", "memory", "redis", "http://redis:6379", ""):
            self.assertFalse(is_shared_store(store), store)

    def test_one_worker_goes_with_anything(self):
        """One worker is one hub: any store, any listener."""
        self.assertIsNone(refusal(1, "sqlite", ["unix:/run/hub.sock"]))

    def test_several_workers_need_a_shared_store(self):
        """Above 1 with SQLite or memory: one line that names the way out."""
        self.assertEqual(refusal(2, "sqlite", ["tcp:8080"]), f"{NEEDS_SHARED}, not --store sqlite")
        self.assertEqual(refusal(4, "memory", ["tcp:8080"]), f"{NEEDS_SHARED}, not --store memory")
        self.assertIsNone(refusal(2, REDIS, ["tcp:8080", "tcp6:8081", "ssl:8443:privateKey=k"]))

    def test_several_workers_share_tcp_only(self):
        """A Unix socket cannot be shared by workers: refused, naming the listener."""
        self.assertEqual(
            refusal(2, REDIS, ["tcp:8080", "unix:/run/hub.sock"]),
            "--workers above 1 shares tcp:, tcp6: and ssl: listeners only, "
            "not --listen unix:/run/hub.sock")


class AssignmentTests(SynchronousTestCase):
    """What the supervisor tells a worker, through L{WORKER_VARIABLE}."""

    def test_round_trip(self):
        """An assignment reads back as it was written: descriptors 3, 4, ... per listener."""
        assignment = assignment_for(3, 2)
        self.assertEqual(assignment, WorkerAssignment(3, (3, 4)))
        self.assertEqual(assignment_from({WORKER_VARIABLE: assignment.encode()}, 2), assignment)

    def test_absent_or_empty(self):
        """Without the variable (or with it empty) a process is not a worker."""
        self.assertIsNone(assignment_from({}, 1))
        self.assertIsNone(assignment_from({WORKER_VARIABLE: ""}, 1))

    def test_malformed(self):
        """A value no supervisor writes is refused, saying not to set it by hand."""
        for value in ("1", "{}", '{"number": 0, "fds": [3]}', '{"number": 1, "fds": [1]}',
                      '{"number": "1", "fds": [3]}', '{"number": 1, "fds": "3"}', "[", "null"):
            exc = self.assertRaises(ValueError, assignment_from, {WORKER_VARIABLE: value}, 1)
            self.assertIn("is set only by the supervisor of --workers", str(exc))

    def test_one_socket_per_listener(self):
        """A worker must have inherited exactly one socket per --listen endpoint."""
        exc = self.assertRaises(ValueError, assignment_from,
                                {WORKER_VARIABLE: assignment_for(1, 1).encode()}, 2)
        self.assertEqual(str(exc), f"{WORKER_VARIABLE} names 1 inherited listeners for "
                                   f"2 --listen endpoints")

