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

from weightgen.v1 import wire


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
_KIND_OF = {"f": Kind.FLOAT, "c": Kind.COMPLEX, "i": Kind.INT, "u": Kind.UINT, "b": Kind.BOOL}


def _info(name: str, numpy: np.dtype) -> DTypeInfo:
    """What the engine needs to know of a dtype of the API's table (weightgen.v1.wire.DTYPES, the one
    list of dtypes): its kind, and the precision its values are computed in (float64 for the 8-byte
    floats and the 16-byte complexes, float32 for the rest)."""
    kind = Kind.FLOAT if numpy == np.dtype(ml_dtypes.bfloat16) else _KIND_OF[numpy.kind]
    wide = (kind is Kind.FLOAT and numpy.itemsize == 8) or (kind is Kind.COMPLEX and numpy.itemsize == 16)
    return DTypeInfo(name, numpy, kind, _F64 if wide else _F32)


DTYPES: dict[str, DTypeInfo] = {name: _info(name, numpy) for name, numpy in wire.DTYPES.values()}

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
