"""Cutting work into pieces: variables into streams balanced by bytes, and tensors into shards.

A tensor is a pure function of its spec, so any split gives the same bytes: parallel streams are
only about throughput, and a trainer rank can fetch just its shard (`shard_slice`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def balance(sizes: Sequence[int], groups: int) -> list[list[int]]:
    """Indexes of `sizes` split into at most `groups` non-empty groups of nearly equal total size
    (largest first onto the lightest group); each group keeps the original order."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    groups = min(groups, len(sizes))
    if groups <= 1:
        return [list(range(len(sizes)))] if sizes else []
    heap = [(0, g) for g in range(groups)]
    members: list[list[int]] = [[] for _ in range(groups)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        total, g = heapq.heappop(heap)
        members[g].append(index)
        heapq.heappush(heap, (total + sizes[index], g))
    return [sorted(m) for m in members if m]


def shard_slice(shape: Sequence[int], axis: int, rank: int, world: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges of rank `rank` of `world` when `shape` is split evenly along `axis`
    (the first `size % world` ranks get one more index), whole along every other axis."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    axis = axis % len(shape)
    size = int(shape[axis])
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return [(start, stop) if a == axis else (0, int(d)) for a, d in enumerate(shape)]


__all__ = ["balance", "shard_slice"]
