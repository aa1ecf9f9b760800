# -*- test-case-name: tests.test_hub_expiry -*-
"""
Many deadlines on one clock, with one timer: the token expiries of every connection.

Each connection has a deadline (its token's C{auth:expiring} warning, then its close); a
C{DelayedCall} for each would keep two reactor timers per idle connection, and each cancelled one
(a fresh token, a closed connection) in the reactor's queue for the token's whole lifetime.
L{Deadlines} keeps them in a heap of C{[when, seq, function]} entries and asks its clock for one
call, at the earliest.  Deadlines due at the same time run in the order they were set, as the
reactor's calls did; a cancelled one stays in the heap, inert, until it comes up or cancelled
entries are half the heap, when the heap is rebuilt without them.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: A deadline as L{Deadlines.at} returns it: C{[when, seq, function]}; the function is C{None}
#: once it is cancelled or has run.
Deadline = list

#: Below this many cancelled entries the heap is not rebuilt, however small it is.
_MIN_COMPACTION = 64


class Deadlines:
    """Functions to call at given times of C{clock}, with at most one C{DelayedCall} pending."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: list[Deadline] = []
        self._seq = count()
        self._cancelled = 0
        self._call: IDelayedCall | None = None
        self._armed_at: float | None = None

    def __len__(self) -> int:
        """The deadlines pending (cancelled ones not counted)."""
        return len(self._heap) - self._cancelled

    def at(self, when: float, function: Callable[[], Any]) -> Deadline:
        """Call C{function} once the clock reaches C{when} (on its next turn if already past)."""
        entry = [when, next(self._seq), function]
        heapq.heappush(self._heap, entry)
        if self._armed_at is None or when < self._armed_at:
            self._arm()
        return entry

    def cancel(self, entry: Deadline) -> None:
        """Do not call C{entry}'s function; nothing happens if it was cancelled or has run."""
        if entry[2] is None:
            return
        entry[2] = None
        if entry[1] < 0:
            return  # taken out of the heap to run this turn: not in it any more
        self._cancelled += 1
        heap = self._heap
        if heap[0] is entry:
            self._arm()
        elif self._cancelled > _MIN_COMPACTION and self._cancelled * 2 > len(heap):
            self._heap = [e for e in heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self) -> None:
        """Drop cancelled entries at the top; one call pending for the earliest entry, if any."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        call = self._call
        if not heap:
            if call is not None:
                call.cancel()
            self._call = self._armed_at = None
            return
        when = heap[0][0]
        if when == self._armed_at:
            return
        delay = max(0.0, when - self.clock.seconds())
        if call is not None:
            call.reset(delay)
        else:
            self._call = self.clock.callLater(delay, self._run)
        self._armed_at = when

    def _run(self) -> None:
        """Call the functions due (those set while they run wait for the next call)."""
        self._call = self._armed_at = None
        now = self.clock.seconds()
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if entry[2] is None:
                self._cancelled -= 1
            else:
                entry[1] = -1
                due.append(entry)
        for entry in due:
            function = entry[2]
            if function is None:
                continue  # cancelled by one that ran before it
            entry[2] = None
            try:
                function()
            except Exception:
                self.log.failure("a deadline's function failed")
        self._arm()

    def stop(self) -> None:
        """Cancel every deadline and the pending call."""
        for entry in self._heap:
            entry[2] = None
        self._heap = []
        self._cancelled = 0
        self._arm()
