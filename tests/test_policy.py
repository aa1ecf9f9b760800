"""
Tests for L{mission_control.policy}: who may publish, receive, list and close what.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control import policy
from mission_control.policy import Principal


def who(role, sub="u1", claim=None):
    return Principal(sub=sub, role=role, name=None, expires_at=0, channels=claim)


class PermissionTests(SynchronousTestCase):
    """Who may publish and list what."""

    def principal(self, role, sub="a1"):
        return Principal(sub=sub, role=role, name=None, expires_at=0)

    def test_agent_status(self):
        """Admin and operator publish for anyone; an agent only for itself; a viewer never."""
        self.assertTrue(policy.may_publish_agent_status(self.principal("admin"), "x"))
        self.assertTrue(policy.may_publish_agent_status(self.principal("operator"), "x"))
        self.assertTrue(policy.may_publish_agent_status(self.principal("agent"), "a1"))
        self.assertFalse(policy.may_publish_agent_status(self.principal("agent"), "a2"))
        self.assertFalse(policy.may_publish_agent_status(self.principal("viewer", "x"), "x"))

    def test_session_activity(self):
        """An agent publishes only activity that names it as the agent."""
        self.assertTrue(policy.may_publish_session_activity(self.principal("agent"), "a1"))
        self.assertFalse(policy.may_publish_session_activity(self.principal("agent"), "a2"))
        self.assertFalse(policy.may_publish_session_activity(self.principal("agent"), None))
        self.assertTrue(policy.may_publish_session_activity(self.principal("operator"), None))
        self.assertFalse(policy.may_publish_session_activity(self.principal("viewer"), "a1"))

    def test_sessions_by_role(self):
        """Admins, operators and agents publish session activity; viewers do not."""
        self.assertEqual(
            [policy.may_publish_sessions(self.principal(r)) for r in policy.ROLES],
            [True, True, False, True],
        )

    def test_join_session(self):
        """An agent joins a session with no owner or its own, never another agent's; the others
        join any."""
        agent = self.principal("agent", "a1")
        self.assertTrue(policy.may_join_session(agent, None))
        self.assertTrue(policy.may_join_session(agent, "a1"))
        self.assertFalse(policy.may_join_session(agent, "a2"))
        self.assertTrue(policy.may_join_session(self.principal("operator"), "a2"))
        self.assertTrue(policy.may_join_session(self.principal("admin"), "a2"))

    def test_list_connections(self):
        """Only admins and operators see connections."""
        self.assertEqual(
            [policy.may_list_connections(self.principal(r)) for r in policy.ROLES],
            [True, True, False, False],
        )

    def test_close_connections(self):
        """Only admins close connections; operators may only look at them."""
        self.assertEqual(
            [policy.may_close_connections(self.principal(r)) for r in policy.ROLES],
            [True, False, False, False],
        )

    def test_read_metrics(self):
        """Only admins read the metrics on the main listener."""
        self.assertEqual(
            [policy.may_read_metrics(self.principal(r)) for r in policy.ROLES],
            [True, False, False, False],
        )


class RoleTests(SynchronousTestCase):
    """What each role may receive by default."""

    def test_admin_and_operator(self):
        """Admins and operators may subscribe to everything."""
        for role in ("admin", "operator"):
            for name in ("agents", "agents:x", "sessions", "sessions:y", "presence"):
                self.assertTrue(policy.may_subscribe(who(role), name))

    def test_viewer(self):
        """Viewers: agents, sessions, presence and their sub-channels."""
        for name in ("agents", "agents:x", "sessions", "sessions:y", "presence"):
            self.assertTrue(policy.may_subscribe(who("viewer"), name))

    def test_agent(self):
        """An agent: its own agents:<sub>, and the sessions it publishes; nothing else."""
        agent = who("agent", "a1")
        self.assertTrue(policy.may_subscribe(agent, "agents:a1"))
        for name in ("agents", "agents:a2", "sessions", "presence", "sessions:s1"):
            self.assertFalse(policy.may_subscribe(agent, name), name)
        self.assertTrue(policy.may_subscribe(agent, "sessions:s1", lambda sid: sid == "s1"))
        self.assertFalse(policy.may_subscribe(agent, "sessions:s2", lambda sid: sid == "s1"))

    def test_defaults(self):
        """No choice: agents and sessions (as allowed); an agent gets its own channel."""
        self.assertEqual(policy.default_subscription(who("viewer")), ("agents", "sessions"))
        self.assertEqual(policy.default_subscription(who("agent", "a1")), ("agents:a1",))
        narrowed = who("viewer", claim=("agents:a1",))
        self.assertEqual(policy.default_subscription(narrowed), ())


class ClaimTests(SynchronousTestCase):
    """A token's channels claim narrows the role, never widens it."""

    def test_names_and_patterns(self):
        """Names match exactly; agents allows agents:<id>; agents:* matches ids, not agents."""
        by_name = who("operator", claim=("agents:a1", "presence"))
        self.assertTrue(policy.may_subscribe(by_name, "agents:a1"))
        self.assertFalse(policy.may_subscribe(by_name, "agents:a2"))
        self.assertFalse(policy.may_subscribe(by_name, "agents"))
        self.assertTrue(policy.may_subscribe(by_name, "presence"))
        family = who("viewer", claim=("agents",))
        self.assertTrue(policy.may_subscribe(family, "agents:a9"))
        self.assertFalse(policy.may_subscribe(family, "sessions"))
        pattern = who("viewer", claim=("sessions:*",))
        self.assertTrue(policy.may_subscribe(pattern, "sessions:s1"))
        self.assertFalse(policy.may_subscribe(pattern, "sessions"))

    def test_never_widens(self):
        """A claim cannot give an agent what its role does not allow."""
        agent = who("agent", "a1", claim=("agents:*", "agents", "presence"))
        self.assertFalse(policy.may_subscribe(agent, "agents:a2"))
        self.assertFalse(policy.may_subscribe(agent, "presence"))
        self.assertTrue(policy.may_subscribe(agent, "agents:a1"))
