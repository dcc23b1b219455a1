"""Helpers shared by the engine tests (and by engine_probe.py, which runs in subprocesses)."""

from __future__ import annotations

import hashlib
import math
import sys
from typing import Any

import numpy as np

from weightgen.server.engine import BaseTensor, Engine, FanAxes, Initializer, VariableSpec

CHANNELS_FIRST = FanAxes(layout="channels_first")


def spec(
    kind: str,
    shape: tuple[int, ...],
    dtype: str = "float32",
    *,
    name: str = "w",
    slice: tuple[tuple[int, int], ...] = (),
    fan_axes: FanAxes | None = None,
    **params: Any,
) -> VariableSpec:
    """A VariableSpec with an initializer `kind` and its parameters."""
    return VariableSpec(
        name=name,
        shape=tuple(shape),
        dtype=dtype,
        initializer=Initializer(kind, params, fan_axes or FanAxes()),
        slice=tuple(slice),
    )


def base_tensor(values: Any, dtype: str = "float64") -> BaseTensor:
    """A BaseTensor holding `values` as little-endian C-order bytes (the wire's layout)."""
    array = np.asarray(values, np.dtype(dtype).newbyteorder("<"))
    return BaseTensor(dtype, array.shape, array.tobytes())


def le_bytes(array: np.ndarray) -> bytes:
    """The tensor's bytes as the wire has them: C order, little-endian (complex parts swapped one by one)."""
    array = np.ascontiguousarray(array)
    if sys.byteorder != "little" and array.dtype.itemsize > 1:
        array = array.byteswap()
    return array.tobytes()


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(le_bytes(array)).hexdigest()


def streamed(engine: Engine, variable: VariableSpec, seed: int) -> np.ndarray:
    """The tensor assembled from `engine.stream` (rather than `generate`)."""
    prepared = engine.prepare(variable, seed=seed)
    pieces = list(engine.stream(prepared))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, prepared.dtype.numpy)
    return flat.reshape(prepared.info.out_shape)


KS_C = math.sqrt(-math.log(1e-8 / 2) / 2)
"""Two-sample Kolmogorov-Smirnov at alpha = 1e-8: D <= KS_C * sqrt((n + m) / (n m))."""


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic of two 1-D samples."""
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, at, "right") / a.size - np.searchsorted(b, at, "right") / b.size)))


def ks_bound(n: int, m: int) -> float:
    """The largest statistic two samples of sizes n and m from one distribution reach at alpha = 1e-8."""
    return KS_C * math.sqrt((n + m) / (n * m))
