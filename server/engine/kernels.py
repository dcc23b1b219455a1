"""Compiled block programs: one XLA executable per (family, precision, block count), never per
variable shape, so a model with 500 distinct shapes compiles nothing after warm-up.

A call generates ``n_blocks`` consecutive blocks of one variable. Block counts come from a small
fixed set of buckets (powers of four up to `MAX_CALL_BLOCKS`); a tail is generated with the next
bucket up and trimmed, which is exact because block b's values depend only on (key, b).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from . import rng, sampling

CALL_ELEMENTS = 1 << 18
"""Elements per full kernel call: measured fastest on CPU (bench/engine_throughput.py) and small
enough to pipeline. A performance setting, not part of the contract."""

MAX_CALL_BLOCKS = CALL_ELEMENTS // rng.BLOCK_ELEMENTS
BUCKETS = tuple(sorted({min(4**i, MAX_CALL_BLOCKS) for i in range(16) if 4 ** (i - 1) < MAX_CALL_BLOCKS}))


def bucket(n_blocks: int) -> int:
    """The smallest compiled block count >= n_blocks (n_blocks <= MAX_CALL_BLOCKS)."""
    for b in BUCKETS:
        if b >= n_blocks:
            return b
    raise ValueError(f"{n_blocks} blocks exceed one call ({MAX_CALL_BLOCKS})")


@functools.cache
def program(family: str, precision: str, n_blocks: int):
    """The jitted block program; XLA compiles it once per device it runs on."""
    bits = sampling.PRECISIONS[precision][1]

    def run(header, coefficients):  # header: uint32 (key0, key1, first block, counter base)
        words = rng.block_words(header[:2], header[2], header[3], n_blocks, bits)
        return sampling.transform(words, family, precision, coefficients)

    return jax.jit(run)


def run(
    device: jax.Device,
    family: str,
    precision: str,
    key: rng.Key,
    block0: int,
    n_blocks: int,
    counter_base: int,
    coefficients: tuple[float, ...],
) -> np.ndarray:
    """Blocks [block0, block0 + n_blocks) of one sub-stream, on `device`, as a host array."""
    dtype = sampling.PRECISIONS[precision][0]
    # Two packed arrays: each transfer to the device costs about 20 us, a tenth of a small call.
    header = np.asarray((key[0], key[1], block0, counter_base), np.uint32)
    args = jax.device_put((header, np.asarray(coefficients, dtype)), device)
    return np.asarray(program(family, precision, n_blocks)(*args))


def warm(device: jax.Device, precisions: tuple[str, ...] = tuple(sampling.PRECISIONS)) -> int:
    """Compile every (family, precision, bucket) program on `device`; returns how many ran."""
    count = 0
    for precision in precisions:
        for family in sampling.FAMILIES:
            for n in BUCKETS:
                coefficients = (0.0, 1.0, -np.inf, np.inf, 0.0, 1.0)
                run(device, family, precision, (0, 0), 0, n, 0, coefficients)
                count += 1
    return count
