# -*- test-case-name: tests.test_demo -*-
"""
A simulated fleet, for trying the hub out: a dozen agents change status and run sessions that
start, call tools, send messages and complete (or fail), a few events a second.

It publishes through the same validators and L{Hub.publish} as the HTTP API, so what a newcomer
sees is exactly what real agents would produce.  A publish the store fails is logged and
skipped: the fleet goes on.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mission_control import events
from mission_control.hub import Hub

AGENT_NAMES = (
    "Atlas", "Borealis", "Cirrus", "Delta", "Ember", "Fjord",
    "Gale", "Helix", "Iris", "Juno", "Kestrel", "Lumen",
)
TOOLS = ("web.search", "code.run", "files.read", "files.write", "db.query", "http.fetch")
MESSAGES = {
    "busy": "working on a task",
    "idle": "waiting for work",
    "error": "tool call failed: upstream timeout",
    "offline": "shut down for maintenance",
    "online": "ready",
}


class DemoFleet(Service):
    """
    Publishes a plausible stream of C{agent:status} and C{session:activity} events every
    C{interval} seconds of C{clock}, until stopped.

    Session ids carry C{run}, a short id of this fleet (random by default): the history outlives
    a restart of the hub, and a new run's C{sess-...-00001} must not continue an old one's.
    """

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        interval: float = 0.5,
        agents: int = 12,
        rng: random.Random | None = None,
        run: str | None = None,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.interval = interval
        self.rng = rng or random.Random()
        self.run = run if run is not None else uuid.uuid4().hex[:6]
        self.agents = [
            (f"agent-{name.lower()}", name) for name in AGENT_NAMES[:agents]
        ] + [(f"agent-{i}", f"Agent {i}") for i in range(len(AGENT_NAMES), agents)]
        self._sessions: dict[str, tuple[str, int]] = {}  # agent id -> (session id, steps left)
        self._counter = 0
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        for agent_id, name in self.agents:
            self._status(agent_id, name, "online")
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def tick(self) -> None:
        """One step of the simulation: one agent does one thing."""
        agent_id, name = self.rng.choice(self.agents)
        session = self._sessions.get(agent_id)
        if session is None:
            roll = self.rng.random()
            if roll < 0.55:
                self._counter += 1
                session_id = f"sess-{self.run}-{self._counter:05d}"
                self._sessions[agent_id] = (session_id, self.rng.randint(2, 6))
                self._status(agent_id, name, "busy")
                self._activity(session_id, agent_id, "started", "new task accepted")
            elif roll < 0.65:
                self._status(agent_id, name, "offline")
            else:
                self._status(agent_id, name, "idle" if roll < 0.95 else "online")
            return
        session_id, steps = session
        if steps > 0:
            self._sessions[agent_id] = (session_id, steps - 1)
            if self.rng.random() < 0.6:
                tool = self.rng.choice(TOOLS)
                self._activity(session_id, agent_id, "tool_call", f"called {tool}",
                               {"tool": tool, "durationMs": self.rng.randint(20, 2000)})
            else:
                self._activity(session_id, agent_id, "message", "sent a progress update")
            return
        del self._sessions[agent_id]
        if self.rng.random() < 0.12:
            self._activity(session_id, agent_id, "failed", "gave up after a tool error")
            self._status(agent_id, name, "error")
        else:
            self._activity(session_id, agent_id, "completed", "task done")
            self._status(agent_id, name, "idle")

    def _status(self, agent_id: str, name: str, status: str) -> None:
        body = {"status": status, "name": name, "message": MESSAGES[status],
                "metadata": {"demo": True}}
        payload = events.agent_status(body, self.clock.seconds(), agent_id)
        self._stored(self.hub.publish(events.AGENT_STATUS, payload))

    def _activity(self, session_id: str, agent_id: str, activity: str, summary: str,
                  detail: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"activity": activity, "agentId": agent_id, "summary": summary}
        if detail is not None:
            body["detail"] = detail
        payload = events.session_activity(body, self.clock.seconds(), session_id)
        self._stored(self.hub.publish(events.SESSION_ACTIVITY, payload))

    def _stored(self, d: Deferred[dict]) -> None:
        """Log, once, a publish the store failed; the fleet goes on."""
        d.addErrback(lambda failure: self.log.failure("the demo fleet's publish failed", failure))
