"""weightgen's engine: initializer formulas, the determinism contract and compiled block programs.

Importing it enables JAX's 64-bit types, which the float64 and uint64 programs need; every program
states its dtypes, so nothing else changes.
"""

import jax

jax.config.update("jax_enable_x64", True)

from .cache import Cancelled, WholeCache  # noqa: E402
from .engine import Engine, LimitError, Prepared, TensorInfo, check_shape, validate_name  # noqa: E402
from .initializers import REGISTRY  # noqa: E402
from .rng import BLOCK_ELEMENTS, GENERATOR  # noqa: E402
from .spec import BaseTensor, FanAxes, Initializer, SpecError, VariableSpec  # noqa: E402
from .workers import WorkerPool, configure_host_devices  # noqa: E402

__all__ = [
    "BLOCK_ELEMENTS",
    "GENERATOR",
    "REGISTRY",
    "BaseTensor",
    "Cancelled",
    "Engine",
    "FanAxes",
    "Initializer",
    "LimitError",
    "Prepared",
    "SpecError",
    "TensorInfo",
    "VariableSpec",
    "WholeCache",
    "WorkerPool",
    "check_shape",
    "configure_host_devices",
    "validate_name",
]
