"""
Tests for L{mission_control.replay}: whether a position in the history can be served.
"""

from twisted.trial.unittest import SynchronousTestCase

from mission_control import replay


class HistoryGapTests(SynchronousTestCase):
    """The bounds of the retained history against a client's last seq."""

    def test_served(self):
        """From the seq before the oldest retained one up to the newest, nothing is missing."""
        for since in (4, 5, 9, 10):
            self.assertIsNone(replay.history_gap(since, first_seq=5, last_seq=10), since)

    def test_too_old(self):
        """A position before the seq preceding the oldest retained event missed events."""
        for since in (0, 3):
            self.assertEqual(replay.history_gap(since, 5, 10), replay.TOO_OLD)

    def test_ahead(self):
        """A position past the newest event is not from this history."""
        self.assertEqual(replay.history_gap(11, 5, 10), replay.AHEAD)

    def test_empty_history(self):
        """With nothing retained (first_seq = last_seq + 1), only last_seq itself is served."""
        self.assertIsNone(replay.history_gap(10, 11, 10))
        self.assertEqual(replay.history_gap(9, 11, 10), replay.TOO_OLD)
        self.assertEqual(replay.history_gap(11, 11, 10), replay.AHEAD)
        self.assertIsNone(replay.history_gap(0, 1, 0))


class ResumeProblemTests(SynchronousTestCase):
    """A resume: the epoch first, then the bounds."""

    def test_other_epoch_first(self):
        """Another epoch (or none) is the reason, whatever the seq."""
        self.assertEqual(replay.resume_problem(7, "old", "new", 5, 10), replay.EPOCH)
        self.assertEqual(replay.resume_problem(99, None, "new", 5, 10), replay.EPOCH)

    def test_same_epoch_follows_the_bounds(self):
        """In the hub's epoch, the answer is the history gap's."""
        self.assertIsNone(replay.resume_problem(7, "e", "e", 5, 10))
        self.assertEqual(replay.resume_problem(2, "e", "e", 5, 10), replay.TOO_OLD)
        self.assertEqual(replay.resume_problem(12, "e", "e", 5, 10), replay.AHEAD)
