"""GoMLX's zero rules, complex values, and every dtype of the contract."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from engine_helpers import CHANNELS_FIRST, base_tensor, ks_bound, ks_statistic, spec

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


def _random_spec(kind: str, shape: tuple[int, ...], dtype: str = "float32"):
    """A variable of `kind`: sparse (PyTorch's: rank 2, sparsity required) gets its rank-2 version."""
    if kind == "sparse":
        return spec(kind, (shape[0], math.prod(shape[1:])), dtype, sparsity=0.5)
    return spec(kind, shape, dtype)


@pytest.mark.parametrize("kind", RANDOM)
def test_random_initializers_give_zeros_for_non_float_dtypes(engine, kind) -> None:
    for dtype in NON_FLOAT:
        for full in ((3, 4, 5), (2, 3, 3)):
            variable = _random_spec(kind, full, dtype)
            shape = variable.shape
            assert engine.prepare(variable, seed=SEED).info.zero_reason == "non_float_dtype", (dtype, shape)
            x = engine.generate(variable, seed=SEED)
            assert x.dtype == DTYPES[dtype].numpy and x.shape == shape
            assert not x.any()


def test_random_initializers_report_no_zero_reason_when_random(engine) -> None:
    for kind in RANDOM:
        info = engine.prepare(_random_spec(kind, (3, 4, 5)), seed=SEED).info
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


# -- complex fan-based uniforms ----------------------------------------------------------------
#
# JAX's names (variance_scaling and its uniform cases) draw complex uniforms on the disk |z| < R,
# R = sqrt(2 * variance) (jax.nn.initializers' _complex_uniform): |z|^2 = R^2 u with u uniform, so
# E|z|^2 = variance and sd(|z|^2) = R^2 / sqrt(12) = variance / sqrt(3). PyTorch's names
# (kaiming_uniform, xavier_uniform) keep torch.nn.init's complex uniform, each part in [-L, L),
# L = sqrt(3 * variance): E|z|^2 = 2 * variance, sd(|z|^2) = sqrt(2 * 4 L^4 / 45) = sqrt(1.6) * variance.
# Bounds: 6 standard errors of the sample mean; two-sample Kolmogorov-Smirnov at alpha = 1e-8,
# D <= sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m)).

CONV = (3, 3, 64, 128)  # channels-last: fan_in 576, fan_out 1152
CONV_FANS = {"fan_in": 576, "fan_out": 1152, "fan_avg": 864, "fan_geo_avg": math.sqrt(576 * 1152)}


def _jax_cases():
    cases = [
        ("he_uniform", {}, "he_uniform", (), 2 / CONV_FANS["fan_in"]),
        ("glorot_uniform", {}, "glorot_uniform", (), 1 / CONV_FANS["fan_avg"]),
        ("lecun_uniform", {}, "lecun_uniform", (), 1 / CONV_FANS["fan_in"]),
    ]
    for mode, fan in CONV_FANS.items():
        params = {"scale": 0.7, "mode": mode, "distribution": "uniform"}
        cases.append(("variance_scaling", params, "variance_scaling", (0.7, mode, "uniform"), 0.7 / fan))
    return cases


def _check_disk(z: np.ndarray, variance: float) -> None:
    """Complex values uniform on the disk of radius sqrt(2 * variance) (from any library)."""
    n = z.size
    z = z.astype(np.complex128).ravel()
    radius = math.sqrt(2 * variance)
    m2 = np.abs(z) ** 2
    assert abs(m2.mean() - variance) <= 6 * variance / math.sqrt(3 * n), (m2.mean(), variance)
    assert abs(m2.std() - 2 * variance / math.sqrt(12)) <= 6 * 2 * variance / math.sqrt(12) / math.sqrt(2 * n)
    assert np.abs(z).max() <= radius * (1 + 2.0**-20)  # inside the disk, up to float32 rounding
    assert np.abs(z).max() > radius * (1 - 20 / n)  # and reaching its edge: P(|z| < R (1 - t)) ~ 1 - 2t
    for part in (z.real, z.imag):  # centred, each part of variance variance / 2
        assert abs(part.mean()) <= 6 * math.sqrt(variance / 2 / n)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize(
    ("kind", "params", "jax_name", "jax_args", "variance"),
    _jax_cases(),
    ids=[f"{c[0]}({c[1].get('mode', '')})" for c in _jax_cases()],
)
def test_complex_uniform_is_jax(engine, dtype, kind, params, jax_name, jax_args, variance) -> None:
    """E|z|^2 = scale / fan, not twice it, and the same distribution as JAX's own initializer."""
    jax = pytest.importorskip("jax")
    z = engine.generate(spec(kind, CONV, dtype, name=f"{kind}/{dtype}", **params), seed=SEED)
    assert z.dtype == np.dtype(dtype)
    _check_disk(z, variance)
    with jax.enable_x64(dtype == "complex128"):
        initializer = getattr(jax.nn.initializers, jax_name)(*jax_args, dtype=dtype)
        reference = np.asarray(initializer(jax.random.PRNGKey(SEED), CONV))
    assert reference.dtype == np.dtype(dtype)
    _check_disk(reference, variance)  # JAX's own statistics: what the contract matches
    ours, theirs = z.astype(np.complex128).ravel(), reference.astype(np.complex128).ravel()
    bound = ks_bound(ours.size, theirs.size)
    assert ks_statistic(np.abs(ours), np.abs(theirs)) <= bound
    assert ks_statistic(np.angle(ours), np.angle(theirs)) <= bound
    assert ks_statistic(ours.real, theirs.real) <= bound and ks_statistic(ours.imag, theirs.imag) <= bound


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize(
    ("kind", "params", "torch_call", "variance"),
    [
        ("kaiming_uniform", {}, lambda nn, t: nn.init.kaiming_uniform_(t), 2 / 576),
        ("kaiming_uniform", {"a": 5**0.5}, lambda nn, t: nn.init.kaiming_uniform_(t, a=5**0.5), 1 / 3 / 576),
        ("xavier_uniform", {}, lambda nn, t: nn.init.xavier_uniform_(t), 1 / 864),
        ("xavier_uniform", {"gain": 2.0}, lambda nn, t: nn.init.xavier_uniform_(t, gain=2.0), 4 / 864),
    ],
    ids=["kaiming", "kaiming_a", "xavier", "xavier_gain"],
)
def test_complex_uniform_torch_names_are_torch(engine, dtype, kind, params, torch_call, variance) -> None:
    """PyTorch's kaiming_uniform_ and xavier_uniform_ on a complex tensor fill each part in [-L, L),
    so E|z|^2 = 2 * variance: checked against torch itself, in its layout [out, in, kh, kw]."""
    torch = pytest.importorskip("torch")
    shape = (128, 64, 3, 3)  # the CONV kernel in PyTorch's layout: the same fans
    z = engine.generate(spec(kind, shape, dtype, fan_axes=CHANNELS_FIRST, name=kind, **params), seed=SEED)
    reference = torch.empty(shape, dtype=getattr(torch, dtype))
    torch.manual_seed(SEED)
    torch_call(torch.nn, reference)
    limit = math.sqrt(3 * variance)
    for values in (z, reference.numpy()):
        sample = values.astype(np.complex128).ravel()
        n = sample.size
        m2 = np.abs(sample) ** 2
        assert abs(m2.mean() - 2 * variance) <= 6 * math.sqrt(1.6) * variance / math.sqrt(n), (m2.mean(), variance)
        for part in (sample.real, sample.imag):
            assert np.abs(part).max() <= limit * (1 + 2.0**-20)
            assert part.max() > limit * (1 - 40 / n) and part.min() < -limit * (1 - 40 / n)
    ours, theirs = z.astype(np.complex128).ravel(), reference.numpy().astype(np.complex128).ravel()
    bound = ks_bound(ours.size, theirs.size)
    assert ks_statistic(ours.real, theirs.real) <= bound and ks_statistic(ours.imag, theirs.imag) <= bound
    assert ks_statistic(np.abs(ours), np.abs(theirs)) <= bound
