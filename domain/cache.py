"""A bounded in-process cache, for facts that change rarely or never (a customer's config, a session's owner)."""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A bounded map whose entries expire `ttl` seconds after they were set. At `max_entries` the oldest entry is
    evicted: a miss costs the caller one lookup where it keeps the fact (MongoDB, Petya), nothing else."""

    def __init__(self, ttl: float, max_entries: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        return value

    def set(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self.clock() + self.ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
