"""
Tests for L{mission_control.hub.publishing}: what may be published, by whom, as a pure function,
and through L{Hub.publish_for}, which stores nothing it refuses; and a batch, checked whole by
L{checked_batch} before L{Hub.publish_many} stores any of it; and the session claims of
publishes checked and not stored yet (L{claims_of}, L{PendingOwners}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mission_control.auth import Refusal
from mission_control.events import ValidationError
from mission_control.hub.publishing import (
    MAX_BATCH,
    BatchOwners,
    PendingOwners,
    checked_batch,
    checked_payload,
    claims_of,
)
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
        self.publish_for(agent, "agent:status", {"status": "busy"}, "a1")
        error = self.assertRaises(Refusal, self.hub.publish_for, agent, "agent:status",
                                  {"status": "busy"}, "a2")
        self.assertEqual(error.status, 403)

    def test_agent_activity_attributed(self):
        """An agent's activity without agentId is attributed to it; naming another is refused."""
        agent = self.principal("a1", "agent")
        frame = self.publish_for(agent, "session:activity", {"activity": "started"}, "s1")
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


def status_item(agent, state="busy", **extra):
    return {"type": "agent:status", "payload": {"agentId": agent, "status": state, **extra}}


def activity_item(session, word="started", **extra):
    return {"type": "session:activity", "payload": {"sessionId": session, "activity": word,
                                                    **extra}}


class CheckedBatchTests(SynchronousTestCase):
    """The batch rule: each event checked as a publish of its own, its index named on failure."""

    owners = {"s-of-a2": "a2"}

    def check(self, principal, items):
        return checked_batch(principal, items, 1_800_000_000.0, self.owners.get)

    def test_each_event_checked_in_order(self):
        """A valid batch comes back as (type, payload) pairs, each completed as a single one."""
        checked = self.check(who("a1", "agent"), [status_item("a1"), activity_item("s1")])
        self.assertEqual([kind for kind, _ in checked], ["agent:status", "session:activity"])
        self.assertEqual(checked[1][1]["agentId"], "a1")
        self.assertEqual(checked[0][1]["timestamp"], "2027-01-15T08:00:00.000Z")

    def test_first_bad_event_named_by_index(self):
        """
        The first event that breaks a rule refuses the batch with a message naming its index,
        and the code the single publish would have.
        """
        items = [status_item("a1"), status_item("a1"), status_item("a1", "sleeping"),
                 status_item("a1", "also-bad")]
        error = self.assertRaises(ValidationError, self.check, who("op", "operator"), items)
        self.assertEqual((error.code, error.message),
                         ("bad_request",
                          "events[2]: status must be one of online, busy, idle, offline, error"))
        error = self.assertRaises(ValidationError, self.check, who("op", "operator"),
                                  [status_item("a1"), {"type": "agent:gone", "payload": {}}])
        self.assertEqual((error.code, error.message), ("unknown_type", "events[1]: unknown event type"))

    def test_role_refusal_named_by_index(self):
        """An event the role may not publish refuses the batch: 403 naming its index."""
        items = [status_item("a1"), activity_item("s-of-a2")]
        error = self.assertRaises(Refusal, self.check, who("a1", "agent"), items)
        self.assertEqual((error.status, error.reason),
                         (403, "events[1]: session belongs to another agent"))
        error = self.assertRaises(Refusal, self.check, who("a1", "agent"), [status_item("a2")])
        self.assertEqual(error.reason, "events[0]: not allowed to publish for this agent")

    def test_item_shape(self):
        """Each event is an object with exactly type and payload; the batch a list of 1-1000."""
        for items, message in (
            ([["agent:status", {}]], "events[0]: an event must be a JSON object with type and payload"),
            ([{"type": "agent:status"}], "events[0]: payload is required"),
            ([{"payload": {}}], "events[0]: type is required"),
            ([dict(status_item("a1"), seq=3)], "events[0]: unknown field: seq"),
            ([{"type": 7, "payload": {}}], "events[0]: unknown event type"),
            ([{"type": "agent:status", "payload": []}], "events[0]: payload must be a JSON object"),
            ([], f"events must be a list of 1 to {MAX_BATCH} events"),
            ({"0": status_item("a1")}, f"events must be a list of 1 to {MAX_BATCH} events"),
            ([status_item("a1")] * (MAX_BATCH + 1), f"events must be a list of 1 to {MAX_BATCH} events"),
        ):
            error = self.assertRaises(ValidationError, self.check, who("op", "admin"), items)
            self.assertEqual(error.message, message)
        self.assertEqual(len(self.check(who("op", "admin"), [status_item("a1")] * MAX_BATCH)),
                         MAX_BATCH)


class BatchOwnersTests(SynchronousTestCase):
    """The owners a batch's checks see: the store's, then the batch's own earlier claims."""

    def test_first_agent_named_claims_an_unowned_session(self):
        """
        An activity naming an agent in a session without an owner claims it for the rest of the
        batch; a later one naming another agent does not change that, nor one naming none.
        """
        owners = BatchOwners({"s-old": "a9"}.get)
        owners.stored("session:activity", {"sessionId": "s1", "activity": "x"})
        self.assertIsNone(owners("s1"))
        owners.stored("session:activity", {"sessionId": "s1", "activity": "x", "agentId": "a1"})
        owners.stored("session:activity", {"sessionId": "s1", "activity": "x", "agentId": "a2"})
        owners.stored("session:activity", {"sessionId": "s-old", "activity": "x", "agentId": "a1"})
        owners.stored("agent:status", {"agentId": "a3", "status": "busy"})
        self.assertEqual((owners("s1"), owners("s-old"), owners("a3")), ("a1", "a9", None))

    def test_claim_within_a_batch_refuses_a_later_event(self):
        """
        The check of a later event sees an owner claimed by an earlier one of the same batch:
        an operator's batch that gives a new session to a1 and then has a2 (as itself) join it is
        accepted, as two single publishes are; and the same claim, seen by an agent's check,
        refuses that agent, as the store would once the first event is in.
        """
        owners = BatchOwners({}.get)
        first = checked_payload(who("op", "operator"), "session:activity",
                                {"activity": "x", "agentId": "a1"}, "s-new", 0.0, owners)
        owners.stored("session:activity", first)
        error = self.assertRaises(Refusal, checked_payload, who("a2", "agent"), "session:activity",
                                  {"activity": "x"}, "s-new", 0.0, owners)
        self.assertEqual(error.reason, "session belongs to another agent")


