# -*- test-case-name: tests.test_store -*-
"""
An in-memory store: history, latest state, client positions and idempotency keys, all in the
process's own memory and all gone when it exits.

Used by the tests and by C{--store memory}.  Every new L{MemoryStore} is a new history, so it has a
new epoch.  Nothing here grows without bound: the history keeps at most C{max_events} events even
between calls to L{MemoryStore.trim}, and past C{max_agents} / C{max_sessions} entries the least
recently updated one is forgotten, so a publisher that invents a new session id per event cannot
grow the hub's memory without end.

The rules both stores share (which payload field keys the latest state, when an idempotency key
has expired, the bounded latest state itself) are defined here and used by the SQLite store too.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

from zope.interface import implementer

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY, encode_json
from mission_control.store.interface import (
    IDEMPOTENCY_WINDOW,
    IdempotencyConflict,
    IEventStore,
    Retention,
    StateEntry,
    StoredEvent,
)

#: The payload field that names the agent or session whose latest state an event updates.
STATE_KEY_FIELDS = {AGENT_STATUS: "agentId", SESSION_ACTIVITY: "sessionId"}

#: C{(user, key, fingerprint)}, as L{IEventStore.append} takes it.
Idempotency = Tuple[str, str, str]


def state_key(event_type: str, payload: dict) -> str:
    """
    The agent or session id whose latest state C{payload} becomes.

    Every store checks this before it assigns a seq, so a bad event never consumes one.

    @raise ValueError: for a type that is not stored, or a payload without its id.
    """
    field = STATE_KEY_FIELDS.get(event_type)
    if field is None:
        raise ValueError(f"not a stored event type: {event_type!r}")
    key = payload.get(field)
    if not isinstance(key, str) or not key:
        raise ValueError(f"a {event_type} payload needs a {field} string")
    return key


def is_match(event_type: str, payload: dict, wanted: str, subject: Optional[str]) -> bool:
    """
    Whether an event is of type C{wanted} and, with C{subject}, of that agent or session (the
    payload field that keys its latest state): the filter of L{IEventStore.events_matching}.
    """
    if event_type != wanted:
        return False
    return subject is None or payload.get(STATE_KEY_FIELDS.get(wanted, "")) == subject


def scan_window(seq: int, scan: int, first_seq: int, last_seq: int) -> tuple[int, int]:
    """
    The seqs L{IEventStore.events_matching} looks at: those in C{(start, end]}, the C{scan} seqs
    after C{seq}, or after the retained history's start when C{seq} is older; empty
    (C{start >= end}) when nothing is after C{seq}.  Retained seqs have no gaps, so this is also
    at most C{scan} events.
    """
    start = max(seq, first_seq - 1)
    return start, min(start + max(scan, 0), last_seq)


def new_epoch() -> str:
    """A fresh random name for a new history: 16 hex digits."""
    return secrets.token_hex(8)


def check_retention(retention: Retention) -> None:
    """
    Refuse limits no store can honour.

    @raise ValueError: for a negative limit.
    """
    for name in ("max_events", "max_age", "max_agents", "max_sessions"):
        if getattr(retention, name) < 0:
            raise ValueError(f"retention {name} must not be negative")


def is_live(created: float, now: float) -> bool:
    """Whether an idempotency key recorded at C{created} still counts at C{now}."""
    return now - created < IDEMPOTENCY_WINDOW


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
        mine = self._sessions_of.get(agent) if agent is not None else None
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


@dataclass(frozen=True)
class _Entry:
    """A retained event and when it was appended, for retention by age."""

    event: StoredEvent
    created: float


@dataclass(frozen=True)
class _Key:
    """A remembered Idempotency-Key: the request's fingerprint and the event it produced."""

    fingerprint: str
    event: StoredEvent
    created: float


