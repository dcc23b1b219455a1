"""Whole tensors of the structured initializers: built when the first piece is pulled, once for
concurrent streams, cached within a byte budget, sliced from the shared result, at most
`max_structured_builds` builds at once, and waits that a `cancelled` event ends."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from engine_helpers import spec

from weightgen.server.engine import Cancelled, Engine, VariableSpec, structured

SEED = 3
ORTHO = spec("orthogonal", (64, 48))  # 12 KiB of float32
WAIT = 10.0  # seconds a test waits for something that should happen at once


@pytest.fixture
def fresh(engine) -> Engine:
    """An engine with an empty whole cache, sharing the session's pool (so not closed here)."""
    return Engine(engine.pool)


def _drain(engine: Engine, variable: VariableSpec, cancelled: threading.Event | None = None) -> np.ndarray:
    prepared = engine.prepare(variable, seed=SEED)
    return np.concatenate(list(engine.stream(prepared, cancelled))).reshape(prepared.info.out_shape)


def _root(array: np.ndarray) -> np.ndarray:
    while array.base is not None:
        array = array.base
    return array


class GatedBuild:
    """structured.build that waits for `release` (and counts its calls), so tests can hold a build."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: Exception | None = None):
        self.real = structured.build
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0
        self.error = error
        monkeypatch.setattr(structured, "build", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.started.release()
        assert self.release.wait(WAIT)
        if self.error is not None:
            raise self.error
        return self.real(*args, **kwargs)


def _in_thread(pool: ThreadPoolExecutor, engine: Engine, variable: VariableSpec, cancelled=None):
    return pool.submit(_drain, engine, variable, cancelled)


def test_stream_computes_nothing_until_pulled(fresh) -> None:
    stream = fresh.stream(fresh.prepare(ORTHO, seed=SEED))
    assert fresh.whole_cache.misses == 0 and len(fresh.whole_cache) == 0
    first = next(stream)
    assert fresh.whole_cache.misses == 1 and first.size <= 64 * 48
    stream.close()


def test_concurrent_streams_build_once(fresh, monkeypatch) -> None:
    expected = _drain(Engine(fresh.pool), ORTHO)
    gate = GatedBuild(monkeypatch)
    with ThreadPoolExecutor(6) as pool:
        futures = [_in_thread(pool, fresh, ORTHO) for _ in range(6)]
        assert gate.started.acquire(timeout=WAIT)
        time.sleep(0.2)  # the other five find the build in flight
        gate.release.set()
        results = [f.result(WAIT) for f in futures]
    assert gate.calls == 1
    cache = fresh.whole_cache
    assert (cache.misses, cache.joins + cache.hits) == (1, 5)
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_slices_are_cut_from_the_cached_whole(fresh) -> None:
    variable = spec("orthogonal", (40, 30, 6), "complex64", column_axis=1)
    whole = _drain(fresh, variable)
    assert fresh.whole_cache.misses == 1
    for slice_ in (((3, 17), (0, 30), (0, 6)), ((0, 40), (5, 6), (2, 5)), ((39, 40), (29, 30), (5, 6))):
        sliced = VariableSpec(variable.name, variable.shape, variable.dtype, variable.initializer, slice=slice_)
        np.testing.assert_array_equal(_drain(fresh, sliced), whole[tuple(slice(a, b) for a, b in slice_)])
    assert (fresh.whole_cache.misses, fresh.whole_cache.hits) == (1, 3)
    # Equal by construction: another name or seed is another tensor; identity is one for all.
    _drain(fresh, spec("orthogonal", (40, 30, 6), "complex64", name="other", column_axis=1))
    assert fresh.whole_cache.misses == 2
    _drain(fresh, spec("identity", (8, 8), name="a"))
    _drain(fresh, spec("identity", (8, 8), name="b"))
    assert fresh.whole_cache.misses == 3
    # Parameters by their bits: -0.0 and 0.0 scale give different entries (the signs of zeros differ).
    _drain(fresh, spec("orthogonal", (64, 48), scale=0.0))
    _drain(fresh, spec("orthogonal", (64, 48), scale=-0.0))
    assert fresh.whole_cache.misses == 5


def test_capacity_evictions_and_results_larger_than_it(engine) -> None:
    nbytes = 64 * 48 * 4
    small = Engine(engine.pool, whole_cache_bytes=nbytes + nbytes // 2)  # room for one
    _drain(small, ORTHO)
    assert small.whole_cache.bytes == nbytes and len(small.whole_cache) == 1
    _drain(small, spec("orthogonal", (64, 48), name="other"))
    assert (small.whole_cache.evictions, small.whole_cache.bytes) == (1, nbytes)
    _drain(small, spec("orthogonal", (96, 64), name="big"))  # 24 KiB: larger than the cache
    assert (small.whole_cache.evictions, small.whole_cache.bytes, small.whole_cache.misses) == (1, nbytes, 3)
    _drain(small, spec("orthogonal", (96, 64), name="big"))  # so it is built again
    assert small.whole_cache.misses == 4


def test_closing_releases_an_uncached_whole(engine) -> None:
    uncached = Engine(engine.pool, whole_cache_bytes=0)
    stream = uncached.stream(uncached.prepare(spec("orthogonal", (600, 600)), seed=SEED))
    piece = next(stream)
    whole = weakref.ref(_root(piece))
    del piece
    stream.close()
    gc.collect()
    assert whole() is None


def test_at_most_max_builds_at_once_and_cancelled_waits(engine, monkeypatch) -> None:
    one = Engine(engine.pool, max_structured_builds=1)
    gate = GatedBuild(monkeypatch)
    with ThreadPoolExecutor(4) as pool:
        first = _in_thread(pool, one, ORTHO)
        assert gate.started.acquire(timeout=WAIT)
        # Another tensor waits for the slot: its build has not started; cancelling ends the wait.
        cancel_other = threading.Event()
        other = _in_thread(pool, one, spec("orthogonal", (64, 48), name="other"), cancel_other)
        # A stream of the same tensor joins the build in flight (no slot needed); it can leave too.
        cancel_joiner = threading.Event()
        joiner = _in_thread(pool, one, ORTHO, cancel_joiner)
        time.sleep(0.3)
        assert gate.calls == 1 and one.whole_cache.building == 1
        assert not other.done() and not joiner.done()
        t0 = time.monotonic()
        cancel_other.set()
        cancel_joiner.set()
        with pytest.raises(Cancelled):
            other.result(WAIT)
        with pytest.raises(Cancelled):
            joiner.result(WAIT)
        assert time.monotonic() - t0 < 2.0
        assert not first.done()
        gate.release.set()
        first.result(WAIT)
    assert (gate.calls, one.whole_cache.building, one.whole_cache.misses) == (1, 0, 1)
    # The slot is free again, and a cancelled event set before the pull ends it at once.
    _drain(one, spec("orthogonal", (64, 48), name="other"))
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(Cancelled):
        _drain(one, spec("orthogonal", (64, 48), name="third"), cancelled)


def test_a_cancelled_builder_hands_the_build_to_its_waiters(engine, monkeypatch) -> None:
    one = Engine(engine.pool, max_structured_builds=1)
    expected = _drain(Engine(engine.pool), spec("orthogonal", (64, 48), name="y"))
    gate = GatedBuild(monkeypatch)
    with ThreadPoolExecutor(3) as pool:
        holder = _in_thread(pool, one, ORTHO)  # holds the only slot
        assert gate.started.acquire(timeout=WAIT)
        cancel_builder = threading.Event()
        builder = _in_thread(pool, one, spec("orthogonal", (64, 48), name="y"), cancel_builder)
        time.sleep(0.2)
        waiter = _in_thread(pool, one, spec("orthogonal", (64, 48), name="y"))  # joins the builder
        time.sleep(0.2)
        cancel_builder.set()
        with pytest.raises(Cancelled):
            builder.result(WAIT)
        gate.release.set()
        holder.result(WAIT)
        np.testing.assert_array_equal(waiter.result(WAIT), expected)
    assert gate.calls == 2


def test_a_build_error_reaches_every_waiter(fresh, monkeypatch) -> None:
    gate = GatedBuild(monkeypatch, error=RuntimeError("LAPACK failed"))
    with ThreadPoolExecutor(3) as pool:
        futures = [_in_thread(pool, fresh, ORTHO) for _ in range(3)]
        assert gate.started.acquire(timeout=WAIT)
        time.sleep(0.2)
        gate.release.set()
        for future in futures:
            with pytest.raises(RuntimeError, match="LAPACK"):
                future.result(WAIT)
    assert gate.calls == 1 and fresh.whole_cache.building == 0 and len(fresh.whole_cache) == 0
