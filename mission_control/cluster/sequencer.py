# -*- test-case-name: tests.test_cluster_sequencer -*-
"""
Putting a shared history's events in seq order, and saying which are missing.

A node of a cluster learns of appended events three ways: the answers to its own appends (on
its command connection), the notifications of every node's appends (pub/sub, at most once), and
the stream it reads back to fill a gap.  They arrive in any order relative to each other: the
answer to this node's seq 12 can come before the notification of another node's seq 11, and a
notification can be lost when the subscription drops.  The L{Sequencer} takes them all, hands
them on strictly in seq order, each once, and says what is missing so the caller can read it
from the stream.  Pure: no clock, no network.
"""

from __future__ import annotations

from typing import Generic, Optional, TypeVar

#: Whatever the caller keeps per seq (an event with its append time, say).
T = TypeVar("T")


class Sequencer(Generic[T]):
    """
    Seqs in, the same items out in seq order without gaps or repeats.

    @ivar last_seq: the newest seq handed on; everything up to it has been.
    @ivar known_seq: the newest seq known to exist (offered, or L{note}d), at least C{last_seq}.
    """

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.known_seq = last_seq
        self._pending: dict[int, T] = {}

    def __len__(self) -> int:
        """How many items wait for an earlier seq."""
        return len(self._pending)

    def offer(self, seq: int, item: T) -> list[T]:
        """
        Take the item of C{seq}; return every item that is now next in line, in seq order
        (none when C{seq} waits for an earlier one, or was handed on or offered before).
        """
        if seq <= self.last_seq or seq in self._pending:
            return []
        self.known_seq = max(self.known_seq, seq)
        if seq != self.last_seq + 1:
            self._pending[seq] = item
            return []
        ready = [item]
        self.last_seq = seq
        pending = self._pending
        while pending:
            following = pending.pop(self.last_seq + 1, None)
            if following is None:
                break
            ready.append(following)
            self.last_seq += 1
        return ready

    def note(self, seq: int) -> None:
        """Seq C{seq} exists (a notification said so, or the store's last seq is that)."""
        self.known_seq = max(self.known_seq, seq)

    def missing(self) -> Optional[tuple[int, int]]:
        """
        The first run of seqs known to exist but not offered, C{(first, last)}, or C{None}: what
        to read from the stream next.
        """
        if self.known_seq <= self.last_seq:
            return None
        first = self.last_seq + 1
        later = [seq for seq in self._pending if seq > first]
        return first, (min(later) - 1 if later else self.known_seq)

    def restart(self, last_seq: int) -> None:
        """Start again after C{last_seq} (a new history): whatever waited is dropped."""
        self.last_seq = self.known_seq = last_seq
        self._pending.clear()
