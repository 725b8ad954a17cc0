"""A cache bounded by the bytes its values hold, whose misses are computed once however many threads ask.

The mount caches folder listings and search results here, keyed by (what was asked, library
generation). Every value has a weight (roughly its bytes in memory); the cache drops the least recently
used values until the total is under `max_bytes`. A value heavier than a quarter of the budget is handed
back but not kept, so one huge answer never flushes everything else.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

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
        self.bytes = 0
        self._lock = threading.Lock()
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._flights: dict[K, _Flight] = {}

    def peek(self, key: K) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            self._data.move_to_end(key)
            return item[0]

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            item = self._data.get(key)
            if item is not None:
                self._data.move_to_end(key)
                return item[0]
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
        if weight * 4 > self.max_bytes:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._data[key] = (value, weight)
        self.bytes += weight
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._data.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)
