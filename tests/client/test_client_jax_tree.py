"""JAX/Flax parameter pytrees filled by weightgen: whole, and placed on a device mesh shard by shard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from client_helpers import same_bytes

from weightgen.client.jax import Last, materialize_tree, path_name, tree_variables

ROOT = Path(__file__).resolve().parents[2]


def flax_like_init(key):
    """Parameters named as a Flax model's: dicts of modules, a list of layers, batch statistics."""
    dense = jax.nn.initializers.lecun_normal()
    return {
        "params": {
            "Embed_0": {"embedding": jnp.zeros((50, 16))},
            "layers": [
                {"kernel": dense(key, (16, 24), jnp.bfloat16), "bias": jnp.zeros((24,), jnp.bfloat16)},
                {"kernel": dense(key, (3, 3, 24, 8)), "bias": jnp.zeros((8,))},
            ],
            "LayerNorm_0": {"scale": jnp.ones((8,)), "bias": jnp.zeros((8,))},
        },
        "batch_stats": {"BatchNorm_0": {"mean": jnp.zeros((8,)), "var": jnp.ones((8,))}},
    }


def test_a_shape_tree_filled_by_weightgen(client):
    shapes = jax.eval_shape(flax_like_init, jax.random.key(0))
    params = materialize_tree(shapes, client, seed=17)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    for leaf, shape in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shapes), strict=True):
        assert isinstance(leaf, jax.Array) and leaf.shape == shape.shape and leaf.dtype == shape.dtype

    variables, _ = tree_variables(shapes)
    names = [v.name for v in variables]
    assert "params/layers/0/kernel" in names and "batch_stats/BatchNorm_0/var" in names
    direct = client.materialize(variables, seed=17)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        assert same_bytes(np.asarray(leaf), direct[path_name(path)]), path_name(path)

    p = params["params"]
    embed = np.asarray(p["Embed_0"]["embedding"])
    assert embed.std() == pytest.approx(1 / 4, rel=0.1)  # nn.Embed: variance 1 / features
    kernel = np.asarray(p["layers"][1]["kernel"])  # lecun_normal over fan_in = 3 * 3 * 24
    assert kernel.std() == pytest.approx(1 / np.sqrt(216), rel=0.15)
    assert not np.asarray(p["layers"][0]["bias"], np.float32).any()
    assert (np.asarray(p["LayerNorm_0"]["scale"]) == 1).all()
    assert (np.asarray(params["batch_stats"]["BatchNorm_0"]["var"]) == 1).all()


def test_tree_rules_and_single_device_sharding(client):
    shapes = {"dense": {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32)}, "w": jax.ShapeDtypeStruct((3,), "f4")}
    with pytest.raises(ValueError, match="no initializer rule for 'w'"):
        materialize_tree(shapes, client, seed=1)
    rules = {"dense/*": "zeros", Last("w"): "ones"}
    tree = materialize_tree(shapes, client, seed=1, rules=rules)
    assert not np.asarray(tree["dense"]["kernel"]).any() and (np.asarray(tree["w"]) == 1).all()
    device = jax.devices()[0]
    placed = materialize_tree(
        shapes, client, seed=1, rules={"w": "he_normal"}, shardings=jax.sharding.SingleDeviceSharding(device)
    )
    whole = materialize_tree(shapes, client, seed=1, rules={"w": "he_normal"})
    assert placed["w"].sharding.device_set == {device}
    single = jax.sharding.SingleDeviceSharding(device)
    as_tree = materialize_tree(
        shapes, client, seed=1, rules={"w": "he_normal"}, shardings={"dense": {"kernel": single}, "w": single}
    )
    assert same_bytes(np.asarray(as_tree["w"]), np.asarray(whole["w"]))
    assert same_bytes(np.asarray(placed["dense"]["kernel"]), np.asarray(whole["dense"]["kernel"]))
    with pytest.raises(ValueError, match="fixed seed"):
        materialize_tree(shapes, client, rules=rules)


@pytest.mark.parametrize("mesh", ["2x2", "1x4"])
def test_a_four_device_mesh_gets_the_slices_of_a_whole_fetch(server, mesh):
    """4 host devices (a fresh process: XLA_FLAGS must be set before JAX starts)."""
    script = ROOT / "examples" / "distributed" / "jax_mesh.py"
    command = [sys.executable, str(script), "--server", server.address, "--small", "--mesh", mesh]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 4 devices" in result.stdout and "equals the slice of the whole fetch: True" in result.stdout
