"""Every malformed spec fails in `prepare` (before a byte is streamed), as a SpecError naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engine_helpers import base_tensor, spec

from weightgen.server.engine import Engine, Initializer, LimitError, SpecError, VariableSpec

NAN, INF = math.nan, math.inf


ZEROS = Initializer("zeros")


def _bare(name: str = "w", shape: tuple[int, ...] = (4, 8), dtype: str = "float32", init: Initializer | None = ZEROS):
    return VariableSpec(name=name, shape=shape, dtype=dtype, initializer=init)


CASES = [
    # names
    ("empty name", _bare(name=""), "name"),
    ("name over 1024 bytes", _bare(name="x" * 1025), "name"),
    ("name over 1024 UTF-8 bytes", _bare(name="é" * 513), "name"),
    # shapes and dtypes
    ("negative dim", _bare(shape=(3, -1)), "shape[1]"),
    ("negative first dim", _bare(shape=(-3, 1)), "shape[0]"),
    ("rank over 32", _bare(shape=(1,) * 33), "shape"),
    ("over 2^40 elements", _bare(shape=(1 << 20, 1 << 20, 2)), "shape"),
    ("unknown dtype", _bare(dtype="float8"), "dtype"),
    ("missing initializer", _bare(init=None), "initializer"),
    ("unknown initializer", _bare(init=Initializer("xavier_magic")), "initializer"),
    # parameters
    ("unknown parameter", spec("random_normal", (4, 8), foo=1.0), "initializer.random_normal.foo"),
    ("parameter of another initializer", spec("he", (4, 8), gain=2.0), "initializer.he.gain"),
    ("not a number", spec("random_normal", (4, 8), stddev="wide"), "initializer.random_normal.stddev"),
    ("boolean gain", spec("xavier_uniform", (4, 8), gain=False), "initializer.xavier_uniform.gain"),
    ("boolean slope", spec("kaiming_uniform", (4, 8), a=True), "initializer.kaiming_uniform.a"),
    ("boolean groups", spec("dirac", (3, 4, 4), groups=True), "initializer.dirac.groups"),
    ("NaN stddev", spec("random_normal", (4, 8), stddev=NAN), "initializer.random_normal.stddev"),
    ("infinite mean", spec("random_normal", (4, 8), mean=INF), "initializer.random_normal.mean"),
    ("infinite max", spec("random_uniform", (4, 8), max=INF), "initializer.random_uniform.max"),
    ("-inf min", spec("random_uniform", (4, 8), min=-INF), "initializer.random_uniform.min"),
    ("NaN constant", spec("constant", (4, 8), value=NAN), "initializer.constant.value"),
    ("infinite scale", spec("variance_scaling", (4, 8), scale=INF), "initializer.variance_scaling.scale"),
    ("NaN truncation", spec("truncated_normal", (4, 8), upper=NAN), "initializer.truncated_normal.upper"),
    ("min > max", spec("random_uniform", (4, 8), min=1.0, max=0.5), "initializer.random_uniform.min"),
    ("stddev < 0", spec("random_normal", (4, 8), stddev=-0.1), "initializer.random_normal.stddev"),
    ("truncated stddev < 0", spec("truncated_normal", (4, 8), stddev=-1.0), "initializer.truncated_normal.stddev"),
    ("gain < 0", spec("xavier_uniform", (4, 8), gain=-1.0), "initializer.xavier_uniform.gain"),
    ("scale 0", spec("variance_scaling", (4, 8), scale=0.0), "initializer.variance_scaling.scale"),
    ("orthogonal scale < 0", spec("orthogonal", (4, 8), scale=-1.0), "initializer.orthogonal.scale"),
    ("lower == upper", spec("truncated_normal", (4, 8), lower=1.0, upper=1.0), "initializer.truncated_normal.lower"),
    ("lower > upper", spec("truncated_normal", (4, 8), lower=2.0, upper=-2.0), "initializer.truncated_normal.lower"),
    ("unknown mode", spec("variance_scaling", (4, 8), mode="fan_sum"), "initializer.variance_scaling.mode"),
    (
        "unknown distribution",
        spec("variance_scaling", (4, 8), distribution="cauchy"),
        "initializer.variance_scaling.distribution",
    ),
    (
        "unknown nonlinearity",
        spec("kaiming_normal", (4, 8), nonlinearity="gelu"),
        "initializer.kaiming_normal.nonlinearity",
    ),
    ("kaiming fan_avg", spec("kaiming_uniform", (4, 8), mode="fan_avg"), "initializer.kaiming_uniform.mode"),
    ("values overflow float32", spec("random_normal", (4, 8), stddev=1e39), "initializer"),
    ("values overflow bfloat16's float32", spec("random_uniform", (4, 8), "bfloat16", max=1e39), "initializer"),
    # slices
    ("slice of the wrong rank", spec("random_normal", (4, 8), slice=((0, 4),)), "slice"),
    ("reversed slice", spec("random_normal", (4, 8), slice=((3, 1), (0, 8))), "slice[0]"),
    ("slice out of bounds", spec("random_normal", (4, 8), slice=((0, 4), (0, 9))), "slice[1]"),
    ("slice from a negative start", spec("random_normal", (4, 8), slice=((-1, 4), (0, 8))), "slice[0]"),
    # structured
    ("orthogonal rank 1", spec("orthogonal", (8,)), "shape"),
    ("orthogonal rank 0", spec("orthogonal", ()), "shape"),
    (
        "orthogonal column_axis out of range",
        spec("orthogonal", (4, 8), column_axis=2),
        "initializer.orthogonal.column_axis",
    ),
    ("column_axis not an integer", spec("orthogonal", (4, 8), column_axis=0.5), "initializer.orthogonal.column_axis"),
    ("dirac groups not dividing out", spec("dirac", (3, 3, 4, 6), groups=4), "initializer.dirac.groups"),
    ("dirac groups 0", spec("dirac", (3, 3, 4, 6), groups=0), "initializer.dirac.groups"),
    ("dirac groups not an integer", spec("dirac", (3, 3, 4, 6), groups=1.5), "initializer.dirac.groups"),
    ("dirac rank 2", spec("dirac", (4, 6)), "shape"),
    ("dirac rank 6", spec("dirac", (1, 1, 1, 1, 4, 6)), "shape"),
    ("delta_orthogonal in > out", spec("delta_orthogonal", (3, 3, 8, 4)), "shape"),
    ("identity rank 3", spec("identity", (2, 2, 2)), "shape"),
    ("identity gain 2.5 into int8", spec("identity", (3, 3), "int8", gain=2.5), "initializer.identity.gain"),
    # structured validation comes before GoMLX's zero rule for non-float dtypes
    ("orthogonal rank 1 int8", spec("orthogonal", (8,), "int8"), "shape"),
    # values that the dtype cannot hold
    ("constant 2.5 into int8", spec("constant", (4, 8), "int8", value=2.5), "initializer.constant.value"),
    ("constant 300 into int8", spec("constant", (4, 8), "int8", value=300), "initializer.constant.value"),
    ("constant -1 into uint8", spec("constant", (4, 8), "uint8", value=-1), "initializer.constant.value"),
    ("constant overflows float16", spec("constant", (4, 8), "float16", value=1e5), "initializer.constant.value"),
    ("imaginary part into float32", spec("constant", (4, 8), value=1.0, imag=2.0), "initializer.constant.imag"),
    # a cast that would turn random values into infinities (float16 tops at 65504)
    ("normal overflows float16", spec("random_normal", (4, 8), "float16", stddev=1e5), "initializer"),
    ("uniform overflows float16", spec("random_uniform", (4, 8), "float16", min=0.0, max=7e4), "initializer"),
    ("truncated overflows float16", spec("truncated_normal", (4, 8), "float16", stddev=4e4), "initializer"),
    (
        "broadcast into a longer axis",
        spec("broadcast", (4, 8), base=base_tensor(np.ones(4))),
        "initializer.broadcast.base.shape",
    ),
]


@pytest.mark.parametrize(("variable", "field"), [pytest.param(v, f, id=i) for i, v, f in CASES])
def test_prepare_rejects(engine, variable, field) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(variable, seed=1)
    assert error.value.field == field
    assert not isinstance(error.value, LimitError)
    assert field in str(error.value)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(engine, seed) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("random_normal", (4, 8)), seed=seed)
    assert error.value.field == "seed"


def test_boundaries_that_are_valid(engine) -> None:
    engine.prepare(_bare(name="x" * 1024), seed=1)
    engine.prepare(_bare(name="é" * 512), seed=1)
    engine.prepare(_bare(shape=(1,) * 32), seed=1)
    engine.prepare(_bare(shape=(1 << 20, 1 << 20)), seed=1)  # 2^40 elements: the contract's maximum
    engine.prepare(spec("random_normal", (4, 8), stddev=0.0), seed=1)
    engine.prepare(spec("constant", (4, 8), "int8", value=-128.0), seed=1)
    engine.prepare(spec("constant", (4, 8), "complex64", value=1.0, imag=2.0), seed=1)
    engine.prepare(spec("random_normal", (4, 8), slice=((4, 4), (8, 8))), seed=1)  # empty, at the end
    engine.prepare(spec("random_normal", (4, 8)), seed=2**64 - 1)
    engine.prepare(spec("random_normal", (4, 8), "float16", stddev=1e4), seed=1)  # |z| < 5.5: fits 65504
    engine.prepare(spec("truncated_normal", (4, 8), "float16", stddev=3e4), seed=1)  # |z| <= 2


def test_degenerate_parameters_give_constants(engine) -> None:
    """min == max is valid (GoMLX: min + 0 * U) and gives exactly min; stddev 0 gives the mean."""
    for dtype in ("float32", "float64", "bfloat16", "complex64"):
        x = engine.generate(spec("random_uniform", (300,), dtype, min=1.0, max=1.0), seed=1)
        assert np.all(x == (1 + 1j if dtype == "complex64" else 1)), dtype
        y = engine.generate(spec("random_uniform", (300,), dtype, min=-0.25, max=-0.25 + 1e-12), seed=1)
        assert np.all(y.real == -0.25) if dtype != "float64" else np.all((y >= -0.25) & (y < -0.25 + 1e-12))
    np.testing.assert_array_equal(engine.generate(spec("random_normal", (300,), mean=2.5, stddev=0.0), seed=1), 2.5)
    np.testing.assert_array_equal(
        engine.generate(spec("truncated_normal", (300,), mean=-1.0, stddev=0.0), seed=1), -1.0
    )


def test_structured_limit(engine) -> None:
    small = Engine(engine.pool, max_structured_elements=1000)  # shares the pool: not closed here
    for kind, shape in (
        ("orthogonal", (40, 30)),
        ("identity", (40, 30)),
        ("dirac", (3, 3, 16, 16)),
        ("delta_orthogonal", (3, 3, 16, 16)),
    ):
        with pytest.raises(LimitError) as error:
            small.prepare(spec(kind, shape), seed=1)
        assert isinstance(error.value, SpecError) and error.value.field == "shape"
    small.prepare(spec("orthogonal", (40, 25)), seed=1)  # exactly the limit
    small.prepare(spec("random_normal", (400, 300)), seed=1)  # elementwise: no limit of this kind
    small.prepare(spec("orthogonal", (400, 300), "int8"), seed=1)  # zeros: nothing is built


def test_error_location() -> None:
    error = SpecError("initializer.random_uniform.min", "min 2 > max 1").at(3, "dense/kernel")
    assert (error.index, error.name, error.field) == (3, "dense/kernel", "initializer.random_uniform.min")
    assert str(error) == "variables[3] ('dense/kernel'): initializer.random_uniform.min: min 2 > max 1"
