# -*- test-case-name: tests.test_hub_broker -*-
"""
The broker: the seam between the node and where events are kept.

The node appends an event through L{IBroker.append} and learns of every appended event through
the listeners it gave L{IBroker.subscribe}, in seq order, whoever appended it.  With one process,
"whoever" is always this node: L{InProcessBroker} wraps an L{IEventStore} and tells its listeners
of each new event as the append returns.  A broker for many hub processes on a shared backbone
implements the same interface, and tells every node of every node's events.

An append answers with a C{Deferred}: on a shared backbone the event is stored over the network
and its seq is known only later.  The in-process broker does the work at once and returns a
Deferred that has already fired, so one process behaves as when the answer was returned.

Reads (history, latest state, positions) go to the store directly: they do not need to be
ordered against other nodes' appends.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from mission_control.store import EachItem, EachResult, IEventStore, StoredEvent

#: C{listener(event)}: told of one appended event.
Listener = Callable[[StoredEvent], None]


class IBroker(Interface):
    """
    Appends events and tells every listener of every appended event, in seq order.

    Each append returns a C{Deferred} that fires with what it stored, or fails with what went
    wrong (L{mission_control.store.IdempotencyConflict}, C{ValueError}, or the store's own
    failure).  The listeners of a broker are told of each event an append created before that
    append's Deferred fires, in seq order: whoever waits for the Deferred (an HTTP answer, a
    C{published} frame) knows the event was fanned out already.  A broker fires every Deferred it
    returns, sooner or later (a backbone that does not answer fails it after a timeout of its
    own).
    """

    def append(event_type: str, payload: dict, ts: str, now: float,
               idempotency: Any = None,
               claimant: Optional[str] = None) -> Deferred[tuple[StoredEvent, bool]]:
        """
        (C{claimant}: the agent that publishes it, or C{None}: see L{EachItem}.)
        Append one event (see L{IEventStore.append}); fire with it and whether it was created
        (not an idempotent repeat).  Listeners have been told of it when the Deferred fires, when
        it was appended here; a repeat tells nobody.
        """

    def append_many(items: Sequence[tuple[str, dict]], ts: str, now: float,
                    idempotency: Any = None,
                    claimant: Optional[str] = None) -> Deferred[tuple[list[StoredEvent], bool]]:
        """
        (C{claimant}: the agent that publishes the batch, or C{None}: see L{EachItem}.)
        Append a batch of C{(event_type, payload)} as one atomic step (see
        L{IEventStore.append_many}); fire with the events in seq order and whether they were
        created.  Listeners have been told of each, in seq order, when the Deferred fires; a
        repeat tells nobody.
        """

    def append_each(items: Sequence[EachItem], ts: str,
                    now: float) -> Deferred[list[EachResult]]:
        """
        Append each of C{(event_type, payload, idempotency)} as L{append} would, as one step
        (see L{IEventStore.append_each}): fire with one answer per item, an event and whether it
        was created or the exception of that item alone; fail when the step fails as a whole.
        Listeners have been told of each created event, in seq order, when the Deferred fires;
        repeats and failed items tell nobody.
        """

    def subscribe(listener: Listener) -> None:
        """Tell C{listener} of every event appended from now on, in seq order."""

    def unsubscribe(listener: Listener) -> None:
        """Stop telling C{listener}; a listener not subscribed is ignored."""


@implementer(IBroker)
class InProcessBroker:
    """
    The broker of one hub process: appends to its store and tells its listeners at once; each
    append returns a Deferred that has already fired (or failed).
    """

    def __init__(self, store: IEventStore) -> None:
        self.store = store
        self._listeners: list[Listener] = []

    def append(self, event_type: str, payload: dict, ts: str, now: float,
               idempotency: Any = None,
               claimant: Optional[str] = None) -> Deferred[tuple[StoredEvent, bool]]:
        try:
            event, created = self.store.append(event_type, payload, ts, now, idempotency)
            if created:
                for listener in tuple(self._listeners):
                    listener(event)
        except Exception:
            return defer.fail()
        return defer.succeed((event, created))

    def append_many(self, items: Sequence[tuple[str, dict]], ts: str, now: float,
                    idempotency: Any = None,
                    claimant: Optional[str] = None) -> Deferred[tuple[list[StoredEvent], bool]]:
        try:
            stored, created = self.store.append_many(items, ts, now, idempotency)
            if created:
                listeners = tuple(self._listeners)
                for event in stored:
                    for listener in listeners:
                        listener(event)
        except Exception:
            return defer.fail()
        return defer.succeed((stored, created))

    def append_each(self, items: Sequence[EachItem], ts: str,
                    now: float) -> Deferred[list[EachResult]]:
        try:
            results = self.store.append_each(items, ts, now)
            listeners = tuple(self._listeners)
            for result in results:
                if isinstance(result, tuple) and result[1]:
                    for listener in listeners:
                        listener(result[0])
        except Exception:
            return defer.fail()
        return defer.succeed(results)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
