"""Fan-in and fan-out of a weight shape: the one place they are computed.

    fan_in  = prod(shape[in_axes])  * receptive
    fan_out = prod(shape[out_axes]) * receptive
    receptive = prod(shape[a] for a not in in_axes, out_axes or batch_axes)

With the channels-last preset (in = -2, out = -1) this is GoMLX's ``computeFanInFanOut`` and
JAX's ``_compute_fans``; the channels-first preset (in = 1, out = 0) is PyTorch's
``_calculate_fan_in_and_fan_out``. Rank 0 gives (1, 1) and rank 1 gives (d, d) (Keras's
convention); the fan-based initializers never use them, since they return zeros for rank <= 1.

Fans are exact integers made floats. Only a zero-size tensor can have fans beyond the largest float
(a dimension 0 beside dimensions of 2^62): they become inf, so the variance is 0, which no element
ever shows.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from .spec import FanAxes, SpecError

LAYOUTS = {"channels_last": ((-2,), (-1,)), "channels_first": ((1,), (0,))}


@dataclass(frozen=True)
class Fans:
    fan_in: float
    fan_out: float

    def denominator(self, mode: str) -> float:
        """The variance denominator of `mode` (fan_in, fan_out, fan_avg or fan_geo_avg)."""
        if mode == "fan_in":
            return self.fan_in
        if mode == "fan_out":
            return self.fan_out
        if mode == "fan_avg":
            return (self.fan_in + self.fan_out) / 2
        if mode == "fan_geo_avg":
            # 0 * inf is NaN, but the integer fans' product is 0.
            return 0.0 if 0 in (self.fan_in, self.fan_out) else math.sqrt(self.fan_in * self.fan_out)
        raise ValueError(f"unknown fan mode {mode!r}")


def _float(count: int) -> float:
    """`count` as a float: math.inf when it exceeds the largest float (float() raises there)."""
    return float(count) if count <= sys.float_info.max else math.inf


def _normalise(axes: tuple[int, ...], rank: int, what: str) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise SpecError(f"initializer.fan_axes.{what}", f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise SpecError(f"initializer.fan_axes.{what}", f"axes {list(axes)} repeat an axis")
    return tuple(out)


def resolve_axes(shape: tuple[int, ...], axes: FanAxes) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(in_axes, out_axes, batch_axes) as non-negative axis numbers, for a shape of rank >= 2."""
    rank = len(shape)
    if axes.layout not in LAYOUTS:
        raise SpecError("initializer.fan_axes.layout", f"unknown layout {axes.layout!r}")
    preset_in, preset_out = LAYOUTS[axes.layout]
    ins = _normalise(axes.in_axes or preset_in, rank, "in_axes")
    outs = _normalise(axes.out_axes or preset_out, rank, "out_axes")
    batch = _normalise(axes.batch_axes, rank, "batch_axes")
    if set(ins) & set(outs) or set(batch) & (set(ins) | set(outs)):
        raise SpecError("initializer.fan_axes", f"in {list(ins)}, out {list(outs)} and batch {list(batch)} overlap")
    return ins, outs, batch


CHANNELS_LAST = FanAxes()


def compute_fans(shape: tuple[int, ...], axes: FanAxes = CHANNELS_LAST) -> Fans:
    """Fans of `shape` under `axes` (see the module docstring for the formula)."""
    rank = len(shape)
    if rank == 0:
        return Fans(1.0, 1.0)
    if rank == 1:
        return Fans(_float(shape[0]), _float(shape[0]))
    ins, outs, batch = resolve_axes(shape, axes)
    receptive = math.prod(d for i, d in enumerate(shape) if i not in ins and i not in outs and i not in batch)
    fan_in = math.prod(shape[i] for i in ins) * receptive
    fan_out = math.prod(shape[i] for i in outs) * receptive
    return Fans(_float(fan_in), _float(fan_out))
