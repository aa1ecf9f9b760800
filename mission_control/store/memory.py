# -*- test-case-name: tests.test_store -*-
"""
An in-memory store: history, latest state, client positions and idempotency keys, all in the
process's own memory and all gone when it exits.

Used by the tests and by C{--store memory}.  Every new L{MemoryStore} is a new history, so it has a
new epoch.  Nothing here grows without bound: the history keeps at most C{max_events} events even
between calls to L{MemoryStore.trim}, and past C{max_agents} / C{max_sessions} entries the least
recently updated one is forgotten, so a publisher that invents a new session id per event cannot
grow the hub's memory without end.

The rules both stores share are in L{mission_control.store.rules}, the bounded latest state in
L{mission_control.store.latest}.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

from zope.interface import implementer

from mission_control.events import SESSION_ACTIVITY, encode_json
from mission_control.store.interface import (
    EachItem,
    EachResult,
    Idempotency,
    IdempotencyConflict,
    IEventStore,
    Retention,
    StoredEvent,
)
from mission_control.store.latest import LatestState, LatestStateReads
from mission_control.store.rules import (
    check_retention,
    is_live,
    is_match,
    new_epoch,
    scan_window,
    state_key,
)


@dataclass(frozen=True)
class _Entry:
    """A retained event and when it was appended, for retention by age."""

    event: StoredEvent
    created: float


@dataclass(frozen=True)
class _Key:
    """
    A remembered Idempotency-Key: the request's fingerprint, the events it produced (one for a
    single append) and whether it was a batch's.
    """

    fingerprint: str
    events: list[StoredEvent]
    created: float
    batch: bool = False


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
        #: Never renewed: a new memory store is a new history from the start.
        self.epoch_renewed: Optional[str] = None
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
        events, created = self._append([(event_type, payload)], ts, now, idempotency, False)
        return events[0], created

    def append_many(
        self,
        items: Sequence[tuple[str, dict]],
        ts: str,
        now: float,
        idempotency: Optional[Idempotency] = None,
    ) -> tuple[list[StoredEvent], bool]:
        """
        Append each of C{items} as L{append} appends one, in order, all or none: every key and
        encoding is checked before anything changes.  See L{IEventStore.append_many}.
        """
        if not items:
            raise ValueError("a batch needs at least one event")
        return self._append(items, ts, now, idempotency, True)

    def append_each(self, items: Sequence[EachItem], ts: str,
                    now: float) -> list[EachResult]:
        """
        Each of C{items} appended as L{append} appends it, in order; an item that fails is
        answered with its exception and changes nothing.  See L{IEventStore.append_each}.
        """
        results: list[EachResult] = []
        for item in items:
            event_type, payload, idempotency = item[0], item[1], item[2]
            try:
                stored, created = self._append([(event_type, payload)], ts, now, idempotency,
                                                False)
                results.append((stored[0], created))
            except (IdempotencyConflict, TypeError, ValueError) as e:
                results.append(e)
        return results

    def _append(self, items: Sequence[tuple[str, dict]], ts: str, now: float,
                idempotency: Optional[Idempotency], batch: bool) -> tuple[list[StoredEvent], bool]:
        keys = [(state_key(kind, payload), encode_json(payload)) for kind, payload in items]
        if idempotency is not None:
            repeat = self._repeat(idempotency, now, batch)
            if repeat is not None:
                return repeat, False
        stored = []
        for (event_type, payload), (key, encoded) in zip(items, keys):
            event = StoredEvent(seq=self.last_seq + 1, type=event_type, payload=payload, ts=ts)
            self._record(event, key, encoded, now)
            stored.append(event)
        if idempotency is not None:
            user, idem_key, fingerprint = idempotency
            self._keys.pop((user, idem_key), None)
            self._keys[(user, idem_key)] = _Key(fingerprint, stored, now, batch)
        return stored, True

    def _record(self, event: StoredEvent, key: str, encoded: bytes, now: float) -> None:
        """
        Keep C{event} (the next seq) in the history, make it the latest state of C{key} and
        record a session's owner: what one append changes, once it is known to be valid.
        """
        self._keep(event, now)
        self._latest.set(event.type, key, event.payload, encoded)
        if event.type == SESSION_ACTIVITY:
            owner = self._owners.get(key)
            if owner is not None:
                owner[1] = event.seq
            elif event.payload.get("agentId") is not None:
                self._owners[key] = [event.payload["agentId"], event.seq]
        self.last_seq = event.seq

    def _repeat(self, idempotency: Idempotency, now: float,
                batch: bool) -> Optional[list[StoredEvent]]:
        """
        The events a live earlier use of this key produced, or C{None}.

        @raise IdempotencyConflict: when the key was used for a different request, or for a
            batch where this is a single append (or the other way round).
        """
        user, idem_key, fingerprint = idempotency
        known = self._keys.get((user, idem_key))
        if known is None or not is_live(known.created, now):
            return None
        if known.fingerprint != fingerprint or known.batch != batch:
            raise IdempotencyConflict("the Idempotency-Key was used for a different request")
        return known.events

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
