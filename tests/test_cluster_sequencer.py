# -*- test-case-name: tests.test_cluster_sequencer -*-
"""L{Sequencer}: events from answers, notifications and repairs, handed on in seq order."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.cluster.sequencer import Sequencer


class SequencerTests(SynchronousTestCase):
    """Seqs in any order, once each; the items out in seq order; the gaps named."""

    def test_in_order_passes_through(self):
        """The next seq is handed on at once."""
        seq = Sequencer[str](10)
        self.assertEqual(seq.offer(11, "e11"), ["e11"])
        self.assertEqual(seq.offer(12, "e12"), ["e12"])
        self.assertEqual((seq.last_seq, seq.missing()), (12, None))

    def test_later_seq_waits_for_the_earlier(self):
        """A seq after a gap waits; the gap's seq releases both, in order."""
        seq = Sequencer[str](10)
        self.assertEqual(seq.offer(12, "e12"), [])
        self.assertEqual(seq.missing(), (11, 11))
        self.assertEqual(len(seq), 1)
        self.assertEqual(seq.offer(11, "e11"), ["e11", "e12"])
        self.assertEqual((seq.last_seq, len(seq), seq.missing()), (12, 0, None))

    def test_repeats_dropped(self):
        """A seq handed on or waiting already is not handed on again."""
        seq = Sequencer[str](10)
        seq.offer(11, "e11")
        seq.offer(13, "e13")
        self.assertEqual(seq.offer(11, "again"), [])
        self.assertEqual(seq.offer(13, "again"), [])
        self.assertEqual(seq.offer(12, "e12"), ["e12", "e13"])
        self.assertEqual(seq.offer(5, "old"), [])

    def test_missing_names_the_first_run(self):
        """With several gaps, missing() names the first whole run before the next waiting seq."""
        seq = Sequencer[str](10)
        seq.offer(14, "e14")
        seq.offer(17, "e17")
        self.assertEqual(seq.missing(), (11, 13))
        seq.offer(11, "e11")
        seq.offer(12, "e12")
        self.assertEqual(seq.offer(13, "e13"), ["e13", "e14"])
        self.assertEqual(seq.missing(), (15, 16))

    def test_noted_seq_is_missing_until_offered(self):
        """A seq known only by a note (a lost notification) is missing, up to the note."""
        seq = Sequencer[str](10)
        seq.note(13)
        self.assertEqual(seq.missing(), (11, 13))
        seq.note(12)  # an older note changes nothing
        self.assertEqual(seq.missing(), (11, 13))
        seq.offer(11, "e11")
        self.assertEqual(seq.missing(), (12, 13))
        seq.offer(12, "e12")
        seq.offer(13, "e13")
        self.assertEqual(seq.missing(), None)

    def test_restart_drops_what_waited(self):
        """After restart() the next seq follows the new start; what waited is dropped."""
        seq = Sequencer[str](10)
        seq.offer(12, "e12")
        seq.restart(0)
        self.assertEqual((seq.last_seq, len(seq), seq.missing()), (0, 0, None))
        self.assertEqual(seq.offer(1, "e1"), ["e1"])
