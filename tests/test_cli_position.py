# -*- test-case-name: tests.test_cli_position -*-
"""
Tests for L{mission_control.cli.position}: where C{watch} resumes from.  No reactor and no
socket: frames in, a position out.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control import cli
from mission_control.cli import frames
from tests.cli_helpers import (
    SNAPSHOT,
    WELCOME,
    event,
    heartbeat,
    history_lost,
    resumed,
    snapshot,
    welcome,
)


class StreamPositionTests(SynchronousTestCase):
    """L{cli.StreamPosition}: where the next connection resumes from."""

    def observed(self, *frames):
        position = cli.StreamPosition()
        position.connection_started()
        for frame in frames:
            position.observe(frame)
        return position

    def assertPosition(self, position, seq, epoch):
        self.assertEqual((position.seq, position.epoch), (seq, epoch))

    def test_frames_that_move_it(self):
        """Events, the snapshot, heartbeats and resumed frames move it, in the welcome's epoch."""
        self.assertPosition(self.observed(welcome("e"), snapshot(40)), 40, "e")
        self.assertPosition(self.observed(welcome("e"), snapshot(40), event(41)), 41, "e")
        self.assertPosition(self.observed(welcome("e"), snapshot(40), heartbeat(40)), 40, "e")
        self.assertPosition(self.observed(welcome("e"), event(41), resumed(41, 41)), 41, "e")
        self.assertPosition(self.observed(welcome("e"), resumed(41, 40)), 40, "e")
        self.assertPosition(self.observed(welcome("f"), history_lost("epoch", 3)), 3, "f")

    def test_welcome_alone_moves_nothing(self):
        """A welcome moves neither seq nor epoch: its lastSeq is the hub's, not yet replayed, and
        its epoch may be one the next frame declares lost."""
        position = self.observed(welcome("e"), snapshot(40))
        position.connection_started()
        position.observe(welcome("f", 90))
        self.assertPosition(position, 40, "e")
        self.assertFalse(position.current)

    def test_needs_an_epoch(self):
        """Without a usable epoch (an older hub, or one the hub would refuse) nothing moves, so
        the watcher never asks to resume with a seq that means nothing."""
        self.assertPosition(self.observed(WELCOME | {"payload": {}}, SNAPSHOT, event(41)),
                            None, None)
        self.assertPosition(self.observed(welcome("bad epoch"), snapshot(3)), None, None)
        self.assertPosition(self.observed(welcome("e"), event(True), event(-1), event("7")),
                            None, None)


class FrameValueTests(SynchronousTestCase):
    """L{mission_control.cli.frames}: which values from a hub are taken for a seq or an epoch."""

    def test_seq(self):
        """A seq is a whole number from 0, not a bool, a float, a string or something huge."""
        for value in [0, 1, 10 ** 18 - 1]:
            self.assertTrue(frames.is_seq(value), value)
        for value in [-1, True, 1.0, "1", None, 10 ** 18]:
            self.assertFalse(frames.is_seq(value), value)

    def test_epoch(self):
        """An epoch is what the hub takes back in a query: 1-64 letters, digits, _ and -."""
        for value in ["e", "a-b_C9", "x" * 64]:
            self.assertTrue(frames.is_epoch(value), value)
        for value in ["", "x" * 65, "bad epoch", "e\n", "é", 7, None]:
            self.assertFalse(frames.is_epoch(value), value)

    def test_payload(self):
        """A payload that is not an object reads as an empty one."""
        self.assertEqual(frames.payload({"payload": {"a": 1}}), {"a": 1})
        for frame in [{}, {"payload": [1]}, {"payload": "x"}, {"payload": None}]:
            self.assertEqual(frames.payload(frame), {}, frame)
