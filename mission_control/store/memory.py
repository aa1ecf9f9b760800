# -*- test-case-name: tests.test_store -*-
"""
An in-memory store: sequence numbers and the latest state per agent and per session.

Bounded: past C{max_agents} / C{max_sessions} entries the least recently updated one is forgotten,
so a publisher that invents a new session id per event cannot grow the hub's memory without end.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY


class MemoryStore:
    """
    Assigns C{seq} and keeps the latest payload per agent and per session.

    @ivar epoch: names this store's history; a new store is a new history, so a client that saw
        another epoch knows its C{seq} means nothing here.
    @ivar last_seq: the C{seq} of the newest event, 0 before the first.
    """

    def __init__(self, max_agents: int = 10000, max_sessions: int = 10000) -> None:
        self.epoch = uuid.uuid4().hex[:16]
        self.last_seq = 0
        self._max = {AGENT_STATUS: max_agents, SESSION_ACTIVITY: max_sessions}
        self._latest: dict[str, OrderedDict[str, dict]] = {
            AGENT_STATUS: OrderedDict(),
            SESSION_ACTIVITY: OrderedDict(),
        }

    def append(self, event_type: str, payload: dict) -> int:
        """
        Record an event: assign the next C{seq} and make C{payload} the latest state of its agent
        or session.  Returns the C{seq}.
        """
        key = payload["agentId"] if event_type == AGENT_STATUS else payload["sessionId"]
        latest = self._latest[event_type]
        latest.pop(key, None)
        latest[key] = payload
        while len(latest) > self._max[event_type]:
            latest.popitem(last=False)
        self.last_seq += 1
        return self.last_seq

    def agents(self) -> list[dict]:
        """The latest C{agent:status} payload of each agent, oldest update first."""
        return list(self._latest[AGENT_STATUS].values())

    def sessions(self) -> list[dict]:
        """The latest C{session:activity} payload of each session, oldest update first."""
        return list(self._latest[SESSION_ACTIVITY].values())
