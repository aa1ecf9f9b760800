# -*- test-case-name: tests.test_demo -*-
"""
Tests for L{mission_control.demo}: the simulated fleet behind C{--demo}.

The fleet runs on a L{task.Clock} and a seeded random generator, against a real hub and a real
SQLite store in a temporary directory, so that a restart is a second fleet on the same database.
"""

from __future__ import annotations

import os
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mission_control import events
from mission_control.demo import DemoFleet
from mission_control.hub import Hub
from mission_control.store import Retention, SQLiteStore


class DemoFleetTests(SynchronousTestCase):
    """What the fleet publishes, run after run."""

    def run_fleet(self, path: str, ticks: int = 200, seed: int = 7) -> list:
        """Run a fleet for C{ticks} steps on the store at C{path}; return the events it stored."""
        store = SQLiteStore(path, Retention())
        before = store.last_seq
        clock = Clock()
        hub = Hub(clock, store)
        fleet = DemoFleet(hub, clock, rng=random.Random(seed))
        fleet.startService()
        for _ in range(ticks):
            clock.advance(fleet.interval)
        fleet.stopService()
        stored = store.events_after(before, 100_000)
        store.close()
        return stored

    def session_ids(self, stored) -> set:
        return {e.payload["sessionId"] for e in stored if e.type == events.SESSION_ACTIVITY}

    def test_sessions_of_a_run_are_its_own(self):
        """
        A fleet started again on the same history (a restart of the hub with its database) names
        its sessions afresh: no session id of the first run comes back, even with the same
        random choices, so a session's history never mixes two runs.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "mc.sqlite3")
        os.makedirs(os.path.dirname(path))
        first = self.session_ids(self.run_fleet(path))
        second = self.session_ids(self.run_fleet(path))
        self.assertGreater(len(first), 5)
        self.assertGreater(len(second), 5)
        self.assertEqual(first & second, set())

    def test_every_session_starts_and_belongs_to_one_agent(self):
        """Within a run each session begins with "started" and all its activity names one agent."""
        path = os.path.join(os.path.abspath(self.mktemp()), "mc.sqlite3")
        os.makedirs(os.path.dirname(path))
        by_session: dict = {}
        for event in self.run_fleet(path):
            if event.type == events.SESSION_ACTIVITY:
                by_session.setdefault(event.payload["sessionId"], []).append(event.payload)
        for session_id, activity in by_session.items():
            self.assertEqual(activity[0]["activity"], "started", session_id)
            self.assertEqual({a["agentId"] for a in activity}, {activity[0]["agentId"]})
