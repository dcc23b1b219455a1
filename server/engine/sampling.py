"""Raw bits to floats: the exact transforms of the determinism contract (docs/determinism.md).

With p = 23 mantissa bits for float32 (52 for float64), m = bits >> (32 - p) (or 64 - p):

    uniform   u = m * 2^-p                         in [0, 1 - 2^-p], exact
    centred   c = (2m + 1 - 2^p) * 2^-p            in (-1, 1), exact, symmetric under m -> 2^p-1-m

Every distribution is one shape, evaluated in the compute precision:

    t = a0 + a1 * base              base = u (uniform family) or c (normal family)
    t = sqrt(2) * erf_inv(t)        normal family only: the inverse normal CDF
    t = clip(t, a2, a3)             keeps rounding inside the documented interval
    x = a4 + a5 * t

Uniform(lo, hi): a = (lo, hi - lo, lo, max(lo, prev(hi)), 0, 1). Normal(mean, std): a = (0, 1,
-inf, inf, mean, std). Normal truncated to [l, h] standard deviations: (a0, a1) map (-1, 1) onto
(erf(l/sqrt2), erf(h/sqrt2)) and (a2, a3) = (next(l), prev(h)), as jax.random.truncated_normal.

XLA compiles each `a + b * x` as a fused multiply-add (one rounding) on CPU; the values of the
contract are those, bit for bit, on one backend (docs/determinism.md says how far backends agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FAMILIES = ("uniform", "normal")
PRECISIONS = {"float32": (np.float32, 32, 23), "float64": (np.float64, 64, 52)}


@dataclass(frozen=True)
class Affine:
    """The six coefficients (a0..a5) of the distribution shape above, in the compute precision."""

    family: str
    coefficients: tuple[float, float, float, float, float, float]


def _prev(x: float, dtype: type) -> float:
    return float(np.nextafter(dtype(x), dtype(-np.inf)))


def _next(x: float, dtype: type) -> float:
    return float(np.nextafter(dtype(x), dtype(np.inf)))


def uniform(low: float, high: float, precision: str) -> Affine:
    """Uniform in [low, high) (low <= high); every value is `low` when [low, high) is empty in the
    compute precision (GoMLX's min + (max - min) * U with max == min)."""
    dtype = PRECISIONS[precision][0]
    top = max(float(dtype(low)), _prev(high, dtype))  # not below low: min == max gives min, not prev(max)
    return Affine("uniform", (low, high - low, low, top, 0.0, 1.0))


def normal(
    mean: float, stddev: float, lower: float = -math.inf, upper: float = math.inf, precision: str = "float32"
) -> Affine:
    """mean + stddev * z, z standard normal, truncated to [lower, upper] when those are finite."""
    dtype = PRECISIONS[precision][0]
    if math.isinf(lower) and math.isinf(upper):
        return Affine("normal", (0.0, 1.0, -math.inf, math.inf, mean, stddev))
    ea, eb = math.erf(lower / math.sqrt(2)), math.erf(upper / math.sqrt(2))
    return Affine("normal", ((ea + eb) / 2, (eb - ea) / 2, _next(lower, dtype), _prev(upper, dtype), mean, stddev))


def transform(bits: jax.Array, family: str, precision: str, a: jax.Array) -> jax.Array:
    """Traced: raw uint32/uint64 words to values of `family` with coefficients `a` (shape [6])."""
    dtype, width, p = PRECISIONS[precision]
    m = bits >> (width - p)
    if family == "uniform":
        base = m.astype(dtype) * dtype(2.0**-p)
    else:
        signed = jnp.int32 if width == 32 else jnp.int64
        base = (2 * m.astype(signed) + (1 - (1 << p))).astype(dtype) * dtype(2.0**-p)
    t = a[0] + a[1] * base
    if family == "normal":
        t = dtype(math.sqrt(2.0)) * lax.erf_inv(t)
    t = jnp.clip(t, a[2], a[3])
    return a[4] + a[5] * t
