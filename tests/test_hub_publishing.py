"""
Tests for L{mission_control.hub.publishing}: what may be published, by whom, as a pure function,
and through L{Hub.publish_for}, which stores nothing it refuses.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.auth import Refusal
from mission_control.events import ValidationError
from mission_control.hub.publishing import checked_payload
from mission_control.policy import Principal
from tests.hubfakes import HubTestCase


def who(sub, role):
    return Principal(sub=sub, role=role, name=None, expires_at=0)


class CheckedPayloadTests(SynchronousTestCase):
    """The pure rule, with the session owners given as a mapping."""

    owners = {"s-of-a2": "a2"}

    def check(self, principal, event_type, body, subject=None):
        return checked_payload(principal, event_type, body, subject, 1_800_000_000.0,
                               self.owners.get)

    def test_status_payload_completed(self):
        """The agent id comes from the URL's subject, and the timestamp from the clock."""
        payload = self.check(who("op", "operator"), "agent:status", {"status": "busy"}, "a1")
        self.assertEqual((payload["agentId"], payload["status"]), ("a1", "busy"))
        self.assertEqual(payload["timestamp"], "2027-01-15T08:00:00.000Z")

    def test_agent_cannot_join_another_agents_session(self):
        """An agent may not add activity to a session another agent owns; an operator may."""
        error = self.assertRaises(Refusal, self.check, who("a1", "agent"), "session:activity",
                                  {"activity": "x"}, "s-of-a2")
        self.assertEqual((error.status, error.reason), (403, "session belongs to another agent"))
        payload = self.check(who("op", "operator"), "session:activity",
                             {"activity": "x", "agentId": "a2"}, "s-of-a2")
        self.assertEqual(payload["sessionId"], "s-of-a2")

    def test_unknown_type(self):
        error = self.assertRaises(ValidationError, self.check, who("op", "admin"), "agent:gone", {})
        self.assertEqual(error.code, "unknown_type")


class PublishPermissionTests(HubTestCase):
    """Who may publish what, through publish_for."""

    def test_viewer_refused(self):
        """A viewer may not publish anything."""
        viewer = self.principal("v", "viewer")
        for event_type, body, subject in (("agent:status", {"status": "idle"}, "a1"),
                                          ("session:activity", {"activity": "x"}, "s1")):
            error = self.assertRaises(Refusal, self.hub.publish_for, viewer, event_type, body, subject)
            self.assertEqual(error.status, 403)
        self.assertEqual(self.hub.store.last_seq, 0)

    def test_agent_only_for_itself(self):
        """An agent publishes its own status, not another's."""
        agent = self.principal("a1", "agent")
        self.hub.publish_for(agent, "agent:status", {"status": "busy"}, "a1")
        error = self.assertRaises(Refusal, self.hub.publish_for, agent, "agent:status",
                                  {"status": "busy"}, "a2")
        self.assertEqual(error.status, 403)

    def test_agent_activity_attributed(self):
        """An agent's activity without agentId is attributed to it; naming another is refused."""
        agent = self.principal("a1", "agent")
        frame = self.hub.publish_for(agent, "session:activity", {"activity": "started"}, "s1")
        self.assertEqual(frame["payload"]["agentId"], "a1")
        error = self.assertRaises(Refusal, self.hub.publish_for, agent, "session:activity",
                                  {"activity": "started", "agentId": "a2"}, "s1")
        self.assertEqual(error.status, 403)

    def test_invalid_payload(self):
        """Bad payloads raise ValidationError and store nothing."""
        self.assertRaises(ValidationError, self.hub.publish_for, self.principal(), "agent:status",
                          {"status": "sleeping"}, "a1")
        self.assertRaises(ValidationError, self.hub.publish_for, self.principal(), "other", {}, None)
        self.assertEqual(self.hub.store.last_seq, 0)
