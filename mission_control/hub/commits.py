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

The broker answers a group with a Deferred.  One group is in flight at a time: the publishes
that arrive meanwhile wait, and are stored as the next group as soon as the one in flight is
answered (at once, when the end of their turn has already come).  So groups are stored in the
order their publishes arrived, seqs follow that order, and answers go out in it, without any
reordering of answers; while the backbone is slow, the next group simply grows.

Until a group is stored, a session that one of its publishes claims (an agent's first activity
in a session nobody owns) is already that agent's for every check (L{GroupCommit.session_owner}):
while the group waits, through its own claims; while it is in flight, through the hub's
L{PendingOwners}, which hold them until the group's Deferred fires.  So no other agent's
publish, in the group or not, can slip into the session before the claim is stored.

L{InFlight} counts what the node handed the broker and has not heard back about, so that a hub
that stops can wait until every publish it accepted is answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mission_control import events
from mission_control.hub.broker import IBroker
from mission_control.hub.publishing import BatchOwners, PendingOwners
from mission_control.metrics import Metrics
from mission_control.store import (
    EachItem,
    EachResult,
    Idempotency,
    IdempotencyConflict,
    SessionTaken,
    StoreUnavailable,
)

#: C{answer(result)}: told what became of one publish, once its group is stored.
Answer = Callable[[EachResult], None]
_T = TypeVar("_T")


class InFlight:
    """The appends handed to the broker and not answered yet, and who waits for there being none."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[Deferred[None]] = []

    def track(self, d: Deferred[_T]) -> Deferred[_T]:
        """Count C{d} until it fires (with whatever result); return it."""
        self.count += 1

        def done(result: object) -> object:
            self.count -= 1
            if not self.count:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        d.addBoth(done)
        return d

    def when_none(self) -> Deferred[None]:
        """A Deferred that fires once nothing is in flight (at once when nothing is)."""
        if not self.count:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d


@dataclass
class _Waiting:
    """One checked publish waiting for its group's commit."""

    event_type: str
    payload: dict
    idempotency: Optional[Idempotency]
    answer: Answer
    #: The agent that publishes it, or None (see EachItem).
    claimant: Optional[str] = None


class GroupCommit:
    """The publishes waiting for the end of this reactor turn, and their one commit."""

    log = Logger()

    def __init__(self, clock: IReactorTime, broker: IBroker,
                 session_owner: Callable[[str], Optional[str]],
                 in_flight: InFlight | None = None, metrics: Metrics | None = None) -> None:
        """
        @param session_owner: the owner of a session as the checks see it: a L{PendingOwners}
            (the hub's, shared with its other publishes) or the store's own function.
        @param in_flight: where the groups in flight are counted (the hub's), if anywhere.
        @param metrics: where each group's append time and its new events are counted (the
            hub's), if anywhere.
        """
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics(process=False)
        self.broker = broker
        self._pending = (session_owner if isinstance(session_owner, PendingOwners)
                         else PendingOwners(session_owner))
        self._in_flight = in_flight if in_flight is not None else InFlight()
        self._waiting: list[_Waiting] = []
        self._owners = BatchOwners(self._pending)
        self._call: IDelayedCall | None = None
        #: A group is being stored: the waiting publishes go after it.
        self._storing = False

    def __len__(self) -> int:
        """How many publishes wait for the commit (not counting a group in flight)."""
        return len(self._waiting)

    @property
    def storing(self) -> bool:
        """Whether a group is in flight: handed to the broker and not answered yet."""
        return self._storing

    def session_owner(self, session_id: str) -> Optional[str]:
        """
        The owner of C{session_id} as it will be once the publishes waiting and in flight are
        stored.
        """
        return self._owners(session_id)

    def add(self, event_type: str, payload: dict, idempotency: Optional[Idempotency],
            answer: Answer, claimant: Optional[str] = None) -> None:
        """
        Wait with a checked publish for the end of this turn; C{answer} is called once it is
        stored (never before this returns).
        """
        self._waiting.append(_Waiting(event_type, payload, idempotency, answer, claimant))
        self._owners.stored(event_type, payload)
        if self._call is None:
            self._call = self.clock.callLater(0, self.commit)

    def commit(self) -> None:
        """
        Store every waiting publish now, as one step, and answer each in the order they came,
        once the broker answers; while a group is in flight, as soon as that one is answered.
        Called at the end of the turn, and earlier by whoever must not overtake them (a
        connection's next frame of another kind, the hub stopping).
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        if self._storing or not self._waiting:
            return  # the group in flight commits the waiting ones once it is answered
        waiting, self._waiting = self._waiting, []
        claimed, self._owners = self._owners.claimed, BatchOwners(self._pending)
        release = self._pending.hold(claimed)
        now = self.clock.seconds()
        items: list[EachItem] = [(w.event_type, w.payload, w.idempotency, w.claimant)
                                 for w in waiting]
        self._storing = True
        started = self.metrics.timer()
        try:
            d = self.broker.append_each(items, events.format_timestamp(now), now)
        except Exception:
            d = defer.fail()
        d.addBoth(self._stored, waiting, release, started)
        self._in_flight.track(d).addErrback(
            lambda failure: self.log.failure("answering a group of publishes failed", failure))

    def _stored(self, outcome: list[EachResult] | Failure, waiting: list[_Waiting],
                release: Callable[[], None], started: float) -> None:
        """The broker answered the group in flight: answer each of its publishes, in order."""
        self.metrics.appended(started)
        self._storing = False
        release()
        results: list[EachResult]
        if isinstance(outcome, Failure):
            if outcome.check(StoreUnavailable):
                self.log.warn("a group of {count} publishes could not be stored: {why}",
                              count=len(waiting), why=outcome.getErrorMessage())
            else:
                self.log.failure("storing a group of {count} publishes failed", outcome,
                                 count=len(waiting))
            error = outcome.value
            results = [error if isinstance(error, Exception) else RuntimeError(str(error))
                       ] * len(waiting)
        else:
            results = outcome
            for result in results:
                if isinstance(result, Exception):
                    if not isinstance(result, (IdempotencyConflict, SessionTaken)):
                        self.log.failure("storing a publish failed", Failure(result))
                elif result[1]:
                    self.metrics.published(result[0].type)
        for w, result in zip(waiting, results):
            try:
                w.answer(result)
            except Exception:
                self.log.failure("answering a stored publish failed")
        if self._waiting and self._call is None:
            # Their turn ended (or someone asked) while this group was in flight.
            self.commit()
