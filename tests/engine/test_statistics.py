"""Every initializer of the registry against its formula, on a dense, a conv and a conv3d kernel.

Tolerances are 6 standard errors of the statistic for the tensor's element count n (a false failure
has probability below 1e-8 per check, and the values are deterministic anyway):

    se(mean) = std / sqrt(n)
    se(std) ~= std * sqrt((kurtosis - 1) / (4 n)) <= std / sqrt(2 n)   for kurtosis <= 3, which holds
              for the normal (3), the [-2, 2]-truncated normal (2.63) and the uniform (1.8)
    se(fraction p) = sqrt(p (1 - p) / n)

Fans are channels-last (GoMLX/JAX `[spatial..., in, out]`) and written out here by hand:
dense [784, 256]: (784, 256); conv [3, 3, 64, 128]: (576, 1152); conv3d [3, 3, 3, 16, 32]: (432, 864).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from engine_helpers import CHANNELS_FIRST, base_tensor, spec

from weightgen.server.engine import REGISTRY
from weightgen.server.engine.initializers import NONLINEARITIES, gain

SEED = 20240917
SHAPES = {
    "dense": ((784, 256), (784, 256)),
    "conv": ((3, 3, 64, 128), (576, 1152)),
    "conv3d": ((3, 3, 3, 16, 32), (432, 864)),
}
TRUNC = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]
P_WITHIN_1SD = math.erf(1 / math.sqrt(2))  # normal: P(|z| < 1)
P_WITHIN_1SD_TRUNC = math.erf(1 / math.sqrt(2)) / math.erf(2 / math.sqrt(2))  # same, truncated to [-2, 2]
PHI_2 = math.exp(-2) / math.sqrt(2 * math.pi)  # standard normal density at 2

# PyTorch's torch.nn.init.calculate_gain, written out (leaky_relu takes the negative slope a).
TORCH_GAINS: dict[str, Callable[[float], float]] = {
    "linear": lambda a: 1.0,
    "conv1d": lambda a: 1.0,
    "conv2d": lambda a: 1.0,
    "conv3d": lambda a: 1.0,
    "conv_transpose1d": lambda a: 1.0,
    "conv_transpose2d": lambda a: 1.0,
    "conv_transpose3d": lambda a: 1.0,
    "sigmoid": lambda a: 1.0,
    "tanh": lambda a: 5.0 / 3,
    "relu": lambda a: math.sqrt(2.0),
    "leaky_relu": lambda a: math.sqrt(2.0 / (1 + a * a)),
    "selu": lambda a: 3.0 / 4,
}


def _fan(mode: str, fi: float, fo: float) -> float:
    return {"fan_in": fi, "fan_out": fo, "fan_avg": (fi + fo) / 2, "fan_geo_avg": math.sqrt(fi * fo)}[mode]


# (kind, params, family, expected(fan_in, fan_out)). family "normal": the std; "truncated": the
# target std sqrt(variance) of the sample (stddev parameter = target / .8796, bounds +-2 stddev
# parameters); "uniform": the limit L of U[-L, L).
Expected = Callable[[float, float], float]
FAN_CASES: list[tuple[str, dict, str, Expected]] = [
    ("glorot_uniform", {}, "uniform", lambda fi, fo: math.sqrt(6 / (fi + fo))),
    ("glorot_normal", {}, "truncated", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("xavier_uniform", {}, "uniform", lambda fi, fo: math.sqrt(6 / (fi + fo))),
    ("xavier_uniform", {"gain": 2.5}, "uniform", lambda fi, fo: 2.5 * math.sqrt(6 / (fi + fo))),
    ("xavier_normal", {}, "normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("xavier_normal", {"gain": 0.4}, "normal", lambda fi, fo: 0.4 * math.sqrt(2 / (fi + fo))),
    ("he", {}, "normal", lambda fi, fo: math.sqrt(2 / fi)),
    ("he_normal", {}, "truncated", lambda fi, fo: math.sqrt(2 / fi)),
    ("he_uniform", {}, "uniform", lambda fi, fo: math.sqrt(6 / fi)),
    ("lecun_normal", {}, "truncated", lambda fi, fo: math.sqrt(1 / fi)),
    ("lecun_uniform", {}, "uniform", lambda fi, fo: math.sqrt(3 / fi)),
]
KAIMING = [
    {},  # PyTorch's defaults: a=0, fan_in, leaky_relu: gain sqrt(2)
    {"a": 0.2, "mode": "fan_out"},
    {"a": math.sqrt(5)},  # what torch.nn.Linear/Conv use for their weights
    {"nonlinearity": "relu", "mode": "fan_out"},
    {"nonlinearity": "tanh"},
    {"nonlinearity": "selu", "mode": "fan_out"},
    {"nonlinearity": "sigmoid"},
    {"nonlinearity": "conv2d"},
]


def _kaiming_gain(p: dict) -> float:
    return TORCH_GAINS[p.get("nonlinearity", "leaky_relu")](p.get("a", 0.0))


def _kaiming_fan(p: dict, fi: float, fo: float) -> float:
    return _fan(p.get("mode", "fan_in"), fi, fo)


for _p in KAIMING:
    FAN_CASES.append(
        (
            "kaiming_uniform",
            _p,
            "uniform",
            lambda fi, fo, p=_p: _kaiming_gain(p) * math.sqrt(3 / _kaiming_fan(p, fi, fo)),
        )
    )
    FAN_CASES.append(
        ("kaiming_normal", _p, "normal", lambda fi, fo, p=_p: _kaiming_gain(p) / math.sqrt(_kaiming_fan(p, fi, fo)))
    )
for _mode in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg"):
    _params = {"scale": 0.7, "mode": _mode}

    def _sd(fi: float, fo: float, m: str = _mode) -> float:
        return math.sqrt(0.7 / _fan(m, fi, fo))

    def _limit(fi: float, fo: float, m: str = _mode) -> float:
        return math.sqrt(3 * 0.7 / _fan(m, fi, fo))

    FAN_CASES.append(("variance_scaling", {**_params, "distribution": "normal"}, "normal", _sd))
    FAN_CASES.append(("variance_scaling", {**_params, "distribution": "truncated_normal"}, "truncated", _sd))
    FAN_CASES.append(("variance_scaling", {**_params, "distribution": "uniform"}, "uniform", _limit))
FAN_CASES.append(("variance_scaling", {}, "truncated", lambda fi, fo: math.sqrt(1 / fi)))  # defaults

FILL_KINDS = {"zeros", "ones", "constant", "broadcast"}
PLAIN_KINDS = {"random_normal", "random_uniform", "truncated_normal", "sparse"}  # sparse: test_sparse.py
STRUCTURED_KINDS = {"orthogonal", "delta_orthogonal", "identity", "dirac"}  # test_structured.py


def test_every_registered_initializer_is_covered() -> None:
    covered = {kind for kind, *_ in FAN_CASES} | FILL_KINDS | PLAIN_KINDS | STRUCTURED_KINDS
    assert covered == set(REGISTRY)
    assert {k for k, d in REGISTRY.items() if d.fan_based} == {kind for kind, *_ in FAN_CASES}


# -- checks ------------------------------------------------------------------------------------


def _check_fraction(x: np.ndarray, within: float, p: float) -> None:
    observed = float(np.mean(np.abs(x) < within))
    assert abs(observed - p) <= 6 * math.sqrt(p * (1 - p) / x.size), (observed, p)


def check_normal(x: np.ndarray, mean: float, std: float) -> None:
    v = x.astype(np.float64).ravel()
    n = v.size
    assert abs(v.mean() - mean) <= 6 * std / math.sqrt(n), (v.mean(), mean)
    assert abs(v.std() - std) <= 6 * std / math.sqrt(2 * n), (v.std(), std)
    _check_fraction(v - mean, std, P_WITHIN_1SD)  # the shape of a normal, not just its moments
    # Not truncated: P(|z| > 3) = 2.7e-3, so P(no such draw among n >= 13824) < e^-37.
    assert np.abs(v - mean).max() > 3 * std


def check_truncated(x: np.ndarray, target_std: float) -> None:
    """Zero-mean normal truncated to [-2, 2] stddev parameters, whose sample std is `target_std`."""
    param = target_std / TRUNC
    v = x.astype(np.float64).ravel()
    n = v.size
    assert abs(v.mean()) <= 6 * target_std / math.sqrt(n), v.mean()
    assert abs(v.std() - target_std) <= 6 * target_std / math.sqrt(2 * n), (v.std(), target_std)
    # The bound in the compute precision: |a5 * t| <= 2 * float32(stddev) exactly, since |t| < 2.
    bound = 2 * np.float32(param)
    assert np.abs(x).max() <= bound
    _check_fraction(v, param, P_WITHIN_1SD_TRUNC)
    # Truncated at 2, not tighter: P(no draw within t of +2) = exp(-n t phi(2) / .9545) = e^-20.
    t = 20 * math.erf(2 / math.sqrt(2)) / (PHI_2 * n) * param
    assert v.max() > 2 * param - t and v.min() < -2 * param + t


def check_uniform(x: np.ndarray, low: float, high: float) -> None:
    """U[low, high): the range in the compute precision, the moments and the extremes."""
    v = x.astype(np.float64).ravel()
    n = v.size
    width = high - low
    compute = x.dtype.type if x.dtype in (np.float32, np.float64) else np.float32
    assert x.min() >= compute(low) and x.max() < compute(high)
    std = width / math.sqrt(12)
    assert abs(v.mean() - (low + high) / 2) <= 6 * std / math.sqrt(n)
    assert abs(v.std() - std) <= 6 * std / math.sqrt(2 * n)
    _check_fraction(v - (low + high) / 2, width / 4, 0.5)
    gap = 20 * width / n  # P(no draw within `gap` of an end) = (1 - 20/n)^n ~ e^-20
    assert v.min() < low + gap and v.max() > high - gap


def _check_family(x: np.ndarray, family: str, value: float) -> None:
    if family == "normal":
        check_normal(x, 0.0, value)
    elif family == "truncated":
        check_truncated(x, value)
    else:
        check_uniform(x, -value, value)


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize(
    ("kind", "params", "family", "expected"),
    [pytest.param(*case, id=f"{case[0]}({','.join(f'{k}={v}' for k, v in case[1].items())})") for case in FAN_CASES],
)
def test_fan_based(engine, layer, kind, params, family, expected) -> None:
    shape, (fi, fo) = SHAPES[layer]
    x = engine.generate(spec(kind, shape, name=f"{kind}/{sorted(params.items())}", **params), seed=SEED)
    assert x.shape == shape and x.dtype == np.float32
    _check_family(x, family, expected(fi, fo))


def test_fan_based_channels_first(engine) -> None:
    """PyTorch layout `[out, in, kh, kw]`: kaiming's fans are PyTorch's (fan_in = in * kh * kw)."""
    x = engine.generate(spec("kaiming_normal", (128, 64, 3, 3), fan_axes=CHANNELS_FIRST, a=0.1), seed=SEED)
    check_normal(x, 0.0, math.sqrt(2 / (1 + 0.01)) / math.sqrt(64 * 9))
    x = engine.generate(spec("glorot_uniform", (128, 64, 3, 3), fan_axes=CHANNELS_FIRST), seed=SEED)
    check_uniform(x, -math.sqrt(6 / (64 * 9 + 128 * 9)), math.sqrt(6 / (64 * 9 + 128 * 9)))


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("a", [0.0, 0.01, 0.2, math.sqrt(5)])
def test_gain_table_is_pytorch(nonlinearity, a) -> None:
    assert set(NONLINEARITIES) == set(TORCH_GAINS)
    assert gain(nonlinearity, a) == pytest.approx(TORCH_GAINS[nonlinearity](a), rel=1e-15)


@pytest.mark.parametrize("layer", list(SHAPES))
def test_random_normal(engine, layer) -> None:
    shape, _ = SHAPES[layer]
    check_normal(engine.generate(spec("random_normal", shape, mean=0.3, stddev=0.05), seed=SEED), 0.3, 0.05)
    check_normal(engine.generate(spec("random_normal", shape, name="default"), seed=SEED), 0.0, 0.01)


@pytest.mark.parametrize("layer", list(SHAPES))
def test_random_uniform(engine, layer) -> None:
    shape, _ = SHAPES[layer]
    check_uniform(engine.generate(spec("random_uniform", shape, min=-0.2, max=0.6), seed=SEED), -0.2, 0.6)
    check_uniform(engine.generate(spec("random_uniform", shape, name="default"), seed=SEED), 0.0, 1.0)


@pytest.mark.parametrize("layer", list(SHAPES))
def test_truncated_normal_default(engine, layer) -> None:
    """JAX's truncated_normal(stddev=1e-2): N(0, 1e-2^2) truncated to [-2, 2] standard deviations,
    so the sample std is 1e-2 * .8796."""
    shape, _ = SHAPES[layer]
    check_truncated(engine.generate(spec("truncated_normal", shape), seed=SEED), 0.01 * TRUNC)


def _truncated_moments(mean: float, sd: float, lower: float, upper: float) -> tuple[float, float]:
    """Mean and std of N(mean, sd^2) truncated to [mean + lower sd, mean + upper sd]."""

    def pdf(z: float) -> float:
        return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    mass = (math.erf(upper / math.sqrt(2)) - math.erf(lower / math.sqrt(2))) / 2
    shift = (pdf(lower) - pdf(upper)) / mass
    var = 1 + (lower * pdf(lower) - upper * pdf(upper)) / mass - shift**2
    return mean + sd * shift, sd * math.sqrt(var)


@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize(("mean", "sd", "lower", "upper"), [(1.0, 0.5, -1.0, 1.5), (-0.2, 0.03, 0.0, 3.0)])
def test_truncated_normal_asymmetric(engine, layer, mean, sd, lower, upper) -> None:
    shape, _ = SHAPES[layer]
    variable = spec("truncated_normal", shape, mean=mean, stddev=sd, lower=lower, upper=upper)
    x = engine.generate(variable, seed=SEED)
    v = x.astype(np.float64).ravel()
    mu, std = _truncated_moments(mean, sd, lower, upper)
    mass = (math.erf(upper / math.sqrt(2)) - math.erf(lower / math.sqrt(2))) / 2
    assert abs(v.mean() - mu) <= 6 * std / math.sqrt(v.size)
    assert abs(v.std() - std) <= 6 * std / math.sqrt(2 * v.size)
    # Inside [mean + lower sd, mean + upper sd] up to one float32 rounding of mean + sd * t.
    lo, hi = mean + lower * sd, mean + upper * sd
    ulp = 2.0**-23 * max(abs(lo), abs(hi), abs(mean))
    assert v.min() >= lo - ulp and v.max() <= hi + ulp
    # Reaches both bounds: P(no draw within sd/2 of a bound) = (1 - p_edge)^n <= e^-20.
    for edge, inner in ((lower, lower + 0.5), (upper, upper - 0.5)):
        p_edge = abs(math.erf(edge / math.sqrt(2)) - math.erf(inner / math.sqrt(2))) / 2 / mass
        assert v.size * p_edge >= 20
    assert v.min() < lo + 0.5 * sd and v.max() > hi - 0.5 * sd


@pytest.mark.parametrize("layer", list(SHAPES))
def test_fills(engine, layer) -> None:
    shape, _ = SHAPES[layer]
    np.testing.assert_array_equal(engine.generate(spec("zeros", shape), seed=SEED), np.zeros(shape, np.float32))
    np.testing.assert_array_equal(engine.generate(spec("ones", shape), seed=SEED), np.ones(shape, np.float32))
    constant = engine.generate(spec("constant", shape, value=-0.375), seed=SEED)
    np.testing.assert_array_equal(constant, np.full(shape, -0.375, np.float32))
    row = np.arange(shape[-1], dtype=np.float64) * 0.5 - 3
    broadcast = engine.generate(spec("broadcast", shape, base=base_tensor(row)), seed=SEED)
    np.testing.assert_array_equal(broadcast, np.broadcast_to(row.astype(np.float32), shape))
