"""The 4-device half of test_client_flax.py: fills the models of flax_models.py on a 2x2 CPU mesh,
in every way `materialize_tree` takes shardings, and prints what each device holds as JSON.

    python tests/client/flax_mesh.py --server 127.0.0.1:50051

XLA_FLAGS must name the device count before JAX starts its backend, hence a process of its own.
It reports, and does not judge: the test compares every shard with its own unsharded fill.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import argparse
import hashlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax_models import AXES, LINEN_SPECS, SEED, LinenModel, linen_shapes, nnx_abstract
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from weightgen.client import Client
from weightgen.client.jax import ShardingRules, materialize_tree, path_name


def digest(value: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).reshape(-1).view(np.uint8)).hexdigest()


def spec_json(sharding: jax.sharding.Sharding) -> list | None:
    if not isinstance(sharding, NamedSharding):
        return None
    return [list(e) if isinstance(e, tuple) else e for e in sharding.spec]


def report(tree, mesh: jax.sharding.Mesh) -> dict:
    """Per leaf (boxes kept as they came back): the box type, the spec, the gathered value's digest,
    and per addressable shard its device, the device's mesh coordinates, the index and a digest."""
    coords = {int(d.id): [int(i) for i in np.argwhere(mesh.devices == d)[0]] for d in mesh.devices.flat}
    leaves = {}
    is_box = lambda x: isinstance(x, nnx.Variable | nn.Partitioned)  # noqa: E731
    for path, item in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0]:
        value = item.get_value() if isinstance(item, nnx.Variable) else item.value if is_box(item) else item
        shards = []
        for shard in value.addressable_shards:
            data = np.asarray(shard.data)
            index = [list(s.indices(n)[:2]) for s, n in zip(shard.index, value.shape, strict=True)]
            holders = [int(d.id) for d in shard.data.devices()]
            shards.append(
                {
                    "device": int(shard.device.id),
                    "coords": coords.get(int(shard.device.id)),
                    "holders": holders,
                    "index": index,
                    "shape": list(data.shape),
                    "digest": digest(data),
                }
            )
        leaves[path_name(path)] = {
            "box": type(item).__name__,
            "shape": list(value.shape),
            "dtype": str(value.dtype),
            "spec": spec_json(value.sharding),
            "devices": sorted(int(d.id) for d in value.sharding.device_set),
            "digest": digest(np.asarray(value)),
            "shards": shards,
        }
    return leaves


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    args = parser.parse_args()
    # Auto axes: the forward passes below leave the gathers' output shardings to XLA.
    mesh = jax.make_mesh((2, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=jax.devices()[:4])
    graphdef, state = nnx_abstract(mesh)
    shapes = linen_shapes()  # nn.Partitioned boxes where annotated
    plain = nn.unbox(shapes)

    def by_name(leaf):  # a function of the Leaf: annotated leaves sharded, the rest whole on device 0
        spec = LINEN_SPECS.get(leaf.name)
        return None if spec is None else NamedSharding(mesh, P(*spec))

    rules = ShardingRules(
        [
            ("*/Dense_0/kernel", P(None, "model")),
            (lambda leaf: leaf.name.endswith("Dense_0/bias"), P("model")),
            ("params/Dense_1/kernel", P("model", None)),
            ("*/Dense_1/*", P()),  # after the kernel's rule: the first match wins
        ]
    )  # LayerNorm_0 matches none: replicated
    runs = {
        "nnx flax": (state, {"shardings": "flax", "mesh": mesh}),
        "nnx specs": (state, {"shardings": nnx.get_partition_spec(state), "mesh": mesh}),
        "linen flax": (shapes, {"shardings": "flax", "mesh": mesh}),
        "linen specs": (shapes, {"shardings": nn.get_partition_spec(shapes), "mesh": mesh}),
        "linen shardings": (plain, {"shardings": nn.get_sharding(shapes, mesh)}),
        "linen rules": (plain, {"shardings": rules, "mesh": mesh}),
        "linen function": (plain, {"shardings": by_name}),
    }
    out = {"devices": len(jax.devices()), "runs": {}, "forward": {}, "errors": {}}
    with Client(args.server, timeout=120) as client:
        filled = {}
        for name, (tree, kwargs) in runs.items():
            filled[name] = materialize_tree(tree, client, seed=SEED, **kwargs)
            out["runs"][name] = report(filled[name], mesh)
        # The boxed results are what the models take: NNX merges the state, Linen applies the boxes.
        model = nnx.merge(graphdef, filled["nnx flax"])
        y = np.asarray(model(jnp.arange(6).reshape(2, 3) % 16), np.float32)
        out["forward"]["nnx"] = {"shape": list(y.shape), "finite": bool(np.isfinite(y).all())}
        y = np.asarray(LinenModel().apply(filled["linen flax"], jnp.ones((2, 8))), np.float32)
        out["forward"]["linen"] = {"shape": list(y.shape), "finite": bool(np.isfinite(y).all())}
        odd = {"w": jax.ShapeDtypeStruct((5, 4), jnp.float32)}
        try:
            materialize_tree(odd, client, seed=SEED, rules={"w": "zeros"}, shardings=P("model"), mesh=mesh)
        except ValueError as e:
            out["errors"]["indivisible"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
