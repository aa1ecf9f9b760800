# -*- test-case-name: tests.test_store_latest -*-
"""
The latest state both stores serve from memory: the newest payload of each agent and each
session, with its encoding, bounded by the retention caps.

The memory store keeps nothing else; the SQLite store keeps it as a copy of its C{latest} table,
moved only after each commit, so that the snapshot every client receives decodes no payload.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY
from mission_control.store.interface import Retention, StateEntry


class LatestState:
    """
    The latest payload per agent and per session, least recently updated first, bounded by the
    retention caps: past a cap the least recently updated entry is forgotten.  Sessions are also
    capped per agent (by the C{agentId} of their latest payload), so that one agent's token cannot
    fill the state every dashboard receives as its snapshot.
    """

    def __init__(self, retention: Retention) -> None:
        self._caps = {AGENT_STATUS: retention.max_agents, SESSION_ACTIVITY: retention.max_sessions}
        self._per_agent = retention.max_sessions_per_agent
        self._latest: dict[str, OrderedDict[str, StateEntry]] = {
            AGENT_STATUS: OrderedDict(),
            SESSION_ACTIVITY: OrderedDict(),
        }
        # agent id -> the keys of its sessions in the state, least recently updated first.
        self._sessions_of: dict[str, OrderedDict[str, None]] = {}

    def set(self, event_type: str, key: str, payload: dict, encoded: bytes) -> list[str]:
        """
        Make C{payload} (encoded as C{encoded}) the most recent state of C{key}; forget the
        stalest entries past the caps.

        @return: the keys forgotten to make room.
        """
        latest = self._latest[event_type]
        previous = latest.pop(key, None)
        latest[key] = StateEntry(payload, encoded)
        forgotten = []
        if event_type == SESSION_ACTIVITY:
            if previous is not None:
                self._unindex(key, previous.payload)
            agent = payload.get("agentId")
            if agent is not None:
                mine = self._sessions_of.setdefault(agent, OrderedDict())
                mine[key] = None
                while len(mine) > self._per_agent:
                    oldest = next(iter(mine))
                    self._unindex(oldest, latest.pop(oldest).payload)
                    forgotten.append(oldest)
        while len(latest) > self._caps[event_type]:
            oldest, entry = latest.popitem(last=False)
            if event_type == SESSION_ACTIVITY:
                self._unindex(oldest, entry.payload)
            forgotten.append(oldest)
        return forgotten

    def _unindex(self, key: str, payload: dict) -> None:
        agent = payload.get("agentId")
        if agent is None:
            return
        mine = self._sessions_of.get(agent)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._sessions_of[agent]

    def get(self, event_type: str, key: str) -> Optional[StateEntry]:
        """The entry of C{key}, or C{None}."""
        return self._latest[event_type].get(key)

    def entries(self, event_type: str) -> list[StateEntry]:
        """The entries of C{event_type}, least recently updated first."""
        return list(self._latest[event_type].values())

    def values(self, event_type: str) -> list[dict]:
        """The payloads of C{event_type}, least recently updated first."""
        return [entry.payload for entry in self._latest[event_type].values()]


class LatestStateReads:
    """
    The reads of the latest state both stores serve from memory (their C{_latest}, a
    L{LatestState}): the SQLite store keeps it as a copy of its table, moved after each commit.
    """

    _latest: LatestState

    def agents(self) -> list[dict]:
        """The latest C{agent:status} payload of each agent, least recently updated first."""
        return self._latest.values(AGENT_STATUS)

    def sessions(self) -> list[dict]:
        """The latest C{session:activity} payload of each session, least recently updated first."""
        return self._latest.values(SESSION_ACTIVITY)

    def state(self, event_type: str) -> list[StateEntry]:
        """The latest state of C{event_type}, payloads with their encodings."""
        return self._latest.entries(event_type)

    def agent(self, agent_id: str) -> Optional[dict]:
        """The latest C{agent:status} payload of C{agent_id}, or C{None}."""
        entry = self._latest.get(AGENT_STATUS, agent_id)
        return None if entry is None else entry.payload
