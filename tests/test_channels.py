"""
Tests for L{mission_control.channels}: channel names, claims, and the channels of an event.
(Who may receive which channel: tests.test_policy.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control import channels


class NameTests(SynchronousTestCase):
    """Channel names and claim entries."""

    def test_valid_channels(self):
        """The five forms are channels; anything else is not."""
        for name in ("agents", "sessions", "presence", "agents:a1", "sessions:s.1-x"):
            self.assertTrue(channels.is_valid_channel(name), name)
        for name in ("", "agent", "agents:", "presence:x", "agents:a b", "agents:*", 5, None,
                     "sessions:" + "x" * 129):
            self.assertFalse(channels.is_valid_channel(name), name)

    def test_claim(self):
        """A claim is a list of names and prefix:* patterns; anything else is refused."""
        self.assertIsNone(channels.parse_claim(None))
        self.assertEqual(channels.parse_claim(["agents:*", "presence"]), ("agents:*", "presence"))
        for bad in ("agents", [1], ["nope"], ["presence:*"], ["x"] * 65, {"a": 1}):
            self.assertRaises(ValueError, channels.parse_claim, bad)

    def test_stored_events_of(self):
        """A channel of stored events names their type and, for agents:<id> or sessions:<id>,
        the id; presence carries none."""
        self.assertEqual(channels.stored_events_of("agents"), ("agent:status", None))
        self.assertEqual(channels.stored_events_of("agents:a1"), ("agent:status", "a1"))
        self.assertEqual(channels.stored_events_of("sessions"), ("session:activity", None))
        self.assertEqual(channels.stored_events_of("sessions:s:1"), ("session:activity", "s:1"))
        self.assertIsNone(channels.stored_events_of("presence"))

    def test_event_channels(self):
        """An event goes to its family channel and its own channel."""
        self.assertEqual(channels.event_channels("agent:status", {"agentId": "a1"}),
                         ("agents", "agents:a1"))
        self.assertEqual(channels.event_channels("session:activity", {"sessionId": "s1"}),
                         ("sessions", "sessions:s1"))
        self.assertEqual(channels.event_channels("presence:join", {}), ("presence",))
