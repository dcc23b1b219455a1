"""PyTorch's sparse_: exactly ceil(sparsity * rows) zeros per column at random rows, N(0, std) values
elsewhere, computed element by element (so any slice is the whole tensor's hyperslab), and compared
with torch.nn.init.sparse_ itself.

Statistical bounds are 6 standard errors for the sample size n (se(mean) = std / sqrt(n), se(std)
= std / sqrt(2 n) for a normal); Kolmogorov-Smirnov at alpha = 1e-8: D <= sqrt(-ln(alpha / 2) / 2)
* sqrt((n + m) / (n m)) (conservative for discrete samples)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from engine_helpers import digest, ks_bound, ks_statistic, spec

from weightgen.server.engine import SpecError, VariableSpec, rng
from weightgen.server.engine.sparse import ROUNDS

SEED = 31337


@pytest.mark.parametrize(
    ("shape", "sparsity", "zeros"),
    [
        ((100, 64), 0.1, 10),
        ((100, 7), 0.07, 8),  # 0.07 * 100 = 7.000000000000001 in double: ceil gives 8, as in PyTorch
        ((10, 7), 0.3, 3),
        ((7, 5), 0.1, 1),  # ceil(0.7)
        ((1, 9), 0.5, 1),
        ((33, 3), 0.0, 0),
        ((33, 3), 1.0, 33),
        ((1000, 20), 0.9, 900),
        ((2, 3000), 0.5, 1),
    ],
)
def test_exact_zeros_per_column(engine, shape, sparsity, zeros) -> None:
    x = engine.generate(spec("sparse", shape, sparsity=sparsity, stddev=1.0), seed=SEED)
    assert x.shape == shape and x.dtype == np.float32
    np.testing.assert_array_equal((x == 0).sum(axis=0), np.full(shape[1], zeros))
    assert zeros == math.ceil(sparsity * shape[0])  # PyTorch's count


def test_torch_counts_agree(engine) -> None:
    """torch.nn.init.sparse_ itself makes the same number of zeros per column."""
    torch = pytest.importorskip("torch")
    for (rows, cols), sparsity in itertools.product(((10, 7), (7, 5), (64, 3), (100, 11)), (0.07, 0.1, 0.3, 0.5, 0.77)):
        reference = torch.empty(rows, cols)
        torch.nn.init.sparse_(reference, sparsity, std=1.0)
        ours = engine.generate(spec("sparse", (rows, cols), sparsity=sparsity, stddev=1.0), seed=SEED)
        np.testing.assert_array_equal((ours == 0).sum(axis=0), (reference.numpy() == 0).sum(axis=0))


def test_values_and_positions_match_torch(engine) -> None:
    """The non-zero values are N(0, std) and the zero rows uniformly spread, in ours as in torch's
    own sparse_: moments within 6 standard errors of the formula, and each sample against torch's."""
    torch = pytest.importorskip("torch")
    rows, cols, sparsity, std = 400, 500, 0.2, 0.05
    zeros = math.ceil(sparsity * rows)
    x = engine.generate(spec("sparse", (rows, cols), sparsity=sparsity, stddev=std), seed=SEED)
    torch.manual_seed(SEED)
    reference = torch.empty(rows, cols)
    torch.nn.init.sparse_(reference, sparsity, std=std)
    t = reference.numpy()
    for sample in (x, t):
        values = sample[sample != 0].astype(np.float64)
        n = values.size
        assert n == rows * cols - zeros * cols
        assert abs(values.mean()) <= 6 * std / math.sqrt(n)
        assert abs(values.std() - std) <= 6 * std / math.sqrt(2 * n)
        # Which rows are zero: every row is zero in a column with probability p = zeros / rows,
        # columns independent, so a row's zero count is Binomial(cols, p).
        p = zeros / rows
        per_row = (sample == 0).sum(axis=1)
        assert np.abs(per_row - cols * p).max() <= 6 * math.sqrt(cols * p * (1 - p))
        assert abs(per_row.std() - math.sqrt(cols * p * (1 - p))) <= 6 * math.sqrt(cols * p * (1 - p)) / math.sqrt(
            2 * rows
        )
        # Two columns' zero sets overlap in zeros^2 / rows rows on average (independent columns).
        # The mean over ordered pairs is (sum_r S_r^2 - cols * zeros) / (cols (cols - 1)) with S_r
        # the row counts above; Var(S^2) = 4 mu^2 s^2 + 2 s^4 for S ~ N(mu, s^2) (the fixed total
        # sum_r S_r only lowers the variance of the sum), so se = sqrt(rows Var(S^2)) / (cols (cols - 1)).
        z = (sample == 0).astype(np.float64)
        overlap = z.T @ z
        off = overlap[~np.eye(cols, dtype=bool)]
        mu, s2 = cols * p, cols * p * (1 - p)
        se = math.sqrt(rows * (4 * mu * mu * s2 + 2 * s2 * s2)) / (cols * (cols - 1))
        assert abs(off.mean() - zeros * zeros / rows) <= 6 * se
    bound = ks_bound(x.size, t.size)
    assert ks_statistic(x[x != 0], t[t != 0]) <= bound
    assert ks_statistic((x == 0).sum(axis=1), (t == 0).sum(axis=1)) <= ks_bound(rows, rows)


def _slice(variable: VariableSpec, ranges) -> VariableSpec:
    return VariableSpec(variable.name, variable.shape, variable.dtype, variable.initializer, variable.seed, ranges)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "complex64", "complex128"])
