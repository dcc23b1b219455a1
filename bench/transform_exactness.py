"""How exactly the bit-to-float transforms can be reproduced outside XLA, on this backend.

    .venv/bin/python bench/transform_exactness.py

For implementers of checkers in other languages (docs/determinism.md). On the local JAX backend:

1. Uniform (exact arithmetic apart from the affine steps): the engine's values against numpy
   references that evaluate ``a0 + a1 * u`` and ``a4 + a5 * t`` either with one rounding (a fused
   multiply-add, computed exactly in float64 or via a 106-bit double-double and rounded once) or
   with two (multiply, round, add, round). XLA contracts these into FMAs; the count of mismatches
   says which reference reproduces it.
2. Normal float32: distance in ULPs between the engine's ``sqrt(2) * erf_inv(c)`` (XLA's float32
   erf_inv) and the correctly rounded value (scipy's float64 erfinv, rounded once), and the largest
   relative error.
3. XLA flags: digests of a few block programs under stock flags and under
   ``--xla_cpu_enable_fast_math=true`` (each in a subprocess).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erfinv

from weightgen.server.engine import kernels, rng, sampling

KEY = (3, 4)
BLOCKS = 4096  # 1M elements
FLAG_SETS = ("", "--xla_cpu_enable_fast_math=true")


def words(bits: int) -> np.ndarray:
    program = jax.jit(lambda k: rng.block_words(k, jnp.uint32(0), jnp.uint32(0), BLOCKS, bits))
    return np.asarray(program(np.asarray(KEY, np.uint32)))


def engine(family: str, precision: str, coefficients: tuple[float, ...]) -> np.ndarray:
    return kernels.run(jax.devices()[0], family, precision, KEY, 0, BLOCKS, 0, coefficients)


def fused(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """a + b * x rounded once to a's dtype (float32: exact in float64 then rounded; float64: a
    double-double product and sum, then rounded)."""
    if a.dtype == np.float32:
        return (a.astype(np.float64) + b.astype(np.float64) * x.astype(np.float64)).astype(np.float32)
    # Dekker/Veltkamp: the product b * x exactly as hi + lo, then a + hi + lo with one final rounding
    # (exact enough for these operands: |a| and |b * x| are of similar size, no catastrophic cases).
    split = 134217729.0  # 2^27 + 1

    def halves(v):
        t = split * v
        hi = t - (t - v)
        return hi, v - hi

    hi = b * x
    bh, bl = halves(b)
    xh, xl = halves(x)
    lo = ((bh * xh - hi) + bh * xl + bl * xh) + bl * xl
    s = a + hi
    z = s - a
    err = (a - (s - z)) + (hi - z)
    return s + (err + lo)


def unfused(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return a + b * x


def uniform_check() -> list[tuple[str, int, int, int]]:
    rows = []
    for precision, bits in (("float32", 32), ("float64", 64)):
        dtype, width, p = sampling.PRECISIONS[precision]
        u = (words(bits) >> (width - p)).astype(dtype) * dtype(2.0**-p)
        for low, high, scale, shift in ((-1 / 3, 0.7, 1.0, 0.0), (1e-3, 3.3, 1.0, 0.0), (0.0, 1.0, 1 / 3, 0.3)):
            coefficients = (*sampling.uniform(low, high, precision).coefficients[:4], shift, scale)
            a = np.asarray(coefficients, dtype)
            got = engine("uniform", precision, coefficients)
            refs = []
            for step in (fused, unfused):
                t = np.clip(step(a[0], a[1], u), a[2], a[3])
                refs.append(step(a[4], a[5], t))
            label = f"{precision} [{low:.4g}, {high:.4g}) then {shift:g} + {scale:.4g} * t"
            rows.append((label, got.size, int((got != refs[0]).sum()), int((got != refs[1]).sum())))
    return rows


def ulp_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    def ordered(v):
        i = v.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(x) - ordered(y))


def normal_check() -> dict[str, float]:
    c = (2 * (words(32) >> 9).astype(np.int64) + 1 - (1 << 23)).astype(np.float64) * 2.0**-23
    exact = np.sqrt(2.0) * erfinv(c)
    got = engine("normal", "float32", (0.0, 1.0, -np.inf, np.inf, 0.0, 1.0))
    d = ulp_distance(got, exact.astype(np.float32))
    relative = np.abs(got - exact) / np.abs(exact)
    tail = np.abs(exact) > 2.5
    return {
        "n": int(d.size),
        "exact": float((d == 0).mean()),
        "le1": float((d <= 1).mean()),
        "le4": float((d <= 4).mean()),
        "max_ulp": int(d.max()),
        "max_ulp_central": int(d[~tail].max()),
        "max_rel": float(relative.max()),
        "at": float(got[np.argmax(d)]),
    }


def digests() -> dict[str, str]:
    out = {}
    for family, coefficients in (
        ("uniform", (-1 / 3, 0.7, -1 / 3, 0.36, 0.0, 1.0)),
        ("normal", (0.0, 1.0, -np.inf, np.inf, 0.1, 0.37)),
        ("truncated", (0.1, 0.9, -2.0, 2.0, 0.0, 1.0)),
    ):
        for precision in ("float32", "float64"):
            values = engine("normal" if family == "truncated" else family, precision, coefficients)
            out[f"{family} {precision}"] = hashlib.sha256(values.tobytes()).hexdigest()[:16]
    return out


def main() -> None:
    if sys.argv[1:] == ["--digests"]:
        print(json.dumps(digests()))
        return
    print(f"weightgen transform exactness, {datetime.date.today().isoformat()}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, numpy {np.__version__}")
    print()
    print("1. uniform: mismatches against a numpy reference (elements differing)")
    print(f"{'case':>48}  {'elements':>9}  {'one rounding (FMA)':>19}  {'two roundings':>14}")
    for label, n, one, two in uniform_check():
        print(f"{label:>48}  {n:>9}  {one:>19}  {two:>14}")
    print()
    r = normal_check()
    print("2. normal float32: engine (XLA erf_inv) vs correctly rounded sqrt(2) * erfinv(c)")
    print(
        f"   {r['n']} values: {100 * r['exact']:.1f}% identical, {100 * r['le1']:.1f}% within 1 ULP, "
        f"{100 * r['le4']:.2f}% within 4 ULP; max {r['max_ulp']} ULP (at {r['at']:.4f}), "
        f"max {r['max_ulp_central']} ULP for |z| <= 2.5; max relative error {r['max_rel']:.2e}"
    )
    print()
    print("3. digests of block programs under XLA flags (each in a fresh process)")
    results = {}
    for flags in FLAG_SETS:
        env = dict(os.environ, XLA_FLAGS=flags)
        command = [sys.executable, __file__, "--digests"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[flags or "(stock)"] = json.loads(done.stdout.strip().splitlines()[-1])
    names = list(results)
    print(f"{'program':>18}  " + "  ".join(f"{n:>32}" for n in names) + "  same")
    for program in results[names[0]]:
        values = [results[n][program] for n in names]
        same = "yes" if len(set(values)) == 1 else "NO"
        print(f"{program:>18}  " + "  ".join(f"{v:>32}" for v in values) + f"  {same}")


if __name__ == "__main__":
    main()
