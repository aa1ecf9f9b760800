# -*- test-case-name: tests.test_hub_outbox -*-
"""
The fan-out window: the events of a few milliseconds reach each connection as one write.

Most of what a delivery costs is not the hub's Python but the write: a system call to send, and
the reactor's bookkeeping around it, once per connection per write.  So fan-out does not write
each event to each connection as it is published.  The node hands the prepared frame to each
subscriber's L{IConnection.enqueue} (a reference appended to the connection's queue, nothing
more) and tells the L{FanoutWindow} which connections it queued for; the window has every one of
them L{IConnection.flush} its queue, in one write, at the end of the window.

The window is flushed at once when nothing was flushed during the last C{window} seconds, so an
event after a quiet spell goes out in the same reactor turn, as it did without a window; only
events that follow another within C{window} wait, at most C{window}, for the rest of theirs.

Ordering is the connection's: what it is sent directly (a reply, C{welcome}, a replayed event, a
close) goes out after what it has queued (see L{IConnection.enqueue}).  Who receives an event is
decided when it is published, as before: a client that goes live or unsubscribes during a window
gets exactly what it was a subscriber of at that moment.  Time is the injected clock.
"""

from __future__ import annotations

from typing import Collection

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mission_control.hub.connection import IConnection


class FanoutWindow:
    """
    The connections with queued frames, and when they flush.

    @ivar window: seconds a queued frame may wait for others; 0 flushes every event at once.
    """

    def __init__(self, clock: IReactorTime, window: float) -> None:
        self.clock = clock
        self.window = window
        #: The target collections of the events queued since the last flush.
        self._dirty: list[Collection[IConnection]] = []
        self._call: IDelayedCall | None = None
        self._flushed_at = float("-inf")

    def queued(self, targets: Collection[IConnection]) -> None:
        """An event was queued to each of C{targets}: flush now, or at the end of the window."""
        self._dirty.append(targets)
        if self._call is not None:
            return
        wait = self._flushed_at + self.window - self.clock.seconds()
        if wait <= 0:
            self.flush()
        else:
            self._call = self.clock.callLater(wait, self.flush)

    def flush(self) -> None:
        """Have every connection with queued frames write them, each in one write."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        self._flushed_at = self.clock.seconds()
        dirty, self._dirty = self._dirty, []
        if not dirty:
            return
        # The targets are copies (see Registry.subscribers), so a close during the flush is safe.
        conns = dirty[0] if len(dirty) == 1 else set().union(*dirty)
        for conn in conns:
            conn.flush()

    def stop(self) -> None:
        """Flush what is queued and leave no timer behind."""
        self.flush()
