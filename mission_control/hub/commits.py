# -*- test-case-name: tests.test_hub_commits -*-
"""
Group commit: the publishes that arrive in one reactor turn, stored as one transaction.

A WebSocket C{publish} is checked as it arrives (a refusal is answered at once), then waits in
the L{GroupCommit} until the end of the reactor turn (a C{callLater(0)} on the hub's clock).
There every waiting publish, whichever connection sent it, is stored by one
L{IBroker.append_each}: one commit for the group instead of one per event, which is where a
publish's time went.  Each publish then gets its answer, in the order they arrived: its event
(fanned out by the broker's listeners before any answer) or the exception of its own item (an
C{idempotencyKey} used for another event).  When the store fails as a whole, nothing of the
group is stored and every publish of it is answered with that failure.  Failures are logged
here, once each; the answers only say what to reply.

Until the group is stored, a session that one of its publishes claims (an agent's first activity
in a session nobody owns) is already that agent's for every check (L{GroupCommit.session_owner}),
so no other agent's publish, in the group or not, can slip into it before the claim is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mission_control import events
from mission_control.hub.broker import IBroker
from mission_control.hub.publishing import BatchOwners
from mission_control.store import EachResult, Idempotency, IdempotencyConflict

#: C{answer(result)}: told what became of one publish, once its group is stored.
Answer = Callable[[EachResult], None]


@dataclass
class _Waiting:
    """One checked publish waiting for its group's commit."""

    event_type: str
    payload: dict
    idempotency: Optional[Idempotency]
    answer: Answer


class GroupCommit:
    """The publishes waiting for the end of this reactor turn, and their one commit."""

    log = Logger()

    def __init__(self, clock: IReactorTime, broker: IBroker,
                 session_owner: Callable[[str], Optional[str]]) -> None:
        self.clock = clock
        self.broker = broker
        self._store_owner = session_owner
        self._waiting: list[_Waiting] = []
        self._owners = BatchOwners(session_owner)
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        """How many publishes wait for the commit."""
        return len(self._waiting)

    def session_owner(self, session_id: str) -> Optional[str]:
        """The owner of C{session_id} as it will be once the waiting publishes are stored."""
        return self._owners(session_id)

    def add(self, event_type: str, payload: dict, idempotency: Optional[Idempotency],
            answer: Answer) -> None:
        """
        Wait with a checked publish for the end of this turn; C{answer} is called once it is
        stored (never before this returns).
        """
        self._waiting.append(_Waiting(event_type, payload, idempotency, answer))
        self._owners.stored(event_type, payload)
        if self._call is None:
            self._call = self.clock.callLater(0, self.commit)

    def commit(self) -> None:
        """
        Store every waiting publish now, as one step, and answer each in the order they came.
        Called at the end of the turn, and earlier by whoever must not overtake them (a
        connection's next frame of another kind, the hub stopping).
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        waiting, self._waiting = self._waiting, []
        self._owners = BatchOwners(self._store_owner)
        if not waiting:
            return
        now = self.clock.seconds()
        items = [(w.event_type, w.payload, w.idempotency) for w in waiting]
        results: list[EachResult]
        try:
            results = self.broker.append_each(items, events.format_timestamp(now), now)
        except Exception as e:
            self.log.failure("storing a group of {count} publishes failed", count=len(waiting))
            results = [e] * len(waiting)
        else:
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, IdempotencyConflict):
                    self.log.failure("storing a publish failed", Failure(result))
        for w, result in zip(waiting, results):
            try:
                w.answer(result)
            except Exception:
                self.log.failure("answering a stored publish failed")
