"""PyTorch adapter: weightgen's numpy arrays as torch tensors (torch is imported only when called).

bfloat16 has no numpy dtype of its own (ml_dtypes provides one torch does not know), so its
2-byte patterns travel as uint16 and are reinterpreted as ``torch.bfloat16``: no copy, no rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np


def tensor(array: np.ndarray, *, device: Any = None) -> Any:
    """One array as a torch tensor sharing its memory (on CPU), or copied to `device`."""
    import torch

    array = np.asarray(array)
    if not array.flags.writeable:  # torch wants writable memory; copy rather than warn
        array = array.copy()
    if array.dtype == ml_dtypes.bfloat16:
        out = torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
    else:
        out = torch.from_numpy(np.ascontiguousarray(array))
    return out if device is None else out.to(device)


def to_torch(arrays: Mapping[str, np.ndarray], *, device: Any = None) -> dict[str, Any]:
    """`{name: array}` (what `Client.materialize` returns) as `{name: torch.Tensor}`, ready for
    ``model.load_state_dict``."""
    return {name: tensor(array, device=device) for name, array in arrays.items()}


__all__ = ["tensor", "to_torch"]
