# -*- test-case-name: tests.test_store -*-
"""
The store interface: what the hub needs from wherever events and latest state live.

Implementations: L{mission_control.store.memory.MemoryStore} (tests, C{--store memory}) and
L{mission_control.store.sqlite.SQLiteStore} (the default, durable).  A Redis store for several
nodes is meant to satisfy the same interface, which is why assigning C{seq} and appending is one
atomic step of the store (L{IEventStore.append}), never "read last_seq, then write".

Every implementation runs the one contract-test mixin in tests/test_store.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class StoredEvent:
    """One stored event: what a client receives as C{{"type", "payload", "ts", "seq"}}."""

    seq: int
    type: str
    payload: dict
    ts: str

    def envelope(self) -> dict:
        return {"type": self.type, "payload": self.payload, "ts": self.ts, "seq": self.seq}


@dataclass(frozen=True)
class Retention:
    """
    How much history is kept for resume: at most C{max_events} events, none older than
    C{max_age} seconds.  C{max_agents} and C{max_sessions} bound the latest-state tables (the least
    recently updated entries go first).
    """

    max_events: int = 100_000
    max_age: float = 86_400.0
    max_agents: int = 10_000
    max_sessions: int = 10_000
    #: Sessions of one agent (by the C{agentId} of their latest activity) kept in the latest
    #: state: one agent token cannot fill every dashboard's snapshot with its sessions.
    max_sessions_per_agent: int = 1_000


@dataclass(frozen=True)
class StateEntry:
    """
    One entry of the latest state: the payload, and its JSON encoding made once when it was
    stored, so a snapshot is a join of ready bytes however many clients ask for it.
    """

    payload: dict
    encoded: bytes


#: How long an Idempotency-Key is remembered, in seconds.
IDEMPOTENCY_WINDOW = 600.0


#: C{(user, key, fingerprint)}, as L{IEventStore.append} takes it.
Idempotency = Tuple[str, str, str]

#: One append of L{IEventStore.append_each}: C{(event_type, payload, idempotency or None)},
#: or with a fourth element, the claimant: the agent that publishes it (C{None} for an
#: administrator or operator).  A store shared by several nodes refuses an item whose claimant
#: is not the owner of its session (L{SessionTaken}): two nodes may both have let one agent's
#: first activity claim a session.  A store of one process checked that already and ignores it.
EachItem = Union[Tuple[str, dict, Optional[Idempotency]],
                 Tuple[str, dict, Optional[Idempotency], Optional[str]]]

#: What L{IEventStore.append_each} answers for one item: C{(event, created)} as L{append}
#: returns, or the exception L{append} would have raised for that item alone.
EachResult = Union[Tuple[StoredEvent, bool], Exception]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before, for a different request."""


class SessionTaken(Exception):
    """The session belongs to another agent than the one claiming it (see L{EachItem})."""

    def __init__(self, owner: str) -> None:
        super().__init__("the session belongs to another agent")
        self.owner = owner


class StoreUnavailable(Exception):
    """
    The store cannot take appends now (a shared store out of reach, a history still loading):
    nothing was appended, or nothing that will be answered; the publisher may retry, with its
    Idempotency-Key.  Answered 503 over HTTP and with an C{unavailable} error frame.
    """


