"""The worker pool and streaming: tensors larger than one kernel call, and streams closed early."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from engine_helpers import digest, spec, streamed

from weightgen.server.engine import Engine, VariableSpec, WorkerPool, kernels

SEED = 31337
N = 3 * kernels.CALL_ELEMENTS + 17


def _slice(variable: VariableSpec, *ranges: tuple[int, int]) -> VariableSpec:
    return VariableSpec(variable.name, variable.shape, variable.dtype, variable.initializer, variable.seed, ranges)


@pytest.fixture(scope="module")
def big(engine) -> tuple[VariableSpec, np.ndarray]:
    variable = spec("random_normal", (N,), name="big", stddev=1.0)
    return variable, engine.generate(variable, seed=SEED)


def test_larger_than_one_call_equals_its_slices(engine, big) -> None:
    variable, whole = big
    c = kernels.CALL_ELEMENTS
    cuts = [0, 1000, c - 1, c + 5, 2 * c, 2 * c + 256 * 3 + 1, 3 * c, N]
    parts = [engine.generate(_slice(variable, (a, b)), seed=SEED) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # The stream's pieces are bounded by one call and concatenate to the tensor.
    pieces = list(engine.stream(engine.prepare(variable, seed=SEED)))
    assert len(pieces) >= 4 and max(p.size for p in pieces) <= c
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    # Statistics of the whole tensor (6 standard errors; n = N).
    assert abs(float(whole.astype(np.float64).mean())) <= 6 / np.sqrt(N)
    assert abs(float(whole.astype(np.float64).std()) - 1) <= 6 / np.sqrt(2 * N)


def test_two_dimensional_slices_across_calls(engine) -> None:
    """A [700, 1200] tensor (3.2 calls): a column band is 700 short runs gathered across calls."""
    variable = spec("random_uniform", (700, 1200), name="wide", min=-1.0, max=1.0)
    whole = engine.generate(variable, seed=SEED)
    band = engine.generate(_slice(variable, (0, 700), (590, 610)), seed=SEED)
    np.testing.assert_array_equal(band, whole[:, 590:610])
    rows = engine.generate(_slice(variable, (200, 500), (0, 1200)), seed=SEED)
    np.testing.assert_array_equal(rows, whole[200:500])
    complex_variable = spec("random_uniform", (700, 1200), "complex64", name="wide", min=-1.0, max=1.0)
    complex_whole = engine.generate(complex_variable, seed=SEED)
    # The real parts are the float32 stream (counters from base 0 in every block), in every call.
    np.testing.assert_array_equal(complex_whole.real, whole)
    complex_part = engine.generate(_slice(complex_variable, (1, 699), (3, 1100)), seed=SEED)
    np.testing.assert_array_equal(complex_part, complex_whole[1:699, 3:1100])


@pytest.mark.parametrize(("threads", "lookahead"), [(1, 1), (3, 2), (2, 16)])
def test_pool_width_and_lookahead_do_not_change_values(engine, big, threads, lookahead) -> None:
    variable, whole = big
    pool = WorkerPool(engine.pool.devices, threads_per_device=threads)
    other = Engine(pool, lookahead=lookahead)
    try:
        assert digest(streamed(other, variable, SEED)) == digest(whole)
    finally:
        other.close()


def _close_within(stream, seconds: float) -> bool:
    """Close `stream` in another thread; True when that returned within `seconds`."""
    done = threading.Event()

    def close() -> None:
        stream.close()
        done.set()

    threading.Thread(target=close, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.parametrize("lookahead", [1, 4, None])
def test_closing_a_stream_early_does_not_hang(engine, big, lookahead) -> None:
    variable, whole = big
    other = Engine(engine.pool, lookahead=lookahead)  # shares the pool, so it is not closed here
    stream = other.stream(other.prepare(variable, seed=SEED))
    first = next(stream)
    np.testing.assert_array_equal(first, whole[: first.size])
    assert _close_within(stream, 30)
    assert next(stream, None) is None  # a closed generator is exhausted
    # The pool is still usable, and nothing of the closed stream leaks into the next one.
    assert digest(streamed(engine, variable, SEED)) == digest(whole)


def test_abandoning_streams_mid_way(engine, big) -> None:
    """Many streams left after one piece (closed, or dropped unconsumed) leave the pool working."""
    variable, whole = big
    for _ in range(5):
        stream = engine.stream(engine.prepare(variable, seed=SEED))
        next(stream)
        assert _close_within(stream, 30)
    never_started = engine.stream(engine.prepare(variable, seed=SEED))
    assert _close_within(never_started, 30)
    assert digest(engine.generate(variable, seed=SEED)) == digest(whole)
