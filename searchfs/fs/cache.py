"""A cache bounded by the bytes its values hold, whose misses are computed once however many threads ask.

The mount caches folder listings and search results here, keyed by (what was asked, library
generation). Every value has a weight (roughly its bytes in memory); the cache drops the least recently
used values until the total is under `max_bytes`. A value heavier than a quarter of the budget is handed
back but not kept, so one huge answer never flushes everything else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from ..lru import LRU

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None


class SingleFlightCache(Generic[K, V]):
    """LRU by total weight; concurrent misses of one key run `compute` once and share its value or error
    (errors are never cached)."""

    def __init__(self, max_bytes: int, weigh: Callable[[V], int] = lambda value: 1) -> None:
        self.max_bytes = max_bytes
        self.weigh = weigh
        self._lock = threading.Lock()
        self._data: LRU[K, V] = LRU(max_bytes)
        self._flights: dict[K, _Flight] = {}

    @property
    def bytes(self) -> int:
        return self._data.total

    def peek(self, key: K) -> V | None:
        with self._lock:
            return self._data.get(key)

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            found = self._data.get(key)
            if found is not None:
                return found
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            value = compute()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                del self._flights[key]
            flight.done.set()
            raise
        flight.value = value
        with self._lock:
            self._store(key, value)
            del self._flights[key]
        flight.done.set()
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._store(key, value)

    def _store(self, key: K, value: V) -> None:
        weight = max(1, self.weigh(value))
        if weight * 4 <= self.max_bytes:  # one huge answer must not flush everything else
            self._data.put(key, value, weight)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
