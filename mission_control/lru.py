# -*- test-case-name: tests.test_lru -*-
"""
A mapping bounded by size that forgets the least recently used entry first: the shape of every
cache and per-key table the hub keeps for callers it does not control (one rate bucket per user,
one verified token per token string), so that no caller can make it grow without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class BoundedLRU(Generic[K, V]):
    """
    At most C{max_size} entries; a read (L{get}) or a write (L{put}) makes an entry the most
    recently used, and a write past the bound forgets the least recently used one.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of C{key}, now the most recently used; C{default} when there is none."""
        value = self._items.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._items.move_to_end(key)
        return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> None:
        """Set C{key} to C{value}, the most recently used; forget the oldest past the bound."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        """Whether C{key} is held (without making it more recently used)."""
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
