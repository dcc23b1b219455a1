"""Two small Flax models, NNX and Linen, whose parameters carry sharding annotations for a
``("data", "model")`` mesh; shared by test_client_flax.py and flax_mesh.py (its 4-device run)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

AXES = ("data", "model")
SEED = 29


class NnxModel(nnx.Module):
    """An embedding split over both mesh axes, a column-parallel and a row-parallel (bfloat16)
    linear layer, a bias split 4 ways over ("data", "model"), and unannotated norms."""

    def __init__(self, rngs: nnx.Rngs):
        part = nnx.with_partitioning
        self.embed = nnx.Embed(16, 8, rngs=rngs, embedding_init=part(nnx.initializers.normal(), ("data", "model")))
        self.up = nnx.Linear(
            8,
            12,
            rngs=rngs,
            kernel_init=part(nnx.initializers.lecun_normal(), (None, "model")),
            bias_init=part(nnx.initializers.zeros_init(), (("data", "model"),)),
        )
        self.norm = nnx.LayerNorm(12, rngs=rngs)
        self.bn = nnx.BatchNorm(12, use_running_average=True, rngs=rngs)
        self.down = nnx.Linear(
            12,
            8,
            rngs=rngs,
            param_dtype=jnp.bfloat16,
            kernel_init=part(nnx.initializers.lecun_normal(), ("model", None)),
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.down(self.bn(self.norm(self.up(self.embed(tokens)))))


NNX_SPECS = {
    "embed/embedding": ("data", "model"),
    "up/kernel": (None, "model"),
    "up/bias": (("data", "model"),),
    "down/kernel": ("model", None),
}
"""The annotated leaves' PartitionSpecs; every other leaf is replicated."""


def nnx_abstract(mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph and abstract state (NNX needs a mesh in context for annotated variables)."""
    with jax.set_mesh(mesh):
        return nnx.split(nnx.eval_shape(lambda: NnxModel(nnx.Rngs(0))))


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        part = nn.with_partitioning
        x = nn.Dense(
            12,
            kernel_init=part(nn.initializers.lecun_normal(), (None, "model")),
            bias_init=part(nn.initializers.zeros_init(), ("model",)),
        )(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(8, kernel_init=part(nn.initializers.lecun_normal(), ("model", None)))(x)


LINEN_SPECS = {
    "params/Dense_0/kernel": (None, "model"),
    "params/Dense_0/bias": ("model",),
    "params/Dense_1/kernel": ("model", None),
}


def linen_shapes() -> dict:
    """``jax.eval_shape(model.init, ...)``: annotated kernels come as ``nn.Partitioned`` boxes."""
    return jax.eval_shape(LinenModel().init, jax.random.key(0), jnp.ones((2, 8)))
