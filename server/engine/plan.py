"""Shapes: which ones are valid (`check_shape`), a variable's requested hyperslab as flat element
runs, and the blocks those runs need.

A hyperslab of a row-major tensor is a sequence of equal-length runs of consecutive flat indices,
in increasing order: the trailing axes that the slice covers whole merge into one run with the
first axis (from the end) that it cuts. A whole tensor is one run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import rng
from .spec import MAX_RANK, SpecError

MAX_RUNS_PER_PIECE = 4096

MAX_ELEMENTS = rng.MAX_BLOCKS * rng.BLOCK_ELEMENTS
"""The contract's largest variable: block indices are 32-bit."""


def check_shape(shape: tuple[int, ...]) -> int:
    """The element count of a valid shape (rank <= MAX_RANK, no negative dimension, at most
    MAX_ELEMENTS elements); SpecError otherwise. Cheap whatever the dims say: nothing is allocated,
    and a zero-size shape may have dimensions of any size."""
    if len(shape) > MAX_RANK:
        raise SpecError("shape", f"rank {len(shape)} exceeds {MAX_RANK}")
    for axis, d in enumerate(shape):
        if d < 0:
            raise SpecError(f"shape[{axis}]", f"dimension {d} is negative")
    size = 1
    for d in shape:
        size *= d
    if size > MAX_ELEMENTS:
        raise SpecError("shape", f"{list(shape)} has {size} elements, more than weightgen/2 allows ({MAX_ELEMENTS})")
    return size


def copy_runs(values: np.ndarray, positions: np.ndarray, length: int, out: np.ndarray | None = None) -> np.ndarray:
    """The runs values[p : p + length] for p in `positions` (increasing, all inside `values`), as the
    rows of `out` (shape (len(positions), length); a new array when None). Evenly spaced runs (a
    column shard: one per row) are one strided view copied once; others go through an index array
    (int64, one per element), which costs more than the values it moves."""
    if out is None:
        out = np.empty((positions.size, length), values.dtype)
    if positions.size == 0:
        return out
    steps = np.diff(positions)
    step = int(steps[0]) if steps.size else length
    if step >= length and bool((steps == step).all()):
        item = values.strides[0]
        out[...] = np.lib.stride_tricks.as_strided(
            values[int(positions[0]) :], shape=(positions.size, length), strides=(step * item, item), writeable=False
        )
    else:
        out[...] = values[(positions[:, None] + np.arange(length, dtype=np.int64)[None, :])]
    return out


