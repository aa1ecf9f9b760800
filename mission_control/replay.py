# -*- test-case-name: tests.test_replay -*-
"""
Whether a position in the history can be served: the one rule behind a WebSocket resume
(C{?since=&epoch=}, answered C{resumed {recovered: false, reason}} when it cannot) and a page of
C{GET /api/events} (its C{truncated} and C{ahead} flags).  Pure: it takes the history's bounds.
"""

from __future__ import annotations

#: C{since} is past the newest event: a position from another history (a restored backup).
AHEAD = "ahead"
#: Events after C{since} were already removed by retention: the caller missed them.
TOO_OLD = "too_old"
#: The position belongs to another history (another epoch).
EPOCH = "epoch"


def history_gap(since: int, first_seq: int, last_seq: int) -> str | None:
    """
    What stands between C{since} (the last seq a client has) and the events after it, in a
    history that retains C{first_seq} to C{last_seq} (C{first_seq} is C{last_seq + 1} when it
    retains none): L{AHEAD}, L{TOO_OLD}, or C{None} when every event after C{since} is there.
    """
    if since > last_seq:
        return AHEAD
    if since + 1 < first_seq:
        return TOO_OLD
    return None


def resume_problem(since: int, epoch: str | None, store_epoch: str, first_seq: int,
                   last_seq: int) -> str | None:
    """
    Why a resume from C{since} in C{epoch} cannot be served by a history of C{store_epoch}
    (L{EPOCH}, L{AHEAD}, L{TOO_OLD}, checked in that order), or C{None} when it can.
    """
    if epoch != store_epoch:
        return EPOCH
    return history_gap(since, first_seq, last_seq)
