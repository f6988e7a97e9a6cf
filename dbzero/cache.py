"""A byte-bounded LRU cache of decoded collection chunks, shared by all prefixes.

Collections keep only the chunks they touch decoded, and only here, so iterating a
collection far larger than memory keeps the process within the configured budget.
Sizes are estimates supplied by the caller (encoded length is a good proxy).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Hashable, Optional

DEFAULT_CAPACITY = 2 << 30


class ChunkCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: "OrderedDict[Hashable, tuple]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Optional[Any]:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= old[1]
        self._items[key] = (value, size)
        self.size += size
        if self.size > self.capacity:
            self._evict()

    def discard(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= old[1]

    def discard_owner(self, owner: Hashable) -> None:
        """Drop every entry whose key is a tuple starting with ``owner``."""
        for key in [k for k in self._items if isinstance(k, tuple) and k[0] == owner]:
            self.discard(key)

    def _evict(self) -> None:
        items = self._items
        while self.size > self.capacity and items:
            _key, (_value, size) = items.popitem(last=False)
            self.size -= size

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._evict()

    def clear(self) -> None:
        self._items.clear()
        self.size = 0

    def stats(self) -> Dict[str, int]:
        return {"capacity": self.capacity, "size": self.size, "entries": len(self._items),
                "hits": self.hits, "misses": self.misses}


chunk_cache = ChunkCache()
