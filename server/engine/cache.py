"""Bounded caches for herds of identical requests: generated block ranges (`BlockCache`) and
whole tensors of the structured initializers with single-flight and a limit on concurrent builds
(`WholeCache`).

A tensor is a pure function of its spec, so the values of one kernel call (a `Job`: key,
distribution, block range) can be handed to every stream that asks for the same call. Together
with the pool's single-flight (identical jobs in flight share one future), N trainers fetching the
same weights at start-up cost one generation. Entries are read-only arrays; the size bound counts
their bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

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


class Cancelled(Exception):  # noqa: N818 (the name says what happened, as concurrent.futures.CancelledError)
    """A stream stopped waiting because its `cancelled` event was set (Engine.stream)."""


POLL_SECONDS = 0.05
"""How often a wait looks at its `cancelled` event: the longest a cancelled stream keeps waiting."""


def wait_for(acquire: Callable[[float | None], bool], cancelled: threading.Event | None) -> None:
    """Call ``acquire(timeout)`` (a semaphore's acquire, an event's wait) until it returns True.
    With a `cancelled` event, every POLL_SECONDS: raise Cancelled once it is set (set before the
    wait: Cancelled at once, even when `acquire` would succeed)."""
    if cancelled is None:
        acquire(None)
        return
    while not cancelled.is_set():
        if acquire(POLL_SECONDS):
            return
    raise Cancelled


class _Flight:
    """A build in progress: its waiters wait for `done`, then read `value`, or `error`; neither
    set means the builder gave up before building (the waiters try again)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: np.ndarray | None = None
        self.error: Exception | None = None


class WholeCache:
    """Whole tensors (the structured initializers'), built once for every stream that wants them.

    `get(key, build)` returns the cached tensor (a hit); else joins the build of `key` in flight
    (single-flight: N concurrent streams build once; joining takes no build slot); else builds it,
    once one of `max_builds` slots is free, so at most `max_builds` builds (each holding a whole
    tensor and its float64 temporaries) run at once. A result of at most `max_bytes` enters an
    LRU of `max_bytes` in all; a larger one lives only as long as the streams holding it.

    Counters, for metrics: `hits`, `joins` (waits for another stream's build), `misses` (builds
    started), `evictions`, `bytes` (held by the cache now) and `building` (builds running now)."""

    def __init__(self, max_bytes: int, max_builds: int):
        if max_builds < 1:
            raise ValueError(f"max_builds must be >= 1, got {max_builds}")
        self.max_builds = max_builds
        self._done = BlockCache(max_bytes)  # the finished tensors: the same bounded LRU as blocks
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_builds)
        self.hits = 0
        self.joins = 0
        self.misses = 0
        self.building = 0

    def get(
        self, key: Hashable, build: Callable[[], np.ndarray], cancelled: threading.Event | None = None
    ) -> np.ndarray:
        """The tensor of `key` (read-only), from the cache, another stream's build or `build()`.
        Waits (for a slot, for another's build) raise Cancelled once `cancelled` is set; an error
        of `build` reaches every stream waiting for that build."""
        while True:
            with self._lock:
                value = self._done.get(key)
                if value is not None:
                    self.hits += 1
                    return value
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    building = True
                else:
                    self.joins += 1
                    building = False
            if building:
                return self._build(key, flight, build, cancelled)
            wait_for(flight.done.wait, cancelled)
            if flight.error is not None:
                raise flight.error
            if flight.value is not None:
                return flight.value
            # The builder gave up before building: look again (one of the waiters builds).

    def _build(
        self, key: Hashable, flight: _Flight, build: Callable[[], np.ndarray], cancelled: threading.Event | None
    ) -> np.ndarray:
        try:
            wait_for(lambda timeout: self._slots.acquire(timeout=timeout), cancelled)
        except BaseException:
            self._land(key, flight)
            raise
        with self._lock:
            self.misses += 1
            self.building += 1
        try:
            value = build()
            value.flags.writeable = False
            flight.value = value
            return value
        except Cancelled:  # the builder's own cancellation: the waiters build it themselves
            raise
        except Exception as error:  # a deterministic failure: the waiters would fail the same way
            flight.error = error
            raise
        finally:
            self._slots.release()
            with self._lock:
                self.building -= 1
            self._land(key, flight)

    def _land(self, key: Hashable, flight: _Flight) -> None:
        """End `flight`: its value enters the cache (if it fits) in the same step that removes the
        flight, so a stream finds one or the other; then its waiters wake."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if flight.value is not None:
                self._done.put(key, flight.value)  # a tensor larger than the cache is not kept
        flight.done.set()

    @property
    def max_bytes(self) -> int:
        return self._done.max_bytes

    @property
    def bytes(self) -> int:
        return self._done.bytes

    @property
    def evictions(self) -> int:
        return self._done.evictions

    def __len__(self) -> int:
        return len(self._done)
