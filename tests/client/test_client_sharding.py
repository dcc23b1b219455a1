"""Shard helpers: the slice arithmetic against torch.chunk and numpy, and fetched shards against
numpy slicing of the whole tensor (even and uneven splits, every axis, 2-D meshes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from client_helpers import same_bytes

from weightgen.client import Variable
from weightgen.client.sharding import (
    as_index,
    assemble,
    fetch_shard,
    fetch_shards,
    full_slice,
    mesh_coords,
    mesh_slice,
    ranges_of_index,
    rank_shards,
    rank_slice,
    shard_range,
    shard_slice,
    slice_shape,
)


def test_shard_range_is_torch_chunk():
    import torch

    for dim, parts in itertools.product(range(14), range(1, 6)):
        ranges = [shard_range(dim, parts, i) for i in range(parts)]
        assert ranges[0][0] == 0 and ranges[-1][1] == dim
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, in order
        lengths = [stop - start for start, stop in ranges]
        chunks = [len(c) for c in torch.arange(dim).chunk(parts)] if dim else []
        assert [n for n in lengths if n] == chunks, (dim, parts)
        assert lengths == sorted(lengths, reverse=True)  # the short and empty ones are last
    assert shard_range(10, 4, 3) == (9, 10) and shard_range(5, 4, 3) == (5, 5)
    assert [shard_range(50257, 4, i) for i in range(4)] == [(0, 12565), (12565, 25130), (25130, 37695), (37695, 50257)]
    for bad in [(10, 0, 0), (10, 2, 2), (10, 2, -1), (-1, 2, 0)]:
        with pytest.raises(ValueError):
            shard_range(*bad)


def test_slices_rows_columns_and_meshes():
    shape = (10, 7)
    assert rank_slice(shape, 1, 3, axis=0) == ((4, 8), (0, 7))  # row split
    assert rank_slice(shape, 2, 3, axis=1) == ((0, 10), (6, 7))  # column split, uneven
    assert rank_slice(shape, 2, 3, axis=-1) == rank_slice(shape, 2, 3, axis=1)
    assert shard_slice(shape, {0: 2, 1: 3}, {0: 1, 1: 2}) == ((5, 10), (6, 7))
    assert shard_slice(shape, {}, {}) == full_slice(shape)
    assert mesh_coords(5, (2, 3)) == (1, 2)
    # Mesh axis 0 splits rows, mesh axis 1 splits columns; both on one tensor axis multiply.
    assert mesh_slice(shape, (2, 3), 5, axes=(0, 1)) == shard_slice(shape, {0: 2, 1: 3}, {0: 1, 1: 2})
    assert mesh_slice(shape, (2, 2), 3, axes=(0, 0)) == rank_slice(shape, 3, 4, axis=0)
    assert mesh_slice(shape, (2, 2), 3, axes=(None, 1)) == rank_slice(shape, 1, 2, axis=1)
    assert slice_shape(((4, 8), (0, 7))) == (4, 7)
    assert ranges_of_index((slice(None), slice(2, 5)), shape) == ((0, 10), (2, 5))
    assert ranges_of_index(slice(3, None), shape) == ((3, 10), (0, 7))
    for mesh, axes in [((2, 3), (0, 1)), ((3, 2), (1, None)), ((6,), (0,)), ((2, 2), (0, 0))]:
        full = np.arange(70).reshape(shape)
        pieces = [(r := mesh_slice(shape, mesh, k, axes), full[as_index(r)]) for k in range(int(np.prod(mesh)))]
        assert np.array_equal(assemble(shape, full.dtype, pieces), full)
    with pytest.raises(ValueError, match="cover"):
        assemble(shape, np.int64, [(rank_slice(shape, 0, 2), np.zeros((5, 7)))])
    with pytest.raises(ValueError):
        rank_slice(shape, 0, 2, axis=2)
    with pytest.raises(ValueError):
        shard_slice(shape, {0: 2}, {1: 0})
    plan = rank_shards({"*.c_fc.weight": 0, "*.c_proj.weight": 1, "*.bias": None}, rank=1, world=2)
    assert plan("h.0.mlp.c_fc.weight", (6, 4)) == ((3, 6), (0, 4))
    assert plan("h.0.mlp.c_proj.weight", (4, 6)) == ((0, 4), (3, 6))
    assert plan("h.0.mlp.c_fc.bias", (6,)) is None and plan("ln.weight", (4,)) is None


def test_fetched_shards_are_slices_of_the_whole_tensor(client):
    """Every axis, even and uneven splits (empty trailing shards included), and 2-D grids."""
    variables = [
        Variable("conv", (6, 5, 3, 2), "kaiming_uniform(a=2.23606797749979, layout=channels_first)"),
        Variable("dense", (7, 4), "he_normal", dtype="bfloat16"),
        Variable("table", (9,), "random_uniform(min=-1, max=1)", dtype="float16"),
    ]
    whole = client.materialize(variables, seed=11)
    items, expected = [], []
    for variable in variables:
        shape = tuple(variable.shape)
        for axis, parts in itertools.product(range(len(shape)), (2, 3, 4)):
            for rank in range(parts):
                ranges = rank_slice(shape, rank, parts, axis)
                items.append((variable, ranges))
                expected.append(whole[variable.name][as_index(ranges)])
        if len(shape) >= 2:
            for rank in range(6):
                ranges = mesh_slice(shape, (2, 3), rank, axes=(0, 1))
                items.append((variable, ranges))
                expected.append(whole[variable.name][as_index(ranges)])
    shards = fetch_shards(client, items, seed=11)
    assert len(shards) == len(expected)
    for (variable, ranges), shard, want in zip(items, shards, expected, strict=True):
        assert shard.shape == slice_shape(ranges), (variable.name, ranges)
        assert same_bytes(shard, want), (variable.name, ranges)
    assert any(shard.size == 0 for shard in shards)  # 3 over 4: an empty last shard


def test_fetch_shard_forms(client):
    variable = Variable("w", (10, 6), "lecun_normal")
    whole = client.materialize([variable], seed=3)["w"]
    assert same_bytes(fetch_shard(client, variable, rank=3, world=4, seed=3), whole[9:10])
    assert same_bytes(fetch_shard(client, variable, ((2, 5), (1, 6)), seed=3), whole[2:5, 1:6])
    assert same_bytes(fetch_shard(client, variable, full_slice((10, 6)), seed=3), whole)
    sliced = Variable("w", (10, 6), "lecun_normal", slice=np.s_[:, 4:])
    assert same_bytes(fetch_shard(client, sliced, seed=3), whole[:, 4:])
    # Identical requests are fetched once and handed to each position.
    a, b = fetch_shards(client, [(variable, ((0, 5), (0, 6))), (variable, ((0, 5), (0, 6)))], seed=3)
    assert a is b
    with pytest.raises(ValueError, match="fixed seed"):
        fetch_shard(client, variable, rank=0, world=2)
    with pytest.raises(ValueError, match="rank and world"):
        fetch_shard(client, variable, rank=0, seed=3)
    with client.open_session(seed=3, rng_mode="sequential") as session, pytest.raises(ValueError, match="sequential"):
        fetch_shard(client, variable, rank=0, world=2, session=session)
    with client.open_session(seed=3) as session:
        assert same_bytes(fetch_shard(client, variable, rank=0, world=2, session=session), whole[:5])
