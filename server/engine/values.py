"""Values given by the client (a constant, a gain, a scale), converted to the variable's dtype
without silent loss: what the elementwise and the whole-tensor initializers both check."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .dtypes import DTypeInfo, Kind
from .spec import SpecError


def representable(value: complex, dtype: DTypeInfo, path: str) -> complex:
    """`value` as the variable's dtype would hold it; SpecError when that would change it beyond
    float rounding (a fraction or overflow for integers, an imaginary part for real dtypes)."""
    value = complex(value)
    if dtype.kind is not Kind.COMPLEX and value.imag != 0:
        raise SpecError(path, f"{value} has an imaginary part but the dtype is {dtype.name}")
    if dtype.kind is Kind.BOOL:
        return complex(bool(value.real))
    if dtype.kind in (Kind.INT, Kind.UINT):
        info = np.iinfo(dtype.numpy)
        if value.real != int(value.real) or not info.min <= value.real <= info.max:
            raise SpecError(path, f"{value.real} is not representable as {dtype.name}")
        return complex(int(value.real))
    part = ml_dtypes.finfo(dtype.numpy)
    for component in (value.real, value.imag):
        if abs(component) > float(part.max):
            raise SpecError(path, f"{component} overflows {dtype.name}")
    return value
