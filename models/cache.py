"""A bounded in-process cache, for facts that change rarely or never (a customer's config, a session's owner)."""
import time
from collections import OrderedDict


class TTLCache:
    """A bounded map whose entries expire `ttl` seconds after they were set (oldest evicted first)."""

    def __init__(self, ttl, max_entries=10000, clock=time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries = OrderedDict()

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        return value

    def set(self, key, value):
        if self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self.clock() + self.ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
