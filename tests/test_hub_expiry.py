"""
Tests for L{mission_control.hub.expiry}: many deadlines on one clock, with one timer.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from mission_control.hub.expiry import Deadlines


class DeadlinesTests(unittest.TestCase):
    """Deadlines run at their time, in the order set, on at most one pending clock call."""

    def setUp(self):
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.ran = []

    def at(self, when, name):
        return self.deadlines.at(when, lambda: self.ran.append((name, self.clock.seconds())))

    def test_each_at_its_time(self):
        """Each function runs once, when the clock reaches its time, not before."""
        self.at(5, "b")
        self.at(2, "a")
        self.clock.advance(1.9)
        self.assertEqual(self.ran, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ran, [("a", 2)])
        self.clock.advance(3)
        self.assertEqual(self.ran, [("a", 2), ("b", 5)])
        self.clock.advance(100)
        self.assertEqual(len(self.ran), 2)

    def test_one_clock_call(self):
        """However many deadlines are pending, the clock holds one call, for the earliest."""
        for i in range(100):
            self.at(100 - i, i)
        calls = self.clock.getDelayedCalls()
        self.assertEqual([c.getTime() for c in calls], [1])
        self.assertEqual(len(self.deadlines), 100)

    def test_same_time_in_order_set(self):
        """Deadlines due at the same time run in the order they were set."""
        for name in "cab":
            self.at(3, name)
        self.clock.advance(3)
        self.assertEqual([name for name, _ in self.ran], ["c", "a", "b"])

    def test_past_runs_next_turn(self):
        """A deadline already past runs on the clock's next turn, not during the call to at."""
        self.clock.advance(10)
        self.at(4, "late")
        self.assertEqual(self.ran, [])
        self.clock.advance(0)
        self.assertEqual(self.ran, [("late", 10)])

    def test_cancel(self):
        """A cancelled deadline never runs; cancelling twice, or after it ran, does nothing."""
        first = self.at(1, "first")
        second = self.at(2, "second")
        self.deadlines.cancel(second)
        self.deadlines.cancel(second)
        self.clock.advance(1)
        self.deadlines.cancel(first)
        self.clock.advance(5)
        self.assertEqual(self.ran, [("first", 1)])
        self.assertEqual(len(self.deadlines), 0)

    def test_cancel_the_last_leaves_no_clock_call(self):
        """Once every deadline is cancelled the clock holds no call."""
        entries = [self.at(t, t) for t in (3, 1, 2)]
        for entry in entries:
            self.deadlines.cancel(entry)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_earliest_moves_the_call(self):
        """Cancelling the earliest deadline moves the clock call to the next one."""
        early = self.at(1, "early")
        self.at(7, "late")
        self.deadlines.cancel(early)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [7])

    def test_earlier_deadline_moves_the_call(self):
        """A deadline earlier than all others brings the clock call forward."""
        self.at(10, "late")
        self.at(4, "early")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [4])
        self.clock.advance(4)
        self.assertEqual(self.ran, [("early", 4)])

    def test_cancelled_by_one_that_ran(self):
        """A deadline cancelled by another due at the same time, which ran first, does not run."""
        victim = []
        self.deadlines.at(1, lambda: self.deadlines.cancel(victim[0]))
        victim.append(self.at(1, "victim"))
        self.clock.advance(1)
        self.assertEqual(self.ran, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_set_while_running(self):
        """A function may set another deadline, which runs at its own time."""
        self.deadlines.at(1, lambda: self.at(3, "next"))
        self.clock.advance(1)
        self.assertEqual(self.ran, [])
        self.clock.advance(2)
        self.assertEqual(self.ran, [("next", 3)])

    def test_failure_logged_others_run(self):
        """A function that raises is logged, and the others due still run."""
        self.deadlines.at(1, lambda: 1 / 0)
        self.at(1, "after")
        self.clock.advance(1)
        self.assertEqual(self.ran, [("after", 1)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_cancelled_entries_compacted(self):
        """Cancelled deadlines do not pile up: past half of the heap it is rebuilt without them."""
        keep = [self.at(1000 + i, i) for i in range(100)]
        for i in range(1000):
            self.deadlines.cancel(self.at(2000 + i, i))
        self.assertLess(len(self.deadlines._heap), 400)
        self.assertEqual(len(self.deadlines), len(keep))
        self.clock.advance(1100)
        self.assertEqual(len(self.ran), 100)

    def test_stop(self):
        """stop cancels every deadline and the clock call."""
        self.at(1, "a")
        self.at(2, "b")
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.ran, [])