class PendingOwnersTests(SynchronousTestCase):
    """The owners checks see while appends are in flight: the store's, then the held claims."""

    def test_claims_of(self):
        """
        What storing some events claims: the unowned sessions their activities name an agent
        in, each for the first such agent; owned sessions and statuses claim nothing.
        """
        checked = [("session:activity", {"sessionId": "s1", "activity": "x"}),
                   ("session:activity", {"sessionId": "s1", "activity": "x", "agentId": "a1"}),
                   ("session:activity", {"sessionId": "s1", "activity": "x", "agentId": "a2"}),
                   ("session:activity", {"sessionId": "s-old", "activity": "x", "agentId": "a1"}),
                   ("agent:status", {"agentId": "a3", "status": "busy"})]
        self.assertEqual(dict(claims_of(checked, {"s-old": "a9"}.get)), {"s1": "a1"})
        self.assertEqual(dict(claims_of(checked[4:], {}.get)), {})

    def test_held_until_released(self):
        """
        A held claim is seen for a session the store has no owner of, until it is released
        (twice is harmless); the store's own owner always comes first.
        """
        store = {"s-old": "a9"}
        owners = PendingOwners(store.get)
        release = owners.hold({"s1": "a1", "s-old": "a1"})
        self.assertEqual((owners("s1"), owners("s-old"), owners("s2"), len(owners)),
                         ("a1", "a9", None, 1))
        release()
        release()
        self.assertEqual((owners("s1"), len(owners)), (None, 0))

    def test_oldest_claim_wins(self):
        """
        Two appends in flight that claim the same session: the older one's agent is seen, as
        the store will record it, also after a later one is released; nothing is held for an
        append that claims nothing.
        """
        owners = PendingOwners({}.get)
        first = owners.hold({"s1": "a1"})
        second = owners.hold({"s1": "a2"})
        owners.hold({})()
        self.assertEqual((owners("s1"), len(owners)), ("a1", 2))
        second()
        self.assertEqual(owners("s1"), "a1")
        first()
        self.assertIsNone(owners("s1"))


class PublishManyTests(HubTestCase):
    """Hub.publish_many: all checked, then stored as one append and fanned out in order."""

    def test_stored_and_fanned_out_in_order(self):
        """
        Every event of an accepted batch is stored with consecutive seqs, the envelopes come
        back in that order, and a subscribed client receives each, in the same order.
        """
        conn = self.connect("bob", "viewer")
        self.publish()
        envelopes = self.publish_many(self.principal(), [
            status_item("a1"), activity_item("s1", agentId="a1"), status_item("a2", "idle")])
        self.assertEqual([e["seq"] for e in envelopes], [2, 3, 4])
        self.assertEqual(len({e["ts"] for e in envelopes}), 1)
        received = [f for f in conn.delivered if f["type"] in ("agent:status", "session:activity")]
        self.assertEqual(received[1:], envelopes)
        self.assertEqual(self.hub.store.events_after(1, 10)[2].envelope(), envelopes[2])

    def test_one_bad_event_stores_none(self):
        """A batch with one bad event stores nothing and sends nothing, whatever its position."""
        conn = self.connect("bob", "viewer")
        before = len(conn.delivered)
        items = [status_item("a1"), activity_item("s1"), status_item("a1", "sleeping")]
        error = self.assertRaises(ValidationError, self.hub.publish_many, self.principal(), items)
        self.assertTrue(error.message.startswith("events[2]: "))
        self.assertEqual((self.hub.store.last_seq, len(conn.delivered)), (0, before))

    def test_agent_claims_a_new_session_within_its_batch(self):
        """
        An agent's batch that starts a new session and goes on in it is accepted (the session
        is its own from the first event on), and the session is then the agent's: another
        agent's batch that touches it is refused whole, naming the event.
        """
        a1 = self.principal("a1", "agent")
        self.publish_many(a1, [activity_item("s-new"), activity_item("s-new", "tool_call"),
                               status_item("a1")])
        self.assertEqual(self.hub.store.session_owner("s-new"), "a1")
        a2 = self.principal("a2", "agent")
        error = self.assertRaises(Refusal, self.hub.publish_many, a2,
                                  [activity_item("s-a2"), activity_item("s-new")])
        self.assertEqual((error.status, error.reason),
                         (403, "events[1]: session belongs to another agent"))
        self.assertEqual((self.hub.store.last_seq, self.hub.store.session_owner("s-a2")), (3, None))

    def test_idempotent_repeat_sends_nothing(self):
        """A repeat of a batch with its key returns the first envelopes and delivers nothing."""
        conn = self.connect("bob", "viewer")
        items = [status_item("a1"), status_item("a2")]
        first = self.publish_many(self.principal(), items, "k", "f")
        count = len(conn.delivered)
        self.clock.advance(5)
        self.assertEqual(self.publish_many(self.principal(), items, "k", "f"), first)
        self.assertEqual((len(conn.delivered), self.hub.store.last_seq), (count, 2))