@implementer(IEventStore)
class MemoryStore(LatestStateReads):
    """
    L{IEventStore} in memory.

    Payload dicts are stored as given, not copied: callers treat them as immutable once appended,
    as the hub does.

    @ivar epoch: names this store's history; a new store is a new history.
    @ivar last_seq: the seq of the newest event ever appended, 0 before the first.
    """

    def __init__(self, retention: Retention = Retention()) -> None:
        check_retention(retention)
        self.retention = retention
        self.epoch = new_epoch()
        self.last_seq = 0
        # History: a list read from _head on, so that dropping the oldest event is O(1) and
        # reading from any seq is one index computation.
        self._events: list[_Entry] = []
        self._head = 0
        self._latest = LatestState(retention)
        # session id -> [owning agent, seq of the session's newest event]
        self._owners: dict[str, list] = {}
        self._positions: dict[tuple[str, str], tuple[int, float]] = {}
        # Insertion order is creation order, so expired keys are found at the front.
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()

    @property
    def first_seq(self) -> int:
        """The seq of the oldest retained event; C{last_seq + 1} when none is."""
        if self._head < len(self._events):
            return self._events[self._head].event.seq
        return self.last_seq + 1

    # Appending

    def append(
        self,
        event_type: str,
        payload: dict,
        ts: str,
        now: float,
        idempotency: Optional[Idempotency] = None,
    ) -> tuple[StoredEvent, bool]:
        """
        Assign the next seq, keep the event and make it the latest state of its agent or session.
        See L{IEventStore.append}.  Everything that can fail is checked before anything changes.
        """
        key = state_key(event_type, payload)
        encoded = encode_json(payload)
        if idempotency is not None:
            repeat = self._repeat(idempotency, now)
            if repeat is not None:
                return repeat, False
        event = StoredEvent(seq=self.last_seq + 1, type=event_type, payload=payload, ts=ts)
        self._keep(event, now)
        self._latest.set(event_type, key, payload, encoded)
        if event_type == SESSION_ACTIVITY:
            owner = self._owners.get(key)
            if owner is not None:
                owner[1] = event.seq
            elif payload.get("agentId") is not None:
                self._owners[key] = [payload["agentId"], event.seq]
        if idempotency is not None:
            user, idem_key, fingerprint = idempotency
            self._keys.pop((user, idem_key), None)
            self._keys[(user, idem_key)] = _Key(fingerprint, event, now)
        self.last_seq = event.seq
        return event, True

    def _repeat(self, idempotency: Idempotency, now: float) -> Optional[StoredEvent]:
        """
        The event a live earlier use of this key produced, or C{None}.

        @raise IdempotencyConflict: when the key was used for a different request.
        """
        user, idem_key, fingerprint = idempotency
        known = self._keys.get((user, idem_key))
        if known is None or not is_live(known.created, now):
            return None
        if known.fingerprint != fingerprint:
            raise IdempotencyConflict("the Idempotency-Key was used for a different request")
        return known.event

    def _keep(self, event: StoredEvent, now: float) -> None:
        """Add C{event} to the history, dropping the oldest past C{max_events}."""
        self._events.append(_Entry(event, now))
        while len(self._events) - self._head > self.retention.max_events:
            self._head += 1
        self._compact()

    def _compact(self) -> None:
        """Release dropped history once it is half the list, so the list stays at most 2x."""
        if self._head and self._head * 2 >= len(self._events):
            del self._events[: self._head]
            self._head = 0

    # Reading

    def events_after(self, seq: int, limit: int) -> list[StoredEvent]:
        """Up to C{limit} retained events with a seq greater than C{seq}, oldest first."""
        if limit <= 0:
            return []
        first = self.first_seq
        start = self._head + max(seq + 1 - first, 0)
        return [entry.event for entry in self._events[start : start + limit]]

    def events_matching(self, seq: int, limit: int, scan: int, event_type: str,
                        subject: Optional[str] = None) -> tuple[list[StoredEvent], int]:
        """
        The events of C{event_type} (and C{subject}) among the C{scan} seqs after C{seq}, at most
        C{limit}, and the seq looked at last.  See L{IEventStore.events_matching}.
        """
        if limit <= 0:
            return [], seq
        start, end = scan_window(seq, scan, self.first_seq, self.last_seq)
        found: list[StoredEvent] = []
        offset = self._head + start + 1 - self.first_seq  # the index of seq start + 1
        for index in range(offset, offset + max(end - start, 0)):
            event = self._events[index].event
            if is_match(event.type, event.payload, event_type, subject):
                found.append(event)
                if len(found) == limit:
                    return found, event.seq
        return found, max(seq, end)

    def session_owner(self, session_id: str) -> Optional[str]:
        """The agent C{session_id} belongs to, or C{None} (see L{IEventStore.session_owner})."""
        owner = self._owners.get(session_id)
        return None if owner is None else owner[0]

    # Retention

    def trim(self, now: float) -> None:
        """
        Drop events older than C{max_age} from the front of the history (so what is retained stays
        one unbroken range of seqs), expired idempotency keys, client positions not updated
        within C{max_age} (a position older than the history it points into cannot resume), and
        the owners of sessions left in neither the history nor the latest state.
        """
        cutoff = now - self.retention.max_age
        while self._head < len(self._events) and self._events[self._head].created < cutoff:
            self._head += 1
        self._compact()
        while self._keys:
            oldest = next(iter(self._keys.values()))
            if is_live(oldest.created, now):
                break
            self._keys.popitem(last=False)
        stale = [client for client, (_, updated) in self._positions.items() if updated < cutoff]
        for client in stale:
            del self._positions[client]
        first = self.first_seq
        gone = [session for session, (_, seq) in self._owners.items()
                if seq < first and self._latest.get(SESSION_ACTIVITY, session) is None]
        for session in gone:
            del self._owners[session]

    # Client positions

    def save_position(self, user: str, client: str, seq: int, now: float) -> None:
        """Remember that C{user}'s client named C{client} has processed everything up to C{seq}."""
        self._positions[(user, client)] = (seq, now)

    def position(self, user: str, client: str) -> Optional[int]:
        """The seq saved for this user and client name, or C{None}."""
        saved = self._positions.get((user, client))
        return None if saved is None else saved[0]

    def close(self) -> None:
        """Nothing to release; safe to call any number of times."""
