"""GoMLX's BroadcastTensorToShape, case by case (its package test, then its rules and errors)."""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from engine_helpers import base_tensor, spec

from weightgen.server.engine import BaseTensor, SpecError, kernels

SEED = 5
BASE = base_tensor([7, 11, 17], "float64")  # GoMLX's base: a float64 tensor of shape [3]


def test_base_bytes_are_little_endian_c_order() -> None:
    assert BASE.shape == (3,)
    assert BASE.data == b"".join(int.to_bytes(v, 8, "little") for v in (0x401C << 48, 0x4026 << 48, 0x4031 << 48))


def test_gomlx_package_cases(engine) -> None:
    rows = engine.generate(spec("broadcast", (4, 3), "float32", base=BASE), seed=SEED)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, [[7, 11, 17]] * 4)
    same = engine.generate(spec("broadcast", (3,), "int32", base=BASE), seed=SEED)
    assert same.dtype == np.int32
    np.testing.assert_array_equal(same, [7, 11, 17])
    scalar = BaseTensor("float64", (), np.float64(3.0).tobytes())
    threes = engine.generate(spec("broadcast", (1, 2, 3), "int8", base=scalar), seed=SEED)
    assert threes.dtype == np.int8
    np.testing.assert_array_equal(threes, np.full((1, 2, 3), 3, np.int8))


def test_conversion_rules(engine) -> None:
    base = base_tensor([-2.7, 0.0, 2.7, 0.4])
    truncated = engine.generate(spec("broadcast", (2, 4), "int8", base=base), seed=SEED)
    np.testing.assert_array_equal(truncated, [[-2, 0, 2, 0]] * 2)  # float to int truncates toward zero
    booleans = engine.generate(spec("broadcast", (2, 4), "bool", base=base), seed=SEED)
    np.testing.assert_array_equal(booleans, [[True, False, True, True]] * 2)  # non-zero is true
    halves = engine.generate(spec("broadcast", (4,), "bfloat16", base=base), seed=SEED)
    np.testing.assert_array_equal(
        halves.view(np.uint16), np.asarray([-2.7, 0.0, 2.7, 0.4], np.float32).astype(halves.dtype).view(np.uint16)
    )
    # Equal shapes with another dtype, scalar to scalar, and a base of another dtype.
    scalar = engine.generate(spec("broadcast", (), "float64", base=base_tensor(2.5, "float32")), seed=SEED)
    assert scalar.shape == () and scalar == 2.5
    matrix = base_tensor([[1, 2], [3, 4]], "int16")
    np.testing.assert_array_equal(
        engine.generate(spec("broadcast", (3, 2, 2), "float32", base=matrix), seed=SEED), [[[1, 2], [3, 4]]] * 3
    )
    c = engine.generate(
        spec("broadcast", (2, 2), "complex64", base=base_tensor([1 + 2j, -3j], "complex128")), seed=SEED
    )
    np.testing.assert_array_equal(c, [[1 + 2j, -3j]] * 2)
    # Not random: neither seed nor name matter.
    other = engine.generate(spec("broadcast", (4, 3), base=BASE, name="other"), seed=SEED + 1)
    np.testing.assert_array_equal(other, [[7, 11, 17]] * 4)


def test_broadcast_slice(engine) -> None:
    base = base_tensor(np.arange(12.0).reshape(3, 4))
    full = engine.generate(spec("broadcast", (5, 3, 4), base=base), seed=SEED)
    part = engine.generate(spec("broadcast", (5, 3, 4), base=base, slice=((1, 4), (2, 3), (0, 3))), seed=SEED)
    np.testing.assert_array_equal(part, full[1:4, 2:3, 0:3])


