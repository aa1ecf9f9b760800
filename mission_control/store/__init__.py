"""
Where events and the latest state live.

Today: L{memory.MemoryStore}, the process's own memory.  The durable SQLite store (and later Redis)
will implement the same methods, so the hub does not change when the store does.
"""

from mission_control.store.memory import MemoryStore

__all__ = ["MemoryStore"]
