"""JAX adapter: weightgen's numpy arrays as JAX arrays (JAX is imported only when called).

JAX keeps 64-bit types only with ``jax_enable_x64``; without it, float64, int64, uint64 and
complex128 arrays would be silently narrowed, so they are refused with a clear error instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_WIDE = frozenset(np.dtype(t) for t in (np.float64, np.int64, np.uint64, np.complex128))


def array(value: np.ndarray, *, device: Any = None) -> Any:
    """One numpy array as a JAX array, on `device` (default: JAX's default device)."""
    import jax

    value = np.asarray(value)
    if value.dtype in _WIDE and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{value.dtype} needs jax_enable_x64 (jax.config.update('jax_enable_x64', True)); "
            "without it JAX would narrow the values"
        )
    return jax.device_put(value, device)


def to_jax(arrays: Mapping[str, np.ndarray], *, device: Any = None) -> dict[str, Any]:
    """`{name: array}` (what `Client.materialize` returns) as `{name: jax.Array}`."""
    return {name: array(value, device=device) for name, value in arrays.items()}


__all__ = ["array", "to_jax"]