class IEventStore(Interface):
    """Sequence numbers, history, latest state, client positions and idempotency keys."""

    epoch: str = Attribute(
        "str: names this store's history.  It changes only when the history is lost (a new memory "
        "store, a deleted database), so a client holding a seq of another epoch must redraw."
    )
    epoch_renewed: Optional[str] = Attribute(
        "str or None: why the epoch was renewed when the store was opened (the history may have "
        "lost its last events, e.g. the machine restarted while the database was open), or None: "
        "for the log line at start"
    )
    last_seq: int = Attribute("int: the seq of the newest event ever appended; 0 before the first")
    first_seq: int = Attribute(
        "int: the seq of the oldest event still retained; last_seq + 1 when none is"
    )

    def append(
        event_type: str,
        payload: dict,
        ts: str,
        now: float,
        idempotency: Optional[Idempotency] = None,
    ) -> Tuple[StoredEvent, bool]:
        """
        Atomically assign the next seq, store the event, and make C{payload} the latest state of
        its agent (C{agent:status}, keyed by C{agentId}) or session (C{session:activity}, keyed by
        C{sessionId}); for a session's first activity that names an agent, record that agent as
        the session's owner (L{session_owner}).  When this returns, the event is durable (for a
        durable store).  A payload that cannot be encoded as JSON raises before a seq is used.

        @param ts: the envelope's C{ts} string.
        @param now: seconds since the epoch, for retention by age.
        @param idempotency: C{None}, or C{(user, key, fingerprint)}: when that user already
            appended with that key within L{IDEMPOTENCY_WINDOW} seconds, nothing is appended and the
            first event is returned instead (the C{fingerprint} of the request must match, else
            L{IdempotencyConflict}).
        @return: C{(StoredEvent, created)}: C{created} is false for an idempotent repeat.
        """

    def append_many(
        items: Sequence[Tuple[str, dict]],
        ts: str,
        now: float,
        idempotency: Optional[Idempotency] = None,
    ) -> Tuple[list[StoredEvent], bool]:
        """
        Append C{items} (C{(event_type, payload)} pairs, at least one) as one atomic step: each
        as L{append} appends one, in order, so they get consecutive seqs and the latest state
        and session owners end as after as many single appends (an owner claimed by an earlier
        item holds for the later ones).  All or nothing: when it raises, no event was stored and
        no seq used.  When it returns, every event is durable (for a durable store), all with
        the one C{ts}.

        @param idempotency: as for L{append}, for the batch as a whole: a repeat returns every
            event of the first batch.  A key used for a single append is not the key of a batch
            (nor the other way round): L{IdempotencyConflict}.
        @return: C{(events, created)}, the events in seq order.
        @raise ValueError: for an empty batch, or an event that could not be stored.
        """

    def append_each(items: Sequence[EachItem], ts: str, now: float) -> list[EachResult]:
        """
        Append each of C{items} as its own L{append} would, in order, in one transaction: what a
        group of publishes that arrived together costs is one commit, not one each.

        Each item succeeds or fails alone: an item whose key was used for a different request
        (L{IdempotencyConflict}) or whose payload cannot be encoded is answered with that
        exception and appends nothing, and the others are appended.  A key is seen by the items
        after the one that used it, so an item that repeats an earlier item's key (and
        fingerprint) is answered with that item's event, not appended.  The appended events get
        consecutive seqs, all with the one C{ts}.  When the store itself fails, it raises and no
        item was appended; when it returns, every appended event is durable (for a durable
        store).

        @return: one L{EachResult} per item, in order.
        """

    def events_after(seq: int, limit: int) -> list[StoredEvent]:
        """Up to C{limit} retained events with a seq greater than C{seq}, oldest first."""

    def events_matching(
        seq: int, limit: int, scan: int, event_type: str, subject: Optional[str] = None
    ) -> Tuple[list[StoredEvent], int]:
        """
        The retained events of C{event_type} (with C{subject}: only those of that agent or
        session, by the payload's C{agentId} or C{sessionId}) among the next C{scan} seqs after
        C{seq} (after C{first_seq - 1} when C{seq} is older), at most C{limit} of them, oldest
        first; and C{through}, the seq up to which the history was looked at: the C{limit}-th
        match's when the call stopped there, else the end of that window (at most C{last_seq}),
        and never less than C{seq}.  The window bounds the work of one call however rare the
        matches are; C{through} is where the next call goes on.

        @return: C{(events, through)}.
        """

    def agents() -> list[dict]:
        """The latest C{agent:status} payload per agent, least recently updated first."""

    def sessions() -> list[dict]:
        """The latest C{session:activity} payload per session, least recently updated first."""

    def state(event_type: str) -> list[StateEntry]:
        """
        The latest state of C{event_type} as L{StateEntry}s (payload and its encoding), least
        recently updated first: a list the caller may keep while it streams it out.
        """

    def agent(agent_id: str) -> Optional[dict]:
        """The latest C{agent:status} payload of one agent, or C{None}."""

    def session_owner(session_id: str) -> Optional[str]:
        """
        The agent a session belongs to, or C{None}: the first agent named (C{agentId}) by an
        activity of that session.  Durable like the history, and kept as long as the session has
        an event in the history or an entry in the latest state, so neither a restart nor
        retention of other sessions lets another agent take it over.
        """

    def trim(now: float) -> None:
        """Apply the retention limits and forget expired idempotency keys."""

    def save_position(user: str, client: str, seq: int, now: float) -> None:
        """Remember that C{user}'s client named C{client} has processed everything up to C{seq}."""

    def position(user: str, client: str) -> Optional[int]:
        """The seq saved by L{save_position} for this user and client name, or C{None}."""

    def close() -> None:
        """Flush and release whatever the store holds open.  Safe to call twice."""