def test_slices_are_the_hyperslab(engine, dtype) -> None:
    variable = spec("sparse", (97, 61), dtype, name=f"sparse/{dtype}", sparsity=0.4, stddev=1.0)
    whole = engine.generate(variable, seed=SEED)
    assert ((whole == 0).sum(axis=0) == 39).all()
    cuts = (((0, 97), (0, 30)), ((0, 97), (30, 61)), ((13, 14), (0, 61)), ((5, 90), (7, 8)), ((40, 77), (3, 59)))
    for ranges in cuts:
        part = engine.generate(_slice(variable, ranges), seed=SEED)
        np.testing.assert_array_equal(part, whole[tuple(slice(a, b) for a, b in ranges)])
    for index in ((0, 0), (96, 60), (48, 30)):
        one = engine.generate(_slice(variable, tuple((i, i + 1) for i in index)), seed=SEED)
        assert one.reshape(()) == whole[index]


def test_non_zeros_are_random_normal_values(engine) -> None:
    """The non-zero values are exactly random_normal's at the same elements (the normal stream),
    in every precision: bfloat16 is the float32 tensor rounded."""
    for dtype in ("float32", "float64", "complex64", "bfloat16"):
        sparse = engine.generate(spec("sparse", (64, 40), dtype, name="n", sparsity=0.25, stddev=0.3), seed=SEED)
        normal = engine.generate(spec("random_normal", (64, 40), dtype, name="n", stddev=0.3), seed=SEED)
        kept = sparse != 0
        np.testing.assert_array_equal(sparse[kept], normal[kept])
        assert not np.any(normal[~kept] == 0)


def test_large_tensor_in_pieces(engine) -> None:
    """A tensor of several kernel calls: still exactly the count in every column, and slices
    cut across the calls' windows agree with the whole."""
    variable = spec("sparse", (1100, 600), name="big", sparsity=0.05, stddev=1.0)
    whole = engine.generate(variable, seed=SEED)
    assert ((whole == 0).sum(axis=0) == 55).all()
    part = engine.generate(_slice(variable, ((300, 1000), (100, 550))), seed=SEED)
    np.testing.assert_array_equal(part, whole[300:1000, 100:550])


def _reference_zero_rows(key: rng.Key, rows: int, column: int, zeros: int) -> set[int]:
    """The documented construction (server/engine/sparse.py) in plain Python integers, with the cipher
    one element at a time: what an independent checker would write."""

    def t(k: rng.Key, x0: int, x1: int) -> tuple[int, int]:
        y0, y1 = rng.threefry2x32(*(np.array([w], np.uint32) for w in (k[0], k[1], x0, x1)))
        return int(y0[0]), int(y1[0])

    mask_key = t(key, 1, 0)
    column_key = t(mask_key, 0, column)
    h = (max(2, (rows - 1).bit_length()) + 1) // 2
    m = (1 << h) - 1

    def feistel(x: int) -> int:
        left, right = x >> h, x & m
        for i in range(ROUNDS):
            left, right = right, left ^ (t(column_key, i + 1, right)[0] & m)
        return (left << h) | right

    found = set()
    for r in range(rows):
        p = feistel(r)
        while p >= rows:
            p = feistel(p)
        if p < zeros:
            found.add(r)
    return found


def test_zero_rows_are_the_documented_construction(engine) -> None:
    rows, cols, sparsity = 37, 6, 0.3
    x = engine.generate(spec("sparse", (rows, cols), name="documented", sparsity=sparsity, stddev=1.0), seed=SEED)
    key = rng.variable_key(SEED, "documented")
    for c in range(cols):
        assert set(np.flatnonzero(x[:, c] == 0).tolist()) == _reference_zero_rows(key, rows, c, math.ceil(0.3 * rows))


def test_deterministic_and_keyed(engine) -> None:
    variable = spec("sparse", (50, 20), name="k", sparsity=0.5)
    first = engine.generate(variable, seed=SEED)
    assert digest(first) == digest(engine.generate(variable, seed=SEED))
    other = engine.generate(variable, seed=SEED + 1)
    assert not np.array_equal(first == 0, other == 0)  # the zero rows come from the key, too
    renamed = engine.generate(spec("sparse", (50, 20), name="k2", sparsity=0.5), seed=SEED)
    assert not np.array_equal(first == 0, renamed == 0)


def test_default_stddev_and_non_float(engine) -> None:
    x = engine.generate(spec("sparse", (300, 200), sparsity=0.5), seed=SEED).astype(np.float64)
    values = x[x != 0]
    assert abs(values.std() - 0.01) <= 6 * 0.01 / math.sqrt(2 * values.size)
    prepared = engine.prepare(spec("sparse", (4, 4), "int8", sparsity=0.5), seed=SEED)
    assert prepared.info.zero_reason == "non_float_dtype"
    assert not engine.generate(spec("sparse", (4, 4), "int8", sparsity=0.5), seed=SEED).any()


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        (spec("sparse", (4, 4)), "initializer.sparse.sparsity"),  # required, as in PyTorch
        (spec("sparse", (4, 4), sparsity=-0.1), "initializer.sparse.sparsity"),
        (spec("sparse", (4, 4), sparsity=1.5), "initializer.sparse.sparsity"),
        (spec("sparse", (4, 4), sparsity=True), "initializer.sparse.sparsity"),
        (spec("sparse", (4, 4), sparsity=0.5, stddev=-1.0), "initializer.sparse.stddev"),
        (spec("sparse", (16,), sparsity=0.5), "shape"),  # PyTorch: 2-D only
        (spec("sparse", (4, 4, 4), sparsity=0.5), "shape"),
        (spec("sparse", (4, 4), "int8", sparsity=0.5, stddev=float("nan")), "initializer.sparse.stddev"),
    ],
)
def test_invalid(engine, variable, field) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(variable, seed=SEED)
    assert error.value.field == field
