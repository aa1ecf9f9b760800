"""
Tests for L{mission_control.hub.presence}: who is here (L{LocalPresence}), and agents' online and
offline from their connections (L{Liveness}), on a L{Clock} with plain callables for the hub.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mission_control.hub.presence import IPresenceManager, Liveness, LocalPresence
from mission_control.policy import Principal
from mission_control.store import MemoryStore

AGENT = Principal(sub="a1", role="agent", name="Agent One", expires_at=0)


class LocalPresenceTests(SynchronousTestCase):
    def test_join_get_leave(self):
        """
        A connected user is listed, by id, with name, role and since, and counted; they leave
        with their last connection.
        """
        presence = LocalPresence()
        verifyObject(IPresenceManager, presence)
        zed = Principal(sub="zed", role="viewer", name=None, expires_at=0)
        presence.connected(zed, 0.0)
        presence.connected(AGENT, 1.5)
        presence.connected(AGENT, 2.0)
        self.assertEqual(presence.get("a1"), {"id": "a1", "name": "Agent One", "role": "agent",
                                              "since": "1970-01-01T00:00:01.500Z"})
        self.assertEqual([entry["id"] for entry in presence.entries()], ["a1", "zed"])
        self.assertEqual((presence.count("a1"), presence.count("zed"), presence.count("x")),
                         (2, 1, 0))
        presence.disconnected(AGENT)
        self.assertEqual(presence.count("a1"), 1)
        presence.disconnected(AGENT)
        presence.disconnected(AGENT)  # one more than there were is harmless
        self.assertIsNone(presence.get("a1"))
        self.assertEqual(presence.count("a1"), 0)
        self.assertEqual([entry["id"] for entry in presence.entries()], ["zed"])

    def test_changes_told_on_first_and_last(self):
        """on_change hears a user's join with their first connection and leave with the last."""
        presence = LocalPresence()
        changes = []
        presence.on_change = lambda kind, info, count: changes.append((kind, info["id"], count))
        presence.connected(AGENT, 1.0)
        presence.connected(AGENT, 2.0)
        presence.disconnected(AGENT)
        self.assertEqual(changes, [("presence:join", "a1", 1)])
        presence.disconnected(AGENT)
        self.assertEqual(changes, [("presence:join", "a1", 1), ("presence:leave", "a1", 0)])


class LivenessTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.connected: set[str] = set()
        self.published: list[tuple[str, str, str]] = []
        self.running = True
        self.store = MemoryStore()
        self.liveness = Liveness(self.clock, self.store, self.connected.__contains__,
                                 self.publish, lambda: self.running, interval=1.0)

    def publish(self, event_type, payload):
        """Stores the event, as the hub does, and keeps what was said; a fired Deferred."""
        self.published.append((payload["agentId"], payload["status"], payload.get("message")))
        self.store.append(event_type, payload, payload["timestamp"], self.clock.seconds())
        return defer.succeed({})

    def test_online_then_offline(self):
        """The first connection publishes online; the last one closing publishes offline."""
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        self.assertEqual(self.published, [("a1", "online", "connected")])
        self.clock.advance(5)
        self.connected.discard("a1")
        self.liveness.changed(AGENT, timed_out=True)
        self.assertEqual(self.published[-1],
                         ("a1", "offline", "connection timed out (no answer to pings)"))
        self.clock.advance(1)
        self.assertEqual(self.liveness.agents, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flapping_is_coalesced(self):
        """Changes within one interval of the last publish are checked once, when it ends."""
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        for _ in range(5):
            self.connected.discard("a1")
            self.liveness.changed(AGENT)
            self.connected.add("a1")
            self.liveness.changed(AGENT)
        self.connected.discard("a1")
        self.liveness.changed(AGENT)
        self.assertEqual(len(self.published), 1)
        self.clock.advance(1)
        self.assertEqual(self.published, [("a1", "online", "connected"),
                                          ("a1", "offline", "connection closed")])

    def test_own_status_kept(self):
        """A connected agent whose status is not offline (it said busy) is not marked online."""
        self.publish("agent:status", {"agentId": "a1", "status": "busy",
                                      "timestamp": "2027-01-01T00:00:00.000Z"})
        self.published.clear()
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        self.assertEqual(self.published, [])

    def test_nothing_while_stopping(self):
        """While the hub stops nothing is published, and stop cancels what was pending."""
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        self.running = False
        self.connected.discard("a1")
        self.liveness.changed(AGENT)
        self.liveness.stop()
        self.clock.advance(10)
        self.assertEqual(self.published, [("a1", "online", "connected")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_publish_failure_logged(self):
        """A failing publish is logged, not raised to the connection that triggered it."""
        def fail(*args):
            raise RuntimeError("store is away")

        self.liveness.publish = fail
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failed_deferred_logged_once(self):
        """
        A publish whose Deferred fails at once is logged once and counts as no publish: the
        next change is checked at once, as after a publish that raised.
        """
        self.liveness.publish = lambda *args: defer.fail(RuntimeError("store is away"))
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.liveness.publish = self.publish
        self.liveness.changed(AGENT)
        self.assertEqual(self.published, [("a1", "online", "connected")])

    def test_later_failure_logged_once(self):
        """
        A publish whose Deferred fails later (a backbone that answers late) is logged once when
        it does, and never left as an unhandled error; meanwhile it counts as published.
        """
        pending = []

        def later(event_type, payload):
            pending.append(defer.Deferred())
            return pending[-1]

        self.liveness.publish = later
        self.connected.add("a1")
        self.liveness.changed(AGENT)
        self.connected.discard("a1")
        self.liveness.changed(AGENT)  # within the interval: waits for it
        self.assertEqual((len(pending), self.flushLoggedErrors(RuntimeError)), (1, []))
        pending[0].errback(RuntimeError("store is away"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(1)
        self.assertEqual(len(pending), 2)
        pending[1].callback({})
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_name_kept_and_absent_swept(self):
        """Offline keeps the name the agent published; the sweep marks offline an agent left
        online by its connection that did not come back."""
        self.connected.add("a1")
        self.liveness.changed(Principal(sub="a1", role="agent", name=None, expires_at=0))
        self.publish("agent:status", {"agentId": "a2", "status": "online", "name": "Two",
                                      "metadata": {"source": "connection"},
                                      "timestamp": "2027-01-01T00:00:00.000Z"})
        self.liveness.sweep_absent()
        self.assertEqual(self.published[-1],
                         ("a2", "offline", "did not reconnect after the hub restarted"))
        self.assertEqual(self.store.agent("a2")["name"], "Two")
        self.assertEqual(self.store.agent("a1")["status"], "online")  # connected: untouched
