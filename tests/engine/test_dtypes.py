"""GoMLX's zero rules, complex values, and every dtype of the contract."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from engine_helpers import base_tensor, spec

from weightgen.server.engine import REGISTRY
from weightgen.server.engine.dtypes import DTYPES

SEED = 4242
NON_FLOAT = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]
RANDOM = sorted(k for k, d in REGISTRY.items() if d.random)
FAN_BASED = sorted(k for k, d in REGISTRY.items() if d.fan_based)


def test_the_rule_sets() -> None:
    assert set(NON_FLOAT) | {"float32", "float64", "float16", "bfloat16", "complex64", "complex128"} == set(DTYPES)
    assert set(FAN_BASED) < set(RANDOM)
    assert {"random_normal", "random_uniform", "truncated_normal", "orthogonal", "delta_orthogonal"} < set(RANDOM)
    assert not {"zeros", "ones", "constant", "identity", "dirac", "broadcast"} & set(RANDOM)


@pytest.mark.parametrize("kind", FAN_BASED)
@pytest.mark.parametrize("shape", [(), (1,), (10,), (300,)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "complex64"])
def test_fan_based_rank_le_1_is_zeros(engine, kind, shape, dtype) -> None:
    variable = spec(kind, shape, dtype)
    assert engine.prepare(variable, seed=SEED).info.zero_reason == "rank_le_1"
    x = engine.generate(variable, seed=SEED)
    assert x.shape == shape and x.dtype == DTYPES[dtype].numpy
    assert not x.any()


@pytest.mark.parametrize("kind", RANDOM)
def test_random_initializers_give_zeros_for_non_float_dtypes(engine, kind) -> None:
    for dtype in NON_FLOAT:
        for shape in ((3, 4, 5), (2, 3, 3)):
            variable = spec(kind, shape, dtype)
            assert engine.prepare(variable, seed=SEED).info.zero_reason == "non_float_dtype", (dtype, shape)
            x = engine.generate(variable, seed=SEED)
            assert x.dtype == DTYPES[dtype].numpy and x.shape == shape
            assert not x.any()


def test_random_initializers_report_no_zero_reason_when_random(engine) -> None:
    for kind in RANDOM:
        info = engine.prepare(spec(kind, (3, 4, 5)), seed=SEED).info
        assert info.zero_reason == "", kind
    assert engine.prepare(spec("zeros", (3, 4)), seed=SEED).info.zero_reason == ""  # asked for, not a rule


def _corr_bound(n: int) -> float:
    """6 standard errors of a sample correlation of independent parts: se = 1 / sqrt(n)."""
    return 6 / math.sqrt(n)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_normal(engine, dtype) -> None:
    """Each part normal with std / sqrt(2) (E|z - mean|^2 = std^2), the mean on both parts, the parts
    independent. Tolerances: 6 standard errors (se(mean) = s / sqrt(n), se(std) = s / sqrt(2n))."""
    shape = (256, 256)
    mean, std = 0.5, 2.0
    z = engine.generate(spec("random_normal", shape, dtype, mean=mean, stddev=std), seed=SEED)
    assert z.dtype == DTYPES[dtype].numpy
    n = z.size
    part = std / math.sqrt(2)
    for values in (z.real.astype(np.float64), z.imag.astype(np.float64)):
        assert abs(values.mean() - mean) <= 6 * part / math.sqrt(n)
        assert abs(values.std() - part) <= 6 * part / math.sqrt(2 * n)
    assert abs(np.corrcoef(z.real.ravel(), z.imag.ravel())[0, 1]) <= _corr_bound(n)
    # E|z - c|^2 = std^2 with c = mean + mean i; |z - c|^2 / (std^2 / 2) is chi-square(2), of
    # variance 4, so se = std^2 / sqrt(n).
    centred = z.astype(np.complex128) - complex(mean, mean)
    assert abs(np.mean(np.abs(centred) ** 2) - std**2) <= 6 * std**2 / math.sqrt(n)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_uniform(engine, dtype) -> None:
    shape = (256, 256)
    z = engine.generate(spec("random_uniform", shape, dtype, min=-1.0, max=3.0), seed=SEED)
    n = z.size
    std = 4 / math.sqrt(12)
    for values in (z.real, z.imag):
        assert values.min() >= -1.0 and values.max() < 3.0  # each part in [low, high)
        assert values.min() < -1.0 + 20 * 4 / n and values.max() > 3.0 - 20 * 4 / n  # both ends reached
        v = values.astype(np.float64)
        assert abs(v.mean() - 1.0) <= 6 * std / math.sqrt(n)
        assert abs(v.std() - std) <= 6 * std / math.sqrt(2 * n)
    assert abs(np.corrcoef(z.real.ravel(), z.imag.ravel())[0, 1]) <= _corr_bound(n)
    assert not np.array_equal(z.real, z.imag)  # GoMLX's defect: re == im


def test_complex_fan_based(engine) -> None:
    """he (normal, std sqrt(2 / fan_in)) and he_normal (truncated) on complex: each part carries
    half the variance; truncated parts stay within 2 stddev parameters / sqrt(2)."""
    shape = (3, 3, 64, 128)  # fan_in 576
    n = math.prod(shape)
    std = math.sqrt(2 / 576)
    z = engine.generate(spec("he", shape, "complex64"), seed=SEED)
    for values in (z.real.astype(np.float64), z.imag.astype(np.float64)):
        assert abs(values.std() - std / math.sqrt(2)) <= 6 * std / math.sqrt(2) / math.sqrt(2 * n)
    assert abs(np.corrcoef(z.real.ravel(), z.imag.ravel())[0, 1]) <= _corr_bound(n)
    t = engine.generate(spec("he_normal", shape, "complex64"), seed=SEED)
    bound = 2 * np.float32(std / 0.87962566103423978 / math.sqrt(2))
    for values in (t.real, t.imag):
        assert np.abs(values).max() <= bound
        assert abs(values.astype(np.float64).std() - std / math.sqrt(2)) <= 6 * std / math.sqrt(2) / math.sqrt(2 * n)
    assert abs(np.corrcoef(t.real.ravel(), t.imag.ravel())[0, 1]) <= _corr_bound(n)


def test_complex_fills(engine) -> None:
    np.testing.assert_array_equal(engine.generate(spec("ones", (2, 3), "complex64"), seed=SEED), np.ones((2, 3)))
    c = engine.generate(spec("constant", (4,), "complex128", value=1.5, imag=-2.0), seed=SEED)
    np.testing.assert_array_equal(c, np.full(4, 1.5 - 2j))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_generates(engine, dtype) -> None:
    expected = DTYPES[dtype].numpy
    shape = (5, 7)
    for kind, params in (
        ("random_uniform", {"min": -0.5, "max": 0.5}),
        ("he_uniform", {}),
        ("ones", {}),
        ("zeros", {}),
        ("broadcast", {"base": base_tensor([1.0, 2.0, 0.0, 3.0, 1.0, 2.0, 1.0])}),
    ):
        x = engine.generate(spec(kind, shape, dtype, **params), seed=SEED)
        assert x.dtype == expected and x.shape == shape, kind
        prepared = engine.prepare(spec(kind, shape, dtype, **params), seed=SEED)
        assert prepared.info.byte_size == 35 * expected.itemsize
        assert prepared.info.dtype == dtype
    ones = engine.generate(spec("ones", shape, dtype), seed=SEED)
    assert np.all(ones == expected.type(1))
    random = engine.generate(spec("random_uniform", shape, dtype, min=-0.5, max=0.5), seed=SEED)
    if DTYPES[dtype].is_inexact:
        assert np.unique(random).size > 30  # random values
        assert np.all(np.abs(random.astype(np.complex128)) <= 0.5 * math.sqrt(2))
    else:
        assert not random.any()
    if dtype == "bfloat16":
        assert expected == np.dtype(ml_dtypes.bfloat16)
