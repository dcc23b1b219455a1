"""How a hyperslab becomes kernel calls: whole aligned windows where a slice needs a good part of
one (so shards share generation), just the needed blocks elsewhere, adjacent where runs cross."""

from __future__ import annotations

import numpy as np
import pytest

from weightgen.server.engine import kernels, rng
from weightgen.server.engine.plan import Piece, Plan, copy_runs

B, W = rng.BLOCK_ELEMENTS, kernels.MAX_CALL_BLOCKS


def calls_of(shape, slice_=()):
    plan = Plan.of(shape, slice_)
    total = -(-int(np.prod(shape)) // B)
    return [c for piece in plan.pieces(kernels.CALL_ELEMENTS, kernels.CALL_ELEMENTS) for c in piece.calls(B, W, total)]


def test_a_column_shard_costs_one_call_per_window_shared_by_every_rank():
    shape = (768, 3072)  # 9 windows of W blocks
    windows = [(w * W, W) for w in range(768 * 3072 // (B * W))]
    for r in range(4):
        calls = calls_of(shape, ((0, 768), (r * 768, (r + 1) * 768)))
        assert set(windows) <= set(calls)  # the same calls for every rank: shared generation
        # Besides the windows, only the few blocks of a run crossing into the next window's piece.
        extra = [n for b, n in calls if (b, n) not in windows]
        assert sum(extra) < 0.01 * 768 * 3072 / B, extra


def test_sparse_runs_generate_only_their_blocks():
    calls = calls_of((4, 1 << 20), ((0, 4), (5, 6)))  # one element per row, rows 4 windows apart
    assert calls == [(r * (1 << 20) // B, 1) for r in range(4)]


def test_the_tail_window_stops_at_the_tensor_end():
    elements = 3 * kernels.CALL_ELEMENTS + 5 * B + 17
    calls = calls_of((elements,))
    assert calls == [(0, W), (W, W), (2 * W, W), (3 * W, 6)]


@pytest.mark.parametrize("slice_", [((1, 7), (0, 300000)), ((0, 8), (1000, 250000)), ((3, 5), (262000, 262200))])
def test_calls_that_a_run_crosses_between_are_adjacent(slice_):
    shape = (8, 300000)
    plan = Plan.of(shape, slice_)
    total = -(-int(np.prod(shape)) // B)
    for piece in plan.pieces(kernels.CALL_ELEMENTS, kernels.CALL_ELEMENTS):
        calls = piece.calls(B, W, total)
        covered = np.zeros(total + W, bool)
        for b, n in calls:
            covered[b : b + n] = True
        for start in piece.starts:
            first, last = start // B, (start + piece.length - 1) // B
            assert covered[first : last + 1].all()
        ends = {b + n for b, n in calls}
        for b, _ in calls[1:]:
            crossing = any(s // B < b <= (s + piece.length - 1) // B for s in piece.starts)
            assert not crossing or b in ends


@pytest.mark.parametrize(
    ("base_shape", "shape", "slice_"),
    [
        ((5,), (300_000, 5), ()),  # a base shorter than a piece: tiled
        ((3,), (7, 3), ()),
        ((), (4, 4), ()),  # a scalar
        ((300_001,), (3, 300_001), ()),  # a base longer than a piece: pieces wrap across its end
        ((300_001,), (3, 300_001), ((1, 3), (5, 300_000))),  # long runs, cut at windows
        ((6, 7), (9, 6, 7), ((2, 8), (1, 5), (3, 6))),  # short runs, several per piece
        ((6, 7), (9, 6, 7), ((4, 5), (0, 6), (0, 7))),
        ((2, 3, 4), (2, 3, 4), ((0, 2), (1, 2), (0, 4))),  # equal shapes: no wrap
    ],
)
def test_take_is_the_broadcast_tensor(base_shape, shape, slice_):
    """Piece.take over the plan's pieces, concatenated, is numpy's broadcast tensor sliced."""
    base = np.arange(int(np.prod(base_shape)), dtype=np.int64).reshape(base_shape)
    plan = Plan.of(shape, slice_)
    pieces = [piece.take(base.reshape(-1)) for piece in plan.pieces(kernels.CALL_ELEMENTS, kernels.CALL_ELEMENTS)]
    assert max(p.size for p in pieces) <= kernels.CALL_ELEMENTS
    expected = np.broadcast_to(base, shape)[tuple(slice(a, b) for a, b in slice_)]
    np.testing.assert_array_equal(np.concatenate(pieces), expected.reshape(-1))


@pytest.mark.parametrize(
    "positions",
    [[0], [3, 13, 23, 33], [5, 9, 40], [0, 4, 8], [7, 17]],
    ids=["one", "even", "uneven", "touching", "two"],
)
def test_copy_runs_is_the_runs_whatever_their_spacing(positions):
    values = np.arange(60, dtype=np.float32) * 1.5
    positions = np.asarray(positions, np.int64)
    got = copy_runs(values, positions, 4)
    assert got.shape == (positions.size, 4) and got.flags.c_contiguous and not np.shares_memory(got, values)
    assert np.array_equal(got, np.stack([values[p : p + 4] for p in positions]))


def test_take_copies_evenly_spaced_runs_and_wraps_the_others():
    flat = np.arange(10, dtype=np.int16)
    assert np.array_equal(Piece(np.asarray([1, 4, 7]), 2).take(flat), [1, 2, 4, 5, 7, 8])
    assert np.array_equal(Piece(np.asarray([2, 12, 22]), 3).take(flat), [2, 3, 4] * 3)  # a tiled base
    assert np.array_equal(Piece(np.asarray([8, 18]), 4).take(flat), [8, 9, 0, 1] * 2)  # runs that wrap
