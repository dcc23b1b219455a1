"""Digests of a fixed set of requests and RNG key checks, printed as JSON by a fresh process.

test_determinism.py runs this script under different ``XLA_FLAGS=--xla_force_host_platform_device_count``
and ``jax_threefry_partitionable`` settings, and compares its output with the same computed in the
test process (it imports PROBE_CASES, digests and key_checks from here).

    python engine_probe.py PARTITIONABLE        (PARTITIONABLE: 0 or 1)
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
from engine_helpers import base_tensor, digest, spec

from weightgen.server.engine import Engine, VariableSpec, WorkerPool, kernels, rng

# Small tensors, so that a fresh process compiles few block programs (XLA compiles each program once
# per device, about 0.3 s each). The first case is a column slice of a tensor four call windows
# long: four whole-window calls, which the pool spreads over its devices.
PROBE_CASES: list[tuple[str, VariableSpec, int]] = [
    ("normal_spread", spec("random_normal", (64, 16384), name="spread", slice=((0, 64), (100, 110))), 11),
    ("uniform", spec("random_uniform", (30, 30), min=-1.0, max=2.0), 12),
    ("he_normal_conv", spec("he_normal", (3, 3, 4, 8), name="conv/kernel"), 13),
    ("complex64_normal", spec("random_normal", (16, 16), "complex64", stddev=1.0), 14),
    ("float64_uniform_rows", spec("random_uniform", (10, 20), "float64", slice=((3, 9), (0, 20))), 15),
    ("complex128_he", spec("he", (8, 12), "complex128"), 16),
    ("bfloat16_glorot", spec("glorot_uniform", (16, 32), "bfloat16"), 17),
    ("truncated_seed_max", spec("truncated_normal", (1000,), stddev=3.0, lower=-1.0, upper=0.5), 2**64 - 1),
    ("orthogonal", spec("orthogonal", (16, 8)), 18),
    ("dirac_int8", spec("dirac", (3, 3, 4, 8), "int8", groups=2), 19),
    ("broadcast", spec("broadcast", (5, 3), base=base_tensor([7, 11, 17])), 20),
]
KEY_SEEDS = [1, 2**31, 2**32 - 1, 2**32, 2**32 + 7, 2**63 - 1, 2**63 + 5, 2**64 - 1, 0x0123456789ABCDEF]
FOLD_DATA = [0, 1, 255, 2**31, 2**32 - 1]


def digests(engine: Engine) -> dict[str, str]:
    return {label: digest(engine.generate(variable, seed=seed)) for label, variable, seed in PROBE_CASES}


def key_checks() -> dict[str, list]:
    """rng's keys next to jax.random's for the same seeds and data (raw uint32 key words)."""

    def words(key: jax.Array) -> list[int]:
        return [int(w) for w in np.asarray(key)]

    ours, theirs = [], []
    for seed in KEY_SEEDS:
        ours.append(list(rng.root_key(seed)))
        theirs.append(words(jax.random.PRNGKey(np.uint64(seed))))
        for data in FOLD_DATA:
            ours.append(list(rng.fold_in(rng.root_key(seed), data)))
            theirs.append(words(jax.random.fold_in(jax.random.PRNGKey(np.uint64(seed)), np.uint32(data))))
    return {"ours": ours, "jax": theirs}


def devices_used() -> int:
    """How many devices the block programs were compiled for: jit keeps one executable per device
    its (committed) arguments lived on."""
    return max(
        kernels.program(f, p, n)._cache_size()
        for f in ("normal", "uniform")
        for p in ("float32", "float64")
        for n in kernels.BUCKETS
    )


def main(partitionable: str) -> None:
    jax.config.update("jax_threefry_partitionable", partitionable == "1")
    engine = Engine(WorkerPool(jax.devices()))
    try:
        result = {
            "devices": len(engine.pool.devices),
            "platform": engine.pool.devices[0].platform,
            "partitionable": bool(jax.config.jax_threefry_partitionable),
            "digests": digests(engine),
            "devices_used": devices_used(),
            "keys": key_checks(),
        }
    finally:
        engine.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
