# -*- test-case-name: tests.test_store -*-
"""
Where events, latest state, client positions and idempotency keys live.

L{IEventStore} is what the hub needs; L{MemoryStore} keeps it in the process's memory (tests,
C{--store memory}), L{SQLiteStore} in a database file that survives a crash (the default).  A
store for several nodes (Redis) is meant to implement the same interface, so the hub does not
change when the store does.
"""

from mission_control.store.interface import (
    IDEMPOTENCY_WINDOW,
    EachItem,
    EachResult,
    Idempotency,
    IdempotencyConflict,
    IEventStore,
    StoreUnavailable,
    Retention,
    SessionTaken,
    StateEntry,
    StoredEvent,
)
from mission_control.store.memory import MemoryStore
from mission_control.store.sqlite import SQLiteStore

__all__ = [
    "IDEMPOTENCY_WINDOW",
    "EachItem",
    "EachResult",
    "IEventStore",
    "Idempotency",
    "IdempotencyConflict",
    "MemoryStore",
    "Retention",
    "SQLiteStore",
    "SessionTaken",
    "StateEntry",
    "StoreUnavailable",
    "StoredEvent",
]
