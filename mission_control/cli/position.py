# -*- test-case-name: tests.test_cli_position -*-
"""
Where C{watch} is in the hub's history (L{StreamPosition}): the C{seq} and C{epoch} that its next
connection resumes from and that a named watcher acknowledges.  It moves only on frames that
prove the watcher has everything up to a seq, so that no reconnect can skip an event.  Pure: it
reads frames and holds two values; the watcher asks it where to resume.
"""

from __future__ import annotations

from typing import Any, Mapping

from mission_control.cli import frames


class StreamPosition:
    """
    How far a watcher has followed the hub's history: C{seq}, the last event it has been given,
    and C{epoch}, the history that seq belongs to.  They are the C{since} and C{epoch} of its next
    connection, and what a named watcher acknowledges.

    The two move together, and only on frames that show the watcher has everything up to the
    seq: an event, a C{snapshot}, a C{heartbeat} (the hub sends those only to connections that
    are caught up), a C{resumed}.  The C{welcome} moves nothing: its C{lastSeq} is the hub's, which
    a resuming connection has yet to be sent, and its epoch may be a new one that the C{resumed}
    frame after it is about to call lost.  Taking either from it would skip events, or miss the
    news that history was lost, whenever the connection dropped right after it.

    @ivar current: whether it moved on the current connection, so that C{seq} is one the hub at
        the other end knows (and an ack of it is meaningful there).
    """

    def __init__(self) -> None:
        self.seq: int | None = None
        self.epoch: str | None = None
        self.current = False
        self._connection_epoch: str | None = None

    def connection_started(self) -> None:
        """A new connection: nothing it says is known yet."""
        self._connection_epoch = None
        self.current = False

    def observe(self, frame: Mapping[str, Any]) -> bool:
        """Move to where C{frame} shows the watcher is, if it shows that; return whether it did."""
        kind, payload = frame.get("type"), frames.payload(frame)
        if kind == "welcome":
            announced = payload.get("epoch")
            self._connection_epoch = announced if frames.is_epoch(announced) else None
            return False
        epoch: object = self._connection_epoch
        if kind == "resumed":
            epoch = payload.get("epoch", epoch)
            recovered = payload.get("recovered") is True
            seq = payload.get("to") if recovered else payload.get("lastSeq")
        elif kind in ("snapshot", "heartbeat"):
            seq = payload.get("lastSeq")
        else:
            seq = frame.get("seq")
        if not (frames.is_seq(seq) and frames.is_epoch(epoch)):
            return False
        self.seq, self.epoch, self.current = seq, epoch, True
        return True
