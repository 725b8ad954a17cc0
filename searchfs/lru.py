"""The one least-recently-used store of values: bounded by total weight (a count, by default, or bytes).

Used by the mount's result cache (fs/cache.py, weighed in bytes) and the text-vector cache
(store/textcache.py, counted). Not thread-safe on its own: its users hold their lock around it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, capacity: int, weigh: Callable[[V], int] = lambda value: 1) -> None:
        self.capacity = capacity
        self.weigh = weigh
        self.total = 0
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, weight: int | None = None) -> None:
        """Keep `value`, dropping the least recently used ones until the total weight fits again."""
        weight = max(1, self.weigh(value) if weight is None else weight)
        old = self._data.pop(key, None)
        if old is not None:
            self.total -= old[1]
        self._data[key] = (value, weight)
        self.total += weight
        while self.total > self.capacity and self._data:
            _, (_, dropped) = self._data.popitem(last=False)
            self.total -= dropped

    def clear(self) -> None:
        self._data.clear()
        self.total = 0

    def __len__(self) -> int:
        return len(self._data)
