"""A bounded LRU cache of generated block ranges, for herds of identical requests.

A tensor is a pure function of its spec, so the values of one kernel call (a `Job`: key,
distribution, block range) can be handed to every stream that asks for the same call. Together
with the pool's single-flight (identical jobs in flight share one future), N trainers fetching the
same weights at start-up cost one generation. Entries are read-only arrays; the size bound counts
their bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


class BlockCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        value.flags.writeable = False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._entries[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
