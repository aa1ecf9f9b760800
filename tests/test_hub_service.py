"""
Tests for L{mission_control.hub.service}: the hub's periodic work as services, on a L{Clock},
with plain callables for the hub.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mission_control.hub.service import HubService


class HubServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.calls: list[tuple[str, float]] = []

    def service(self, heartbeat_interval=30.0, trim_interval=2.0, grace=60.0):
        def record(name):
            return lambda: self.calls.append((name, self.clock.seconds()))

        return HubService(self.clock, record("heartbeat"), heartbeat_interval, record("trim"),
                          trim_interval, record("sweep"), grace)

    def test_schedule(self):
        """Heartbeat and trim run at start and then every interval; the sweep once, after the
        grace; stopping leaves nothing scheduled."""
        service = self.service()
        service.startService()
        self.assertEqual(sorted(self.calls), [("heartbeat", 0), ("trim", 0)])
        self.clock.pump([2.0] * 30)
        self.assertEqual([t for name, t in self.calls if name == "heartbeat"], [0, 30, 60])
        self.assertEqual(len([1 for name, _ in self.calls if name == "trim"]), 31)
        self.assertEqual([t for name, t in self.calls if name == "sweep"], [60])
        self.clock.advance(600)
        self.assertEqual(len([1 for name, _ in self.calls if name == "sweep"]), 1)
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_heartbeat(self):
        """An interval of 0 runs no heartbeat at all."""
        service = self.service(heartbeat_interval=0)
        service.startService()
        self.clock.advance(120)
        self.assertNotIn("heartbeat", {name for name, _ in self.calls})
        service.stopService()

    def test_stop_before_the_sweep(self):
        """Stopped before the grace is over, the sweep never runs."""
        service = self.service()
        service.startService()
        service.stopService()
        self.clock.advance(120)
        self.assertNotIn("sweep", {name for name, _ in self.calls})
        self.assertEqual(self.clock.getDelayedCalls(), [])
