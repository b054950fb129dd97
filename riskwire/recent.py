"""The last N ids something has handed on, to drop later copies early (the worker's duplicate
cache, a polled feed's items seen before). An id is remembered only once what it names was
handed on (``remember``), so work cut short and done again is not taken for a copy of itself."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class RecentIds:
    """Remembers the last ``capacity`` ids handed on, least recently seen forgotten first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def is_new(self, key: str) -> bool:
        """Not handed on lately (one that was is now the most recently seen)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        return True

    def remember(self, keys: Iterable[str]) -> None:
        """Handed on: later copies are dropped."""
        for key in keys:
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
