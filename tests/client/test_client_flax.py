"""Flax models (NNX and Linen, with sharding annotations) filled by weightgen: on a 2x2 CPU mesh in
a process of its own (flax_mesh.py; XLA_FLAGS must be set before JAX starts), compared shard by
shard with an unsharded fill in this process; and the shardings that do not fit, refused with the
leaf's name before anything is fetched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax_models import AXES, LINEN_SPECS, NNX_SPECS, SEED, linen_shapes, nnx_abstract
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from weightgen.client import Client
from weightgen.client.jax import ShardingRules, leaf_shardings, materialize_tree, path_name

HERE = Path(__file__).resolve().parent
MESH = {"data": 2, "model": 2}  # flax_mesh.py's mesh
NNX_RUNS = ("nnx flax", "nnx specs")
LINEN_RUNS = ("linen flax", "linen specs", "linen shardings", "linen rules", "linen function")


def digest(value: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).reshape(-1).view(np.uint8)).hexdigest()


def is_box(x) -> bool:
    return isinstance(x, nnx.Variable | nn.Partitioned)


def arrays_by_name(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0]
    return {
        path_name(path): np.asarray(item.get_value() if isinstance(item, nnx.Variable) else nn.unbox(item))
        for path, item in flat
    }


def materialize_requests(server) -> float:
    lines = server.metrics().splitlines()
    return sum(
        float(line.rpartition(" ")[2])
        for line in lines
        if line.startswith("weightgen_requests_total{") and 'method="Materialize"' in line
    )


def expected_index(spec: list, coords: list[int], shape: list[int]) -> list[list[int]]:
    """The slice the device at `coords` of the 2x2 mesh must hold: on each axis the mesh axes its
    spec entry names (the first the major one) pick one of their product's even parts."""
    position = dict(zip(AXES, coords, strict=True))
    index = []
    for axis, dim in enumerate(shape):
        entry = spec[axis] if axis < len(spec) else None
        names = [] if entry is None else [entry] if isinstance(entry, str) else entry
        part, parts = 0, 1
        for name in names:
            part, parts = part * MESH[name] + position[name], parts * MESH[name]
        index.append([part * dim // parts, (part + 1) * dim // parts])
    return index


@pytest.fixture(scope="module")
def one_device_mesh():
    return jax.make_mesh((1, 1), AXES, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def unsharded(server, one_device_mesh) -> dict[str, dict[str, np.ndarray]]:
    """Both models filled whole, on one device, in this process: the reference for every shard."""
    with Client(server.address, timeout=60) as client:
        _, state = nnx_abstract(one_device_mesh)
        return {
            "nnx": arrays_by_name(materialize_tree(state, client, seed=SEED)),
            "linen": arrays_by_name(materialize_tree(linen_shapes(), client, seed=SEED)),
        }


@pytest.fixture(scope="module")
def on_mesh(server) -> tuple[dict, dict[str, float]]:
    """flax_mesh.py's report, and what the server sent it: tensor bytes, and variables (a slice
    fetched as such is a variable of its own)."""
    counters = ("weightgen_bytes_streamed_total", "weightgen_variables_streamed_total")
    before = {name: server.metric(name) for name in counters}
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, str(HERE / "flax_mesh.py"), "--server", server.address]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=HERE, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    report = json.loads(result.stdout.splitlines()[-1])
    return report, {name.split("_")[1]: server.metric(name) - before[name] for name in counters}


def test_every_device_holds_exactly_its_slice_of_the_unsharded_fill(on_mesh, unsharded):
    report, _ = on_mesh
    assert report["devices"] == 4
    for run, leaves in report["runs"].items():
        reference = unsharded[run.split()[0]]
        assert sorted(leaves) == sorted(reference), run
        for name, leaf in leaves.items():
            whole = reference[name]
            assert (leaf["shape"], leaf["dtype"]) == (list(whole.shape), str(whole.dtype)), (run, name)
            assert leaf["digest"] == digest(whole), (run, name)  # the gathered array, bit for bit
            if leaf["spec"] is None:  # left whole on the default device
                assert leaf["devices"] == [0] and len(leaf["shards"]) == 1, (run, name)
                assert leaf["shards"][0]["index"] == [[0, n] for n in whole.shape]
            else:
                assert leaf["devices"] == [0, 1, 2, 3] and len(leaf["shards"]) == 4, (run, name)
            for shard in leaf["shards"]:
                if leaf["spec"] is not None:
                    assert shard["index"] == expected_index(leaf["spec"], shard["coords"], leaf["shape"]), (run, name)
                piece = whole[tuple(slice(a, b) for a, b in shard["index"])]
                assert shard["holders"] == [shard["device"]] and shard["shape"] == list(piece.shape), (run, name)
                assert shard["digest"] == digest(piece), (run, name, shard["device"])


def test_the_specs_are_the_annotations_and_the_boxes_come_back(on_mesh):
    runs = on_mesh[0]["runs"]
    for run in NNX_RUNS:
        specs = {name: leaf["spec"] for name, leaf in runs[run].items()}
        assert specs == {
            name: [list(e) if isinstance(e, tuple) else e for e in NNX_SPECS.get(name, ())] for name in specs
        }
        boxes = {name: leaf["box"] for name, leaf in runs[run].items()}
        assert boxes == {name: "BatchStat" if name in ("bn/mean", "bn/var") else "Param" for name in boxes}, run
    for run in LINEN_RUNS:
        specs = {name: leaf["spec"] for name, leaf in runs[run].items()}
        unannotated = None if run == "linen function" else []
        assert specs == {name: list(LINEN_SPECS[name]) if name in LINEN_SPECS else unannotated for name in specs}, run
        boxed = run in ("linen flax", "linen specs")
        boxes = {name: leaf["box"] for name, leaf in runs[run].items()}
        assert boxes == {name: "Partitioned" if boxed and name in LINEN_SPECS else "ArrayImpl" for name in boxes}, run


def test_each_slice_was_fetched_once_and_only_as_a_slice(on_mesh, unsharded):
    """Replicas fetched once, split leaves fetched as their parts: the server sent one variable per
    distinct slice and, over all of them, one model's bytes per run, no more (the refused
    indivisible leaf pulled nothing)."""
    report, sent = on_mesh
    slices = sum(
        len({json.dumps(shard["index"]) for shard in leaf["shards"]})
        for leaves in report["runs"].values()
        for leaf in leaves.values()
    )
    # NNX: 4 + 4 (embedding, up/bias over both axes) + 2 + 2 (kernels over "model") + 7 replicated;
    # Linen: 3 leaves split in 2, 3 whole (replicated, or on the default device)
    assert slices == 19 * len(NNX_RUNS) + 9 * len(LINEN_RUNS)
    assert sent["variables"] == slices
    nnx_bytes = sum(a.nbytes for a in unsharded["nnx"].values())
    linen_bytes = sum(a.nbytes for a in unsharded["linen"].values())
    assert sent["bytes"] == len(NNX_RUNS) * nnx_bytes + len(LINEN_RUNS) * linen_bytes


def test_the_filled_trees_run_in_their_models(on_mesh):
    forward = on_mesh[0]["forward"]
    assert forward["nnx"] == {"shape": [2, 3, 8], "finite": True}  # nnx.merge(graphdef, state)(tokens)
    assert forward["linen"] == {"shape": [2, 8], "finite": True}  # LinenModel().apply(boxed params, x)


def test_an_axis_the_mesh_does_not_divide_is_refused_with_the_leaf(on_mesh):
    message = on_mesh[0]["errors"]["indivisible"]
    for fragment in ("'w'", "[5, 4]", "P('model',)", "axis 0 (size 5) 2 ways", "does not divide"):
        assert fragment in message


def test_a_pytree_prefix_covers_the_leaves_under_it(client, one_device_mesh, unsharded):
    plain = nn.unbox(linen_shapes())
    norm = NamedSharding(one_device_mesh, P())
    kernel = NamedSharding(one_device_mesh, P(None, "model"))
    prefix = {"params": {"Dense_0": {"kernel": kernel, "bias": None}, "Dense_1": None, "LayerNorm_0": norm}}
    planned = {leaf.name: sharding for leaf, sharding in leaf_shardings(plain, prefix)}
    assert planned == {
        "params/Dense_0/kernel": kernel,
        "params/Dense_0/bias": None,
        "params/Dense_1/kernel": None,
        "params/Dense_1/bias": None,
        "params/LayerNorm_0/scale": norm,
        "params/LayerNorm_0/bias": norm,
    }
    filled = materialize_tree(plain, client, seed=SEED, shardings=prefix)
    assert filled["params"]["LayerNorm_0"]["scale"].sharding == norm
    assert filled["params"]["Dense_0"]["kernel"].sharding == kernel
    got = arrays_by_name(filled)
    assert all(digest(got[name]) == digest(unsharded["linen"][name]) for name in planned)


class WithDropout(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)


def _plain():
    return nn.unbox(linen_shapes())


def _with_rngs():
    return nnx.state(nnx.eval_shape(lambda: WithDropout(nnx.Rngs(0))))


Rules = ShardingRules
CASES = {  # name: mesh -> (the tree, its maker; keyword arguments; exception; what its message must say)
    # docs/trainers.md once passed this one sharding for every leaf: JAX's bare IndexError on a bias
    "one sharding, a rank-1 leaf": lambda mesh: (
        _plain,
        {"shardings": NamedSharding(mesh, P(None, "model"))},
        ValueError,
        ["'params/Dense_0/bias'", "[12]", "P(None, 'model')", "rank 1", "one per leaf"],
    ),
    "spec longer than the rank": lambda mesh: (
        _plain,
        {"shardings": Rules({"*/bias": P("data", "model")}), "mesh": mesh},
        ValueError,
        ["'params/Dense_0/bias'", "[12]", "P('data', 'model')", "rank 1", "rule '*/bias'"],
    ),
    "unknown mesh axis": lambda mesh: (
        _plain,
        {"shardings": Rules({"*/kernel": P(None, "tensor")}), "mesh": mesh},
        ValueError,
        ["'params/Dense_0/kernel'", "[8, 12]", "P(None, 'tensor')", "'tensor'", "{'data': 1, 'model': 1}"],
    ),
    "mesh axis twice": lambda mesh: (
        _plain,
        {"shardings": Rules({"*/kernel": P("model", "model")}), "mesh": mesh},
        ValueError,
        ["'params/Dense_0/kernel'", "[8, 12]", "'model' twice"],
    ),
    "PartitionSpec without a mesh": lambda mesh: (
        linen_shapes,
        {"shardings": "flax"},
        ValueError,
        ["'params/Dense_0/bias'", "[12]", "P('model',)", "Flax's partitioning metadata", "mesh="],
    ),
    "unmatched leaf without a mesh": lambda mesh: (
        _plain,
        {"shardings": Rules({"*/kernel": NamedSharding(mesh, P(None, "model"))})},
        ValueError,
        ["'params/Dense_0/bias'", "[12]", "no rule matches", "mesh="],
    ),
    "pytree without a leaf": lambda mesh: (
        _plain,
        {"shardings": {"params": {"Dense_0": None, "LayerNorm_0": None}}},
        ValueError,
        ["'params/Dense_1/bias'", "[8]", "nothing for the leaf"],
    ),
    "pytree with a stranger": lambda mesh: (
        _plain,
        {"shardings": {"params": None, "opt_state": None}},
        ValueError,
        ["'opt_state'", "not leaves or subtrees"],
    ),
    "pytree of something else": lambda mesh: (
        _plain,
        {"shardings": {"params": "model"}},
        TypeError,
        ["'params'", "'model'", "PartitionSpec"],
    ),
    "function giving something else": lambda mesh: (
        _plain,
        {"shardings": lambda leaf: "model"},
        TypeError,
        ["'params/Dense_0/bias'", "[12]", "'model'", "shardings function"],
    ),
    "unknown name": lambda mesh: (_plain, {"shardings": "auto"}, ValueError, ["'auto'", "'flax'"]),
    "mesh that is not one": lambda mesh: (
        _plain,
        {"shardings": P(), "mesh": (2, 2)},
        TypeError,
        ["jax.sharding.Mesh", "tuple"],
    ),
    "NNX state with its RNG keys": lambda mesh: (
        _with_rngs,
        {},
        ValueError,
        ["'drop/rngs/key'", "key<fry>", "nnx.state(model, nnx.Param)"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sharding_that_does_not_fit_is_refused_before_any_fetch(server, client, one_device_mesh, case):
    tree, kwargs, error, fragments = CASES[case](one_device_mesh)
    before = materialize_requests(server)
    with pytest.raises(error) as raised:
        materialize_tree(tree(), client, seed=SEED, **kwargs)
    for fragment in fragments:
        assert fragment in str(raised.value)
    assert materialize_requests(server) == before  # checked before anything was fetched


def test_flax_shardings_without_annotations_replicate(client, one_device_mesh, unsharded):
    """Flax's own rule: a leaf without partitioning metadata gets PartitionSpec() (replicated); a
    leaf boxed in nn.Partitioned keeps its box."""
    filled = materialize_tree(linen_shapes(), client, seed=SEED, shardings="flax", mesh=one_device_mesh)
    assert isinstance(filled["params"]["Dense_0"]["kernel"], nn.Partitioned)
    assert filled["params"]["Dense_0"]["kernel"].names == (None, "model")
    assert filled["params"]["LayerNorm_0"]["scale"].sharding == NamedSharding(one_device_mesh, P())
    got = arrays_by_name(filled)
    assert {name: digest(a) for name, a in got.items()} == {name: digest(a) for name, a in unsharded["linen"].items()}
    assert jnp.asarray(got["params/LayerNorm_0/scale"]).sum() == 12  # ones, by FLAX_DEFAULTS
