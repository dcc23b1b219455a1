"""Engine.holding_bytes against the measured peak of streaming: never below it (the server would
under-reserve its memory budget), and not grossly above it (it would refuse work it can do)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from engine_helpers import base_tensor, spec

from weightgen.server.engine import BaseTensor, Engine, VariableSpec, WorkerPool, kernels
from weightgen.server.engine.engine import STREAM_OVERHEAD_BYTES

MAX_RATIO = 20
N = 8 << 20

CASES = {
    "float32 whole": spec("random_normal", (4096, 2048), stddev=1.0),
    "bfloat16 whole": spec("random_normal", (4096, 2048), "bfloat16", stddev=1.0),
    "complex128 sliced": spec("random_normal", (2048, 2048), "complex128", stddev=1.0, slice=((100, 1900), (7, 2000))),
    "float32 column band": spec("random_uniform", (4096, 2048), slice=((0, 4096), (1000, 1010))),
    "complex64 disk whole": spec("he_uniform", (2048, 2048), "complex64"),
    "complex128 disk sliced": spec("glorot_uniform", (2048, 1024), "complex128", slice=((5, 2000), (3, 900))),
    "sparse sliced": spec("sparse", (4096, 1024), sparsity=0.1, stddev=1.0, slice=((7, 4000), (3, 1000))),
    "sparse whole": spec("sparse", (2048, 1024), "complex64", sparsity=0.5),
    "float32 small": spec("random_normal", (10, 10), stddev=1.0),
    "orthogonal": spec("orthogonal", (1024, 512)),
    "orthogonal complex128 sliced": spec(
        "orthogonal", (256, 64, 8), "complex128", column_axis=1, slice=((3, 250), (0, 64), (1, 7))
    ),
    "delta_orthogonal": spec("delta_orthogonal", (3, 3, 256, 512)),
    "identity": spec("identity", (2048, 1024), "bfloat16"),
    "dirac": spec("dirac", (3, 3, 256, 512)),
    "broadcast widening": spec(
        "broadcast", (2, N), "complex128", base=BaseTensor("uint8", (N,), np.arange(N, dtype=np.uint8).tobytes())
    ),
    "broadcast truncation sliced": spec(
        "broadcast",
        (64, 1000, 100),
        "int16",
        base=base_tensor(np.ones((1000, 100)), "float64"),
        slice=((0, 64), (3, 900), (1, 99)),
    ),
    "broadcast scalar tiled": spec("broadcast", (1 << 22,), "float64", base=base_tensor(2.5, "float32")),
    "zeros": spec("zeros", (1 << 22,), "float64"),
    "rank 14 slice": spec("random_normal", (2,) * 12 + (8, 64), stddev=1.0, slice=((0, 2),) * 12 + ((0, 8), (3, 60))),
    "small orthogonal": spec("orthogonal", (4, 3)),
    "small dirac": spec("dirac", (3, 2, 2)),
    "small broadcast": spec("broadcast", (2, 3), "int8", base=base_tensor([1.5, 2.5, 3.5])),
    "small zeros": spec("zeros", ()),
    "small complex slice": spec("random_normal", (9, 9), "complex64", slice=((1, 8), (2, 3))),
}


def _peak(engine: Engine, variable: VariableSpec) -> int:
    """tracemalloc's peak over preparing and draining `variable`, holding each piece until the next
    arrives (as a consumer does)."""
    tracemalloc.start()
    try:
        piece = None
        for piece in engine.stream(engine.prepare(variable, seed=1)):  # noqa: B007
            pass
        del piece
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_holding_bytes_bounds_the_measured_peak(engine, monkeypatch, case) -> None:
    # tracemalloc sees numpy's allocations, not XLA's: a kernel call's result is an XLA buffer
    # (numpy views it), so the test copies each result into numpy memory to count the pieces in flight.
    run = WorkerPool._run
    monkeypatch.setattr(WorkerPool, "_run", lambda pool, job: np.array(run(pool, job)))
    fresh = Engine(engine.pool)  # an empty whole cache: structured tensors are built, not found
    variable = CASES[case]
    estimate = fresh.holding_bytes(fresh.prepare(variable, seed=1), chunk_bytes=0)
    peak = _peak(fresh, variable)
    assert peak <= estimate, f"{case}: estimate {estimate} under the peak {peak}"
    # A tiny stream's peak is a few KiB of Python objects, under the fixed STREAM_OVERHEAD_BYTES.
    assert estimate < MAX_RATIO * max(peak, STREAM_OVERHEAD_BYTES), f"{case}: estimate {estimate / peak:.2f}x the peak"


def test_holding_bytes_counts_the_encoder_and_is_flat_in_the_size(engine) -> None:
    small = engine.prepare(spec("random_normal", (1 << 22,)), seed=1)
    large = engine.prepare(spec("random_normal", (1 << 30,)), seed=1)
    assert engine.holding_bytes(small, 1 << 20) == engine.holding_bytes(small, 0) + 2 * (1 << 20)
    assert engine.holding_bytes(large, 0) == engine.holding_bytes(small, 0)  # streaming: not the tensor
    assert engine.holding_bytes(large, 0) < 64 * kernels.CALL_ELEMENTS * 4
    empty = engine.prepare(spec("orthogonal", (0, 5)), seed=1)
    assert engine.holding_bytes(empty, 1000) >= 2000
    nothing = engine.prepare(spec("orthogonal", (1000, 1000), slice=((5, 5), (0, 1000))), seed=1)
    assert engine.holding_bytes(nothing, 0) < 1000 * 1000 * 4  # an empty slice builds nothing
    # The extreme shapes of test_extremes.py are estimated without error or huge numbers.
    zero_size = engine.prepare(spec("he_normal", (2**62,) * 17 + (0, 1)), seed=1)
    assert engine.holding_bytes(zero_size, 0) < 1 << 20
    whole = engine.prepare(spec("identity", (1000, 1000), "float64"), seed=1)
    assert engine.holding_bytes(whole, 0) >= 1000 * 1000 * 8  # whole-tensor initializers count their size
