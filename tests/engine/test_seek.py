"""Engine.seek and stream(skip=...): a stream may start at any piece, and what it delivers from
there is exactly the tail of the full stream (what a resumed stream, or one that took chunks
ready-made from the chunk board, relies on to skip computing the bytes before it)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import CHANNELS_FIRST, base_tensor, spec

from weightgen.server.engine import kernels

C = kernels.CALL_ELEMENTS

CASES = [
    spec("random_normal", (3 * C + 100,), stddev=2.0),
    spec("random_uniform", (1000, 1100), slice=((10, 990), (7, 1001))),
    spec("truncated_normal", (900, 1300), "bfloat16", slice=((0, 900), (650, 1300))),
    spec("constant", (2 * C + 5,), "int8", value=3),
    spec("sparse", (1200, 700), sparsity=0.3, stddev=0.5),
    spec("glorot_uniform", (600, 900), "complex64"),
    spec("orthogonal", (700, 800), slice=((100, 700), (0, 800))),
    spec("broadcast", (1000, 700), "float16", base=base_tensor(np.arange(700.0))),
    spec("he_normal", (64, 64, 9, 9), fan_axes=CHANNELS_FIRST),
]


@pytest.mark.parametrize("variable", CASES, ids=[f"{v.initializer.kind}-{v.dtype}" for v in CASES])
def test_a_stream_started_at_any_piece_delivers_the_tail(engine, variable):
    prepared = engine.prepare(variable, seed=11)
    full = np.concatenate(list(engine.stream(prepared)))
    size = full.size
    targets = sorted({1, C + 1, size // 2, size - 1})
    for element in [t for t in targets if 0 <= t < size]:
        skip, first = engine.seek(prepared, element)
        assert first <= element, (element, skip, first)
        tail = np.concatenate(list(engine.stream(prepared, skip=skip)))
        assert first + tail.size == size, (element, skip, first, tail.size)
        assert np.array_equal(tail.view(np.uint8), full[first:].view(np.uint8)), (element, skip)
        # The piece that holds `element` starts at `first`: no whole piece before it is computed.
        if skip:
            previous_skip, previous_first = engine.seek(prepared, first - 1)
            assert previous_skip == skip - 1 and previous_first < first


def test_seeking_a_whole_tensor_is_arithmetic(engine):
    prepared = engine.prepare(spec("random_normal", (5 * C,)), seed=1)
    assert engine.seek(prepared, 0) == (0, 0)
    assert engine.seek(prepared, 3 * C + 7) == (3, 3 * C)
    assert engine.seek(prepared, 5 * C - 1) == (4, 4 * C)
