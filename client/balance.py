"""Variables into streams balanced by bytes, for a fetch over parallel streams.

A tensor is a pure function of its spec, so any split gives the same bytes: parallel streams are
only about throughput. (Shards of one tensor, for trainer ranks, are `weightgen.client.sharding`.)
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


__all__ = ["balance"]
