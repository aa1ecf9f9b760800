# -*- test-case-name: tests.test_hub_outbox -*-
"""
The fan-out window: the events of a few milliseconds reach each connection as one write.

Most of what a delivery costs is not the hub's Python but the write: a system call to send, and
the reactor's bookkeeping around it, once per connection per write.  So fan-out does not write
each event to each connection as it is published.  The node hands the prepared frame to each
subscriber's L{IConnection.enqueue} (a reference appended to the connection's queue, nothing
more) through L{FanoutWindow.fan_out}, which remembers which connections it queued for and has
every one of them L{IConnection.flush} its queue, in one write, at the end of the window.

An event after a quiet spell (nothing flushed during the last C{window} seconds, or a window of
0) queues nothing: it goes to each connection in the same reactor turn, as it was without a
window (straight to the socket of one in the common case, L{IConnection.fast_send}, else through
its L{IConnection.deliver}); only events that follow another within C{window} are queued and
wait, at most C{window}, for the rest of theirs.

Ordering is the connection's: what it is sent directly (a reply, C{welcome}, a replayed event, a
close) goes out after what it has queued (see L{IConnection.enqueue}).  Who receives an event is
decided when it is published, as before: a client that goes live or unsubscribes during a window
gets exactly what it was a subscriber of at that moment.  Time is the injected clock.
"""

from __future__ import annotations

from typing import Any, Collection

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

    def fan_out(self, prepared: Any, targets: Collection[IConnection]) -> None:
        """
        Hand C{prepared} to each of C{targets}: at once when the window is quiet, else queued
        until its end.

        A quiet window has nothing queued on any connection (the last flush emptied every queue),
        so the frame goes at once to each connection, in one loop: no queue is built, no second
        pass is made.  A connection in the common case (see L{IConnection.fast_send}) is one test
        and one C{send} of the framed bytes; what the kernel does not take, and every other
        connection, goes the connection's own way (L{IConnection.write_rest},
        L{IConnection.deliver}).  Its time starts the next window.
        """
        if self._call is None:
            now = self.clock.seconds()
            wait = self._flushed_at + self.window - now
            if wait <= 0:
                self._flushed_at = now
                data = getattr(prepared, "payloadHybi", prepared)
                size = len(data)
                for conn in targets:
                    send = conn.fast_send
                    if send is None:
                        conn.deliver(prepared)
                        continue
                    try:
                        sent = send(data)
                    except OSError:
                        sent = 0  # the transport's own write meets the error
                    if sent != size:
                        conn.write_rest(data, sent)
                return
            self._call = self.clock.callLater(wait, self.flush)
        for conn in targets:
            conn.enqueue(prepared)
        self._dirty.append(targets)

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
