"""Chooses B, the contract's block size: generation throughput versus wasted elements.

    python bench/block_size.py

Throughput: float32 normal and uniform, calls of 2^18 elements (the engine's call size), best of
5 repeats, for several B. Waste: elements generated / elements delivered, for a GPT-2-small-sized
model fetched whole (small variables round up to a block) and fetched as 4 column shards per
weight (tensor parallelism: each row's run touches partial blocks). Ratios are against B = 1024.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from weightgen.server.engine import kernels, rng, sampling
from weightgen.server.engine.plan import Plan

CANDIDATES = (256, 512, 1024, 2048, 4096, 16384, 65536)
CALL = kernels.CALL_ELEMENTS


def program(family: str, block: int):
    def run(key, block0, coefficients):
        words = rng.block_words(key, block0, np.uint32(0), CALL // block, 32, block)
        return sampling.transform(words, family, "float32", coefficients)

    return jax.jit(run)


def throughput(family: str, block: int, repeats: int = 5, calls: int = 16) -> float:
    fn = program(family, block)
    key = np.asarray([0, 42], np.uint32)
    a = np.asarray([0.0, 1.0, -np.inf, np.inf, 0.0, 1.0], np.float32)
    fn(key, np.uint32(0), a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(calls):
            np.asarray(fn(key, np.uint32(i * (CALL // block)), a))
        best = min(best, time.perf_counter() - t)
    return calls * CALL * 4 / best / 1e9


def gpt2_small() -> list[tuple[int, ...]]:
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = [(vocab, d), (ctx, d), (d,), (d,)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes


def waste(block: int, shards: int) -> float:
    generated = delivered = 0
    for shape in gpt2_small():
        if len(shape) == 2 and shards > 1 and shape[1] % shards == 0:
            width = shape[1] // shards
            slices = [((0, shape[0]), (r * width, (r + 1) * width)) for r in range(shards)]
        else:
            slices = [()]
        for slice_ in slices:
            plan = Plan.of(shape, slice_)
            delivered += plan.size
            for piece in plan.pieces(CALL, CALL):
                generated += sum((hi - lo) * block for lo, hi in piece.block_ranges(block))
    return generated / delivered


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, call = {CALL} elements")
    header = ("B", "normal GB/s", "uniform GB/s", "vs B=1024", "waste whole", "waste 4 col shards")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 12, 13, 10, 12, 19), strict=True)))
    base = None
    rows = []
    for block in CANDIDATES:
        n, u = throughput("normal", block), throughput("uniform", block)
        rows.append((block, n, u))
        if block == 1024:
            base = n
    for block, n, u in rows:
        print(f"{block:>6} {n:>12.3f} {u:>13.3f} {n / base:>10.2f} {waste(block, 1):>12.3f} {waste(block, 4):>19.3f}")


if __name__ == "__main__":
    main()