@pytest.mark.parametrize(
    ("base", "shape", "dtype", "field"),
    [
        (BASE, (4,), "float32", "initializer.broadcast.base.shape"),  # equal rank, different dims
        (base_tensor([[1, 2, 3]] * 2), (3,), "float32", "initializer.broadcast.base.shape"),  # base rank greater
        (BASE, (3, 4), "float32", "initializer.broadcast.base.shape"),  # not a suffix
        (base_tensor([[7, 11, 17]]), (4, 3), "float32", "initializer.broadcast.base.shape"),  # no size-1 broadcast
        (base_tensor([[7, 11, 17]] * 2), (5, 3, 3), "float32", "initializer.broadcast.base.shape"),  # suffix mismatch
        (BaseTensor("float64", (3,), BASE.data[:-4]), (4, 3), "float32", "initializer.broadcast.base.data"),
        (BaseTensor("float64", (3,), BASE.data + b"\0"), (4, 3), "float32", "initializer.broadcast.base.data"),
        (BaseTensor("float64", (), b""), (4, 3), "float32", "initializer.broadcast.base.data"),
        (BaseTensor("float128", (3,), BASE.data), (4, 3), "float32", "initializer.broadcast.base.dtype"),
        (BaseTensor("float64", (-3,), b""), (4, 3), "float32", "initializer.broadcast.base.shape"),
        (base_tensor([1.0, np.nan, 2.0]), (3,), "int32", "initializer.broadcast.base.data"),  # NaN into ints
        (base_tensor([1.0, 300.0, 2.0]), (3,), "int8", "initializer.broadcast.base.data"),  # overflow
        (base_tensor([1j, 0, 0], "complex64"), (3,), "float32", "initializer.broadcast.base.data"),
    ],
)
def test_errors(engine, base, shape, dtype, field) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("broadcast", shape, dtype, base=base), seed=SEED)
    assert error.value.field == field


def test_missing_base(engine) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("broadcast", (4, 3)), seed=SEED)
    assert error.value.field == "initializer.broadcast.base"


def test_widening_is_converted_a_piece_at_a_time(engine) -> None:
    """A uint8 base of 8 Mi elements into complex128 (16x wider): the converted base would be
    128 MiB and the tensor 256 MiB; streaming holds a few pieces (4 MiB each) at most."""
    n = 8 << 20
    values = np.arange(n, dtype=np.uint8)
    variable = spec("broadcast", (2, n), "complex128", base=BaseTensor("uint8", (n,), values.tobytes()))
    piece_bytes = kernels.CALL_ELEMENTS * 16
    tracemalloc.start()
    try:
        prepared = engine.prepare(variable, seed=SEED)
        at = 0
        for piece in engine.stream(prepared):
            assert piece.dtype == np.complex128 and piece.size <= kernels.CALL_ELEMENTS
            if at % n == 0 or at % n + piece.size == n:  # spot checks: a piece at each end of the base
                np.testing.assert_array_equal(piece, values[at % n : at % n + piece.size])
            at += piece.size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert at == 2 * n
    assert peak <= 4 * piece_bytes, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    ("base", "dtype"),
    [
        (base_tensor([1.0, 2.0**64], "float64"), "uint64"),  # 2**64 > 2**64 - 1: exact, not in float64
        (base_tensor([-(2.0**63) - 4096, 0.0], "float64"), "int64"),
        (BaseTensor("bfloat16", (2,), np.asarray([1.0, np.nan], ml_dtypes.bfloat16).tobytes()), "int32"),
        (BaseTensor("bfloat16", (2,), np.asarray([1.0, 300.0], ml_dtypes.bfloat16).tobytes()), "int8"),
        (base_tensor([2**63, 1], "uint64"), "int64"),
    ],
)
def test_out_of_range_conversions_are_refused_exactly(engine, base, dtype) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("broadcast", (2,), dtype, base=base), seed=SEED)
    assert error.value.field == "initializer.broadcast.base.data"


def test_conversion_edges_that_fit(engine) -> None:
    edges = engine.generate(spec("broadcast", (2,), "int8", base=base_tensor([-128.9, 127.9])), seed=SEED)
    np.testing.assert_array_equal(edges, [-128, 127])  # truncated toward zero first, then in range
    halves = BaseTensor("bfloat16", (2,), np.asarray([-2.5, 3.5], ml_dtypes.bfloat16).tobytes())
    np.testing.assert_array_equal(engine.generate(spec("broadcast", (2,), "int16", base=halves), seed=SEED), [-2, 3])
