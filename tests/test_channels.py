"""
Tests for L{mission_control.channels}: names, claims, who may subscribe to what.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control import channels
from mission_control.auth import Principal


def who(role, sub="u1", claim=None):
    return Principal(sub=sub, role=role, name=None, expires_at=0, channels=claim)


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


class RoleTests(SynchronousTestCase):
    """What each role may receive by default."""

    def test_admin_and_operator(self):
        """Admins and operators may subscribe to everything."""
        for role in ("admin", "operator"):
            for name in ("agents", "agents:x", "sessions", "sessions:y", "presence"):
                self.assertTrue(channels.may_subscribe(who(role), name))

    def test_viewer(self):
        """Viewers: agents, sessions, presence and their sub-channels."""
        for name in ("agents", "agents:x", "sessions", "sessions:y", "presence"):
            self.assertTrue(channels.may_subscribe(who("viewer"), name))

    def test_agent(self):
        """An agent: its own agents:<sub>, and the sessions it publishes; nothing else."""
        agent = who("agent", "a1")
        self.assertTrue(channels.may_subscribe(agent, "agents:a1"))
        for name in ("agents", "agents:a2", "sessions", "presence", "sessions:s1"):
            self.assertFalse(channels.may_subscribe(agent, name), name)
        self.assertTrue(channels.may_subscribe(agent, "sessions:s1", lambda sid: sid == "s1"))
        self.assertFalse(channels.may_subscribe(agent, "sessions:s2", lambda sid: sid == "s1"))

    def test_defaults(self):
        """No choice: agents and sessions (as allowed); an agent gets its own channel."""
        self.assertEqual(channels.default_subscription(who("viewer")), ("agents", "sessions"))
        self.assertEqual(channels.default_subscription(who("agent", "a1")), ("agents:a1",))
        narrowed = who("viewer", claim=("agents:a1",))
        self.assertEqual(channels.default_subscription(narrowed), ())


class ClaimTests(SynchronousTestCase):
    """A token's channels claim narrows the role, never widens it."""

    def test_names_and_patterns(self):
        """Names match exactly; agents allows agents:<id>; agents:* matches ids, not agents."""
        by_name = who("operator", claim=("agents:a1", "presence"))
        self.assertTrue(channels.may_subscribe(by_name, "agents:a1"))
        self.assertFalse(channels.may_subscribe(by_name, "agents:a2"))
        self.assertFalse(channels.may_subscribe(by_name, "agents"))
        self.assertTrue(channels.may_subscribe(by_name, "presence"))
        family = who("viewer", claim=("agents",))
        self.assertTrue(channels.may_subscribe(family, "agents:a9"))
        self.assertFalse(channels.may_subscribe(family, "sessions"))
        pattern = who("viewer", claim=("sessions:*",))
        self.assertTrue(channels.may_subscribe(pattern, "sessions:s1"))
        self.assertFalse(channels.may_subscribe(pattern, "sessions"))

    def test_never_widens(self):
        """A claim cannot give an agent what its role does not allow."""
        agent = who("agent", "a1", claim=("agents:*", "agents", "presence"))
        self.assertFalse(channels.may_subscribe(agent, "agents:a2"))
        self.assertFalse(channels.may_subscribe(agent, "presence"))
        self.assertTrue(channels.may_subscribe(agent, "agents:a1"))
