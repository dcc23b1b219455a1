"""weightgen's Python client: initial weights from a weightgen server as numpy arrays, torch or
JAX tensors, or a safetensors file. Needs no JAX.

    from weightgen.client import Client, Variable, init

    with Client("localhost:50051") as client:
        arrays = client.materialize(
            [Variable("fc.weight", (256, 784), init.kaiming_uniform(a=5**0.5, layout="channels_first")),
             Variable("fc.bias", (256,), "zeros")],
            seed=42,
        )
"""

from . import errors
from .assemble import Tensor
from .client import DEFAULT_TARGET, Client, Session
from .errors import DigestMismatchError, WeightgenError
from .files import Manifest, read_manifest
from .jax import to_jax
from .specs import Variable, init
from .torch import to_torch

__all__ = [
    "DEFAULT_TARGET",
    "Client",
    "DigestMismatchError",
    "Manifest",
    "Session",
    "Tensor",
    "Variable",
    "WeightgenError",
    "errors",
    "init",
    "read_manifest",
    "to_jax",
    "to_torch",
]
