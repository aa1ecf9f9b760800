# -*- test-case-name: tests.test_store_rules -*-
"""
The rules every store follows, written once: which payload field keys the latest state, which
events a filtered read matches and which seqs it looks at, when an idempotency key has expired,
which retention limits are refused, and how a new history is named.

Pure functions of their arguments; L{mission_control.store.memory} and
L{mission_control.store.sqlite} both apply them, so the two stores cannot drift apart.
"""

from __future__ import annotations

import secrets
from typing import Optional

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY
from mission_control.store.interface import IDEMPOTENCY_WINDOW, Retention

#: The payload field that names the agent or session whose latest state an event updates.
STATE_KEY_FIELDS = {AGENT_STATUS: "agentId", SESSION_ACTIVITY: "sessionId"}


def state_key(event_type: str, payload: dict) -> str:
    """
    The agent or session id whose latest state C{payload} becomes.

    Every store checks this before it assigns a seq, so a bad event never consumes one.

    @raise ValueError: for a type that is not stored, or a payload without its id.
    """
    field = STATE_KEY_FIELDS.get(event_type)
    if field is None:
        raise ValueError(f"not a stored event type: {event_type!r}")
    key = payload.get(field)
    if not isinstance(key, str) or not key:
        raise ValueError(f"a {event_type} payload needs a {field} string")
    return key


def is_match(event_type: str, payload: dict, wanted: str, subject: Optional[str]) -> bool:
    """
    Whether an event is of type C{wanted} and, with C{subject}, of that agent or session (the
    payload field that keys its latest state): the filter of L{IEventStore.events_matching}.
    """
    if event_type != wanted:
        return False
    return subject is None or payload.get(STATE_KEY_FIELDS.get(wanted, "")) == subject


def scan_window(seq: int, scan: int, first_seq: int, last_seq: int) -> tuple[int, int]:
    """
    The seqs L{IEventStore.events_matching} looks at: those in C{(start, end]}, the C{scan} seqs
    after C{seq}, or after the retained history's start when C{seq} is older; empty
    (C{start >= end}) when nothing is after C{seq}.  Retained seqs have no gaps, so this is also
    at most C{scan} events.
    """
    start = max(seq, first_seq - 1)
    return start, min(start + max(scan, 0), last_seq)


def new_epoch() -> str:
    """A fresh random name for a new history: 16 hex digits."""
    return secrets.token_hex(8)


def check_retention(retention: Retention) -> None:
    """
    Refuse limits no store can honour.

    @raise ValueError: for a negative limit.
    """
    for name in ("max_events", "max_age", "max_agents", "max_sessions"):
        if getattr(retention, name) < 0:
            raise ValueError(f"retention {name} must not be negative")


def is_live(created: float, now: float) -> bool:
    """Whether an idempotency key recorded at C{created} still counts at C{now}."""
    return now - created < IDEMPOTENCY_WINDOW
