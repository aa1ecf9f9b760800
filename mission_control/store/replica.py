# -*- test-case-name: tests.test_store_replica -*-
"""
A node's copy of a shared history: what one hub process reads while the history itself lives
elsewhere (in Redis, shared by every node).

The hub reads its store synchronously, in the reactor thread: a snapshot, a page of replay, the
owner of a session, the latest status of an agent.  A store on the network cannot answer like
that, so each node keeps a L{Replica}: the retained history and the latest state as of the last
event this node has applied, in memory, fed in seq order with the events every node appended
(its own answers, the others' notifications, and whatever it reads back to fill a gap).  Applying
the same events in the same order gives every node the same latest state: the rules (which
payload field keys it, the caps, the owners of sessions) are L{MemoryStore}'s, run on each node.

A replica assigns no seq and checks no idempotency key: appending is the shared store's job,
atomic across every node.  Its C{append} methods refuse, so a caller that writes to it by
mistake learns at once.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NoReturn, Optional

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY, encode_json
from mission_control.store.interface import Retention, StateEntry, StoredEvent
from mission_control.store.memory import MemoryStore
from mission_control.store.rules import state_key


class OutOfOrder(ValueError):
    """An event was applied that is not the next seq after the replica's last."""


class Replica(MemoryStore):
    """
    The retained history, latest state and session owners of a shared store, applied in seq
    order; reads as L{MemoryStore} reads.

    @ivar epoch: the shared history's epoch (not this process's).
    """

    def __init__(self, epoch: str, retention: Retention = Retention(), last_seq: int = 0) -> None:
        """
        Start empty at C{last_seq}: the events after it are applied next (a node that starts on
        a shared history first L{load}s what it retains).
        """
        super().__init__(retention)
        self.epoch = epoch
        self.last_seq = last_seq

    def load(self, history: Iterable[tuple[StoredEvent, float]], agents: Iterable[StateEntry],
             sessions: Iterable[StateEntry], owners: Mapping[str, str], last_seq: int) -> None:
        """
        Start from a shared store's contents: its latest state (C{agents} and C{sessions}, least
        recently updated first, each set through the caps as an append sets it), the owners of
        its sessions, then C{history}: the retained events with the time each was appended, in
        seq order and without gaps, applied as they were appended (an event that is also behind
        the latest state moves it to where it belongs: the order ends as the appends left it).
        C{last_seq} is the newest seq ever appended.
        """
        for event_type, entries in ((AGENT_STATUS, agents), (SESSION_ACTIVITY, sessions)):
            for entry in entries:
                self._latest.set(event_type, state_key(event_type, entry.payload), entry.payload,
                                 entry.encoded)
        for session, agent in owners.items():
            self._owners[session] = [agent, 0]
        events = list(history)
        self.last_seq = events[0][0].seq - 1 if events else last_seq
        for event, created in events:
            self._record(event, state_key(event.type, event.payload), encode_json(event.payload),
                         created)
        self.last_seq = max(self.last_seq, last_seq)

    def apply(self, event: StoredEvent, created: float, encoded: Optional[bytes] = None) -> None:
        """
        Apply the next event of the shared history (C{created}: when it was appended, for
        retention by age; C{encoded}: its payload's JSON, when the caller has it already).

        @raise OutOfOrder: when C{event.seq} is not C{last_seq + 1}; nothing changes.
        """
        if event.seq != self.last_seq + 1:
            raise OutOfOrder(f"seq {event.seq} applied after {self.last_seq}")
        key = state_key(event.type, event.payload)
        self._record(event, key, encode_json(event.payload) if encoded is None else encoded,
                     created)

    #: C{write_position(user, client, seq, now)}: also told of each position saved (a node
    #: writes them through to the shared store, so that they outlive it).
    write_position: Optional[Callable[[str, str, int, float], None]] = None

    def save_position(self, user: str, client: str, seq: int, now: float) -> None:
        """Remember the position here, and tell L{write_position}."""
        super().save_position(user, client, seq, now)
        if self.write_position is not None:
            self.write_position(user, client, seq, now)

    def append(self, *args: object, **kwargs: object) -> NoReturn:
        """A replica is written by L{apply} only: the shared store assigns seqs."""
        raise TypeError("a replica is written by apply(), in the shared store's seq order")

    append_many = append_each = append
