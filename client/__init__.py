"""weightgen's Python client: initial weights from a weightgen server as numpy arrays, torch or
JAX tensors, or a safetensors file. Needs no JAX.

    from weightgen.client import Client, Variable, init

    with Client("localhost:50051") as client:
        arrays = client.materialize(
            [Variable("fc.weight", (256, 784), init.kaiming_uniform(a=5**0.5, layout="channels_first")),
             Variable("fc.bias", (256,), "zeros")],
            seed=42,
        )

For trainers (docs/trainers.md): `materialize_module` fills a PyTorch module built on the meta
device, `materialize_tree` a JAX pytree of ShapeDtypeStruct (optionally sharded over devices), and
`weightgen.client.sharding` fetches one rank's shards, with fans from the full shape.
`weightgen.client.hf` (docs/huggingface.md): Hugging Face models' own init, and seed checkpoints.
"""

from . import errors, sharding
from .assemble import Tensor
from .client import DEFAULT_TARGET, Client, Session
from .errors import DigestMismatchError, WeightgenError
from .files import Manifest, read_manifest
from .jax import materialize_tree, to_jax
from .specs import Variable, init
from .torch import materialize_module, to_torch

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
    "materialize_module",
    "materialize_tree",
    "read_manifest",
    "sharding",
    "to_jax",
    "to_torch",
]
