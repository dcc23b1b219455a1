"""Helpers shared by the engine tests (and by engine_probe.py, which runs in subprocesses)."""

from __future__ import annotations

import hashlib
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
