"""A JAX parameter pytree fetched straight onto a device mesh: each device gets only its shard,
and every shard equals the same slice of a whole fetch.

    python examples/distributed/jax_mesh.py --server localhost:50051            # 2x2 mesh, 4 CPU devices
    python examples/distributed/jax_mesh.py --server localhost:50051 --mesh 4x1 --small

The script sets ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX starts, so a
laptop has 4 host devices. The parameters are ``jax.eval_shape`` of an init function (what
``jax.eval_shape(flax_model.init, ...)`` gives: a pytree of ``jax.ShapeDtypeStruct`` named like
Flax's ``params/h_0/mlp/c_fc/kernel``), placed with Megatron-style ``NamedSharding``s over a
``("data", "model")`` mesh; `materialize_tree` fetches each device's slice, as the sharding's
``addressable_devices_indices_map`` says, and builds the arrays without ever holding a whole
leaf. The check: for every leaf and device, the device's shard is bit-identical to the slice of
an unsharded fetch.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from weightgen.client import Client
from weightgen.client.jax import Leaf, materialize_tree

SIZES = {
    "gpt2-small": {"vocab": 50257, "context": 1024, "embed": 768, "layers": 12},
    "small": {"vocab": 1000, "context": 64, "embed": 64, "layers": 2},  # even: JAX shardings divide evenly
}


def init(key: jax.Array, vocab: int, context: int, embed: int, layers: int) -> dict:
    """GPT-2's parameters as a Flax model would name them, kernels [in, out] (only its shapes
    are used: jax.eval_shape never runs it)."""
    dense = jax.nn.initializers.lecun_normal()

    def linear(n_in: int, n_out: int) -> dict:
        return {"kernel": dense(key, (n_in, n_out)), "bias": jnp.zeros((n_out,))}

    def norm() -> dict:
        return {"scale": jnp.ones((embed,)), "bias": jnp.zeros((embed,))}

    params = {
        "wte": {"embedding": jax.random.normal(key, (vocab, embed))},
        "wpe": {"embedding": jax.random.normal(key, (context, embed))},
        "ln_f": norm(),
    }
    for i in range(layers):
        params[f"h_{i}"] = {
            "ln_1": norm(),
            "attn": {"c_attn": linear(embed, 3 * embed), "c_proj": linear(embed, embed)},
            "ln_2": norm(),
            "mlp": {"c_fc": linear(embed, 4 * embed), "c_proj": linear(4 * embed, embed)},
        }
    return {"params": params}


def megatron(mesh: jax.sharding.Mesh):
    """Leaf -> NamedSharding: column-parallel c_attn/c_fc (kernel columns over "model"),
    row-parallel c_proj (kernel rows over "model"), vocabulary-parallel embedding, the rest
    replicated; the "data" axis replicates (a 2-D mesh: each shard lives on 2 devices)."""

    def sharding(leaf: Leaf) -> NamedSharding:
        name = leaf.name
        if name.endswith(("c_attn/kernel", "c_fc/kernel")):
            spec = P(None, "model")
        elif name.endswith(("c_attn/bias", "c_fc/bias")):
            spec = P("model")
        elif name.endswith("c_proj/kernel") or name.endswith("wte/embedding"):
            spec = P("model", None)
        elif name.endswith("wpe/embedding"):
            spec = P(None, "model")
        else:
            spec = P()
        return NamedSharding(mesh, spec)

    return sharding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mesh", default="2x2", help="data x model, e.g. 2x2 or 4x1 or 1x4")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    size = SIZES["small" if args.small else "gpt2-small"]
    if not args.small:  # 50257 rows do not split evenly; pad the vocabulary as Megatron does
        size = {**size, "vocab": 50304}
    data, model = (int(n) for n in args.mesh.split("x"))
    mesh = jax.make_mesh((data, model), ("data", "model"), devices=jax.devices()[: data * model])
    shapes = jax.eval_shape(lambda k: init(k, **size), jax.random.key(0))

    with Client(args.server, timeout=600) as client:
        started = time.perf_counter()
        sharded = materialize_tree(shapes, client, seed=args.seed, shardings=megatron(mesh))
        jax.block_until_ready(sharded)
        sharded_seconds = time.perf_counter() - started
        started = time.perf_counter()
        whole = materialize_tree(shapes, client, seed=args.seed)
        whole_seconds = time.perf_counter() - started

    leaves = 0
    shards = 0
    fetched = 0
    total = 0
    ok = True
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(whole), jax.tree_util.tree_leaves(sharded), strict=True
    ):
        full = np.asarray(a)
        leaves += 1
        total += full.nbytes
        seen = set()
        for shard in b.addressable_shards:
            data_ = np.asarray(shard.data)
            shards += 1
            key = tuple((s.start, s.stop) for s in shard.index)
            if key not in seen:
                seen.add(key)
                fetched += data_.nbytes
            if data_.tobytes() != np.ascontiguousarray(full[shard.index]).tobytes():
                ok = False
                print(f"MISMATCH {jax.tree_util.keystr(path)} on {shard.device}")
        if np.asarray(b).tobytes() != full.tobytes():
            ok = False
    print(f"mesh {args.mesh} {dict(mesh.shape)} on {len(mesh.devices.flat)} devices; {leaves} leaves, {shards} shards")
    print(f"model {total:,} bytes; distinct shards fetched {fetched:,} bytes ({fetched / total:.3f}x)")
    print(f"sharded fetch {sharded_seconds:.2f} s, whole fetch {whole_seconds:.2f} s")
    print(f"every device's shard equals the slice of the whole fetch: {ok}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
