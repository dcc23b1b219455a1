"""Tensor dtypes: what each one is, the precision its values are computed in, and the final cast.

Every random value is computed in float32, or in float64 for float64 and complex128, and cast once
to the requested dtype with round-to-nearest-even (numpy's and ml_dtypes' conversion), so a bfloat16
tensor is exactly the float32 tensor rounded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import ml_dtypes
import numpy as np


class Kind(enum.Enum):
    FLOAT = "float"
    COMPLEX = "complex"
    INT = "int"
    UINT = "uint"
    BOOL = "bool"


@dataclass(frozen=True)
class DTypeInfo:
    """A dtype of the contract: its numpy type and the real precision its values are computed in."""

    name: str
    numpy: np.dtype
    kind: Kind
    compute: np.dtype  # the real dtype random values are drawn and scaled in

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_inexact(self) -> bool:
        """Float or complex: the dtypes random initializers produce values for (GoMLX's rule)."""
        return self.kind in (Kind.FLOAT, Kind.COMPLEX)


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _entry(name: str, numpy: object, kind: Kind, compute: np.dtype = _F32) -> DTypeInfo:
    return DTypeInfo(name, np.dtype(numpy), kind, compute)


DTYPES: dict[str, DTypeInfo] = {
    d.name: d
    for d in (
        _entry("float32", np.float32, Kind.FLOAT),
        _entry("float64", np.float64, Kind.FLOAT, _F64),
        _entry("float16", np.float16, Kind.FLOAT),
        _entry("bfloat16", ml_dtypes.bfloat16, Kind.FLOAT),
        _entry("complex64", np.complex64, Kind.COMPLEX),
        _entry("complex128", np.complex128, Kind.COMPLEX, _F64),
        _entry("int8", np.int8, Kind.INT),
        _entry("int16", np.int16, Kind.INT),
        _entry("int32", np.int32, Kind.INT),
        _entry("int64", np.int64, Kind.INT),
        _entry("uint8", np.uint8, Kind.UINT),
        _entry("uint16", np.uint16, Kind.UINT),
        _entry("uint32", np.uint32, Kind.UINT),
        _entry("uint64", np.uint64, Kind.UINT),
        _entry("bool", np.bool_, Kind.BOOL),
    )
}

DEFAULT_DTYPE = "float32"


def lookup(name: str) -> DTypeInfo:
    """The contract dtype called `name` (KeyError for any other)."""
    return DTYPES[name]


def cast_final(values: np.ndarray, dtype: DTypeInfo) -> np.ndarray:
    """Cast computed values (float32/float64, complex64/complex128) to the requested dtype once,
    rounding to nearest even. Returns `values` itself when no conversion is needed."""
    if values.dtype == dtype.numpy:
        return values
    return values.astype(dtype.numpy)


def complex_of(real: np.dtype) -> np.dtype:
    """The complex dtype whose parts are `real`."""
    return np.dtype(np.complex64) if real == _F32 else np.dtype(np.complex128)
