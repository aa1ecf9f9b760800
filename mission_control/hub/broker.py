# -*- test-case-name: tests.test_hub_broker -*-
"""
The broker: the seam between the node and where events are kept.

The node appends an event through L{IBroker.append} and learns of every appended event through
the listeners it gave L{IBroker.subscribe}, in seq order, whoever appended it.  With one process,
"whoever" is always this node: L{InProcessBroker} wraps an L{IEventStore} and tells its listeners
of each new event as the append returns.  A broker for many hub processes on a shared backbone
implements the same interface, and tells every node of every node's events.

Reads (history, latest state, positions) go to the store directly: they do not need to be
ordered against other nodes' appends.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from zope.interface import Interface, implementer

from mission_control.store import EachItem, EachResult, IEventStore, StoredEvent

#: C{listener(event)}: told of one appended event.
Listener = Callable[[StoredEvent], None]


class IBroker(Interface):
    """Appends events and tells every listener of every appended event, in seq order."""

    def append(event_type: str, payload: dict, ts: str, now: float,
               idempotency: Any = None) -> tuple[StoredEvent, bool]:
        """
        Append one event (see L{IEventStore.append}); return it and whether it was created (not
        an idempotent repeat).  Listeners have been told of it by the time this returns when it
        was appended here; a repeat tells nobody.
        """

    def append_many(items: Sequence[tuple[str, dict]], ts: str, now: float,
                    idempotency: Any = None) -> tuple[list[StoredEvent], bool]:
        """
        Append a batch of C{(event_type, payload)} as one atomic step (see
        L{IEventStore.append_many}); return the events in seq order and whether they were
        created.  Listeners have been told of each, in seq order, by the time this returns; a
        repeat tells nobody.
        """

    def append_each(items: Sequence[EachItem], ts: str, now: float) -> list[EachResult]:
        """
        Append each of C{(event_type, payload, idempotency)} as L{append} would, as one step
        (see L{IEventStore.append_each}): one answer per item, an event and whether it was
        created or the exception of that item alone.  Listeners have been told of each created
        event, in seq order, by the time this returns; repeats and failed items tell nobody.
        """

    def subscribe(listener: Listener) -> None:
        """Tell C{listener} of every event appended from now on, in seq order."""

    def unsubscribe(listener: Listener) -> None:
        """Stop telling C{listener}; a listener not subscribed is ignored."""


@implementer(IBroker)
class InProcessBroker:
    """The broker of one hub process: appends to its store, tells its listeners at once."""

    def __init__(self, store: IEventStore) -> None:
        self.store = store
        self._listeners: list[Listener] = []

    def append(self, event_type: str, payload: dict, ts: str, now: float,
               idempotency: Any = None) -> tuple[StoredEvent, bool]:
        event, created = self.store.append(event_type, payload, ts, now, idempotency)
        if created:
            for listener in tuple(self._listeners):
                listener(event)
        return event, created

    def append_many(self, items: Sequence[tuple[str, dict]], ts: str, now: float,
                    idempotency: Any = None) -> tuple[list[StoredEvent], bool]:
        stored, created = self.store.append_many(items, ts, now, idempotency)
        if created:
            listeners = tuple(self._listeners)
            for event in stored:
                for listener in listeners:
                    listener(event)
        return stored, created

    def append_each(self, items: Sequence[EachItem], ts: str,
                    now: float) -> list[EachResult]:
        results = self.store.append_each(items, ts, now)
        listeners = tuple(self._listeners)
        for result in results:
            if isinstance(result, tuple) and result[1]:
                for listener in listeners:
                    listener(result[0])
        return results

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