@dataclass(frozen=True)
class Piece:
    """Part of the output: `starts.size` runs of `length` flat indices each, in output order."""

    starts: np.ndarray  # int64 flat indices, increasing
    length: int

    @property
    def size(self) -> int:
        return int(self.starts.size) * self.length

    def take(self, flat: np.ndarray) -> np.ndarray:
        """The piece's elements of a tensor whose flat element i is ``flat[i % flat.size]``: a
        tensor held whole (`flat` is all of it) or a base tiled over leading axes (broadcast).

        One run is a view when it does not wrap, else copies of the base's parts (at most
        ``length + 2 * flat.size`` elements when the base is shorter than the run). Several runs
        are `copy_runs` (evenly spaced ones a strided copy; others a gather through an int64 index)."""
        n = flat.size
        if self.starts.size == 1:
            at = int(self.starts[0]) % n
            if at + self.length <= n:
                return flat[at : at + self.length]
            if n >= self.length:  # the base's tail, then its head
                return np.concatenate([flat[at:], flat[: at + self.length - n]])
            return np.tile(flat, -(-(at + self.length) // n))[at : at + self.length]
        first = self.starts % n
        if int(first.max()) + self.length <= n and bool((np.diff(first) > 0).all()):
            return copy_runs(flat, first, self.length).reshape(-1)
        index = first[:, None] + np.arange(self.length, dtype=np.int64)[None, :]
        if int(first.max()) + self.length > n:  # some run wraps around the base
            index %= n
        return flat[index.ravel()]

    def block_ranges(self, block: int) -> list[tuple[int, int]]:
        """Half-open ranges of block indices the runs touch, merged and in order."""
        first = self.starts // block
        last = (self.starts + self.length - 1) // block
        if self.starts.size == 1 or (first[1:] <= last[:-1] + 1).all():
            return [(int(first[0]), int(last[-1]) + 1)]
        gaps = np.flatnonzero(first[1:] > last[:-1] + 1)
        lo = np.concatenate([[0], gaps + 1])
        hi = np.concatenate([gaps, [first.size - 1]])
        return [(int(first[a]), int(last[b]) + 1) for a, b in zip(lo, hi, strict=True)]

    def calls(self, block: int, window: int, total_blocks: int) -> list[tuple[int, int]]:
        """The kernel calls (first block, block count) that cover the piece, in order.

        Calls live in aligned windows of `window` blocks. Where the piece needs a good part of a
        window (a quarter or more of its blocks, from first to last) the call is the whole window:
        the same call for every slice and rank that touches it, so concurrent shards share one
        generation through the pool's single-flight and block cache, and a column shard costs one
        call per window rather than one per row. Elsewhere the call spans just the needed blocks.
        Calls that a run crosses between are adjacent, so their values concatenate."""
        calls: list[tuple[int, int]] = []
        span: tuple[int, int] | None = None  # needed blocks of the current window

        def flush() -> None:
            lo, hi = span
            w = lo // window
            if hi - lo >= window // 4:
                lo, hi = w * window, min((w + 1) * window, total_blocks)
            calls.append((lo, hi - lo))

        for first, end in self.block_ranges(block):
            at = first
            while at < end:
                part = (at, min(end, (at // window + 1) * window))
                if span is not None and span[0] // window == at // window:
                    span = (span[0], part[1])
                else:
                    if span is not None:
                        flush()
                    span = part
                at = part[1]
        if span is not None:
            flush()
        return calls


@dataclass(frozen=True)
class Plan:
    shape: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @staticmethod
    def of(shape: tuple[int, ...], slice_: tuple[tuple[int, int], ...] = ()) -> Plan:
        """The plan for `slice_` (one half-open (start, stop) per axis, or empty: everything)."""
        if not slice_:
            return Plan(tuple(shape), (0,) * len(shape), tuple(shape))
        if len(slice_) != len(shape):
            raise SpecError("slice", f"{len(slice_)} ranges for a tensor of rank {len(shape)}")
        for axis, ((a, b), d) in enumerate(zip(slice_, shape, strict=True)):
            if not 0 <= a <= b <= d:
                raise SpecError(f"slice[{axis}]", f"range [{a}, {b}) is reversed or outside [0, {d}]")
        return Plan(tuple(shape), tuple(a for a, _ in slice_), tuple(b for _, b in slice_))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.out_shape)

    @property
    def is_whole(self) -> bool:
        return self.start == (0,) * len(self.shape) and self.stop == self.shape

    def _runs(self) -> tuple[int, int, list[int], list[int]]:
        """(run length, first run's flat start, extents and strides of the outer axes)."""
        rank = len(self.shape)
        strides = [math.prod(self.shape[i + 1 :]) for i in range(rank)]
        cut = rank - 1
        while cut >= 0 and self.start[cut] == 0 and self.stop[cut] == self.shape[cut]:
            cut -= 1
        if cut < 0:  # whole tensor
            return math.prod(self.shape), 0, [], []
        length = (self.stop[cut] - self.start[cut]) * strides[cut]
        outer = [i for i in range(cut) if self.stop[i] - self.start[i] != 1]
        base = sum(self.start[i] * strides[i] for i in range(cut + 1))
        return (
            length,
            base,
            [self.stop[i] - self.start[i] for i in outer],
            [strides[i] for i in outer],
        )

    def pieces(self, max_elements: int, align: int) -> Iterator[Piece]:
        """The output as pieces of at most `max_elements` (at least one run), in order. A run longer
        than that is cut at multiples of `align` flat indices, so each cut lies in one aligned window."""
        if self.size == 0:
            return
        length, base, extents, strides = self._runs()
        n_runs = math.prod(extents)
        if length >= max_elements or n_runs == 1:
            for r in range(n_runs):
                start = base + (int(np.dot(np.unravel_index(r, extents), strides)) if extents else 0)
                at, end = start, start + length
                while at < end:
                    cut = min(end, (at // align + 1) * align)
                    yield Piece(np.array([at], np.int64), cut - at)
                    at = cut
            return
        # Capping the runs per piece bounds the calls a piece needs when runs are sparse; cutting
        # pieces where run starts enter a new `align` window keeps each window's needs in one piece.
        per_piece = max(1, min(MAX_RUNS_PER_PIECE, max_elements // length))
        stride_vec = np.asarray(strides, np.int64)
        carried = np.zeros(0, np.int64)
        for r0 in range(0, n_runs, per_piece):
            ids = np.arange(r0, min(n_runs, r0 + per_piece), dtype=np.int64)
            index = np.stack(np.unravel_index(ids, extents), axis=1)
            starts = np.concatenate([carried, base + index @ stride_vec])
            windows = starts // align
            groups = np.split(starts, np.flatnonzero(windows[1:] != windows[:-1]) + 1)
            for group in groups[:-1]:
                for at in range(0, group.size, per_piece):
                    yield Piece(group[at : at + per_piece], length)
            carried = groups[-1]
        for at in range(0, carried.size, per_piece):
            yield Piece(carried[at : at + per_piece], length)
