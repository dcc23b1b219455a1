"""Shards for trainer ranks: which hyperslab of a tensor a rank holds, and fetching only that.

A weightgen tensor is a pure function of its spec and *full* shape (fans included), so a rank that
asks for its slice gets exactly the bytes of that slice of the full tensor, whatever the world size.
N ranks together pull one model's worth of bytes, and every world size assembles the same model.

The convention (PyTorch's ``torch.chunk`` and DTensor ``Shard``; JAX's even shardings are its
special case): an axis of size ``dim`` split into ``parts`` has chunks of ``c = ceil(dim / parts)``
and part ``i`` is::

    [min(i * c, dim), min((i + 1) * c, dim))

so every part but the last ones has ``c`` indices, the last non-empty one the remainder, and any
after it are empty (``dim = 5`` over 4 parts: 2, 2, 1, 0). A range is a half-open ``(start, stop)``
pair and a slice is one range per axis, as `Variable.slice` and the API's ``VariableSpec.slice``
take it. For JAX shardings use the indices JAX reports (`ranges_of_index` of
``sharding.addressable_devices_indices_map(shape)``), as `weightgen.client.jax` does.

    rank_slice((50257, 768), rank=3, world=4, axis=0)        # ((37695, 50257), (0, 768))
    shard_slice((768, 3072), {0: 2, 1: 2}, {0: 1, 1: 0})     # a 2-D split: ((384, 768), (0, 1536))
    mesh_slice((768, 3072), (2, 2), rank=1, axes=(None, 1))  # 2x2 mesh, columns over mesh axis 1
    fetch_shard(client, Variable("w", (768, 3072), "he_normal"), rank=1, world=4, axis=1, seed=42)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from weightgen.v1 import weightgen_pb2 as pb

from .specs import VariableLike, variable_spec

if TYPE_CHECKING:
    from .client import Client, Session

Range = tuple[int, int]
"""A half-open ``(start, stop)`` range of one axis."""
Ranges = tuple[Range, ...]
"""One range per axis: a hyperslab of a tensor."""
ShardFn = Callable[[str, tuple[int, ...]], "Sequence[Range] | None"]
"""shard(name, full shape) -> the slice this rank holds, or None for the whole tensor (replicated)."""


# -- slices ------------------------------------------------------------------------------------


def shard_range(dim: int, parts: int, index: int) -> Range:
    """Part `index` of `parts` of an axis of size `dim`: ``c = ceil(dim / parts)``,
    ``(min(index * c, dim), min((index + 1) * c, dim))`` (torch.chunk's convention; trailing parts
    may be shorter or empty)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if not 0 <= index < parts:
        raise ValueError(f"index {index} is outside [0, {parts})")
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    chunk = -(-dim // parts)
    return min(index * chunk, dim), min((index + 1) * chunk, dim)


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def shard_slice(shape: Sequence[int], splits: Mapping[int, int], coords: Mapping[int, int]) -> Ranges:
    """The slice of the shard at `coords` when axis ``a`` of `shape` is split into ``splits[a]``
    parts (`shard_range` on each split axis; axes not in `splits` stay whole). Negative axes count
    from the end. A 2-D split: ``shard_slice(shape, {0: 2, 1: 4}, {0: row, 1: col})``."""
    shape = tuple(int(d) for d in shape)
    parts = {_axis(a, len(shape)): int(n) for a, n in splits.items()}
    index = {_axis(a, len(shape)): int(i) for a, i in coords.items()}
    if set(index) != set(parts):
        raise ValueError(f"coords name axes {sorted(index)}, splits name axes {sorted(parts)}")
    return tuple(shard_range(d, parts[a], index[a]) if a in parts else (0, d) for a, d in enumerate(shape))


def rank_slice(shape: Sequence[int], rank: int, world: int, axis: int = 0) -> Ranges:
    """Rank `rank` of `world`'s slice of `shape` split along `axis` (row split: axis 0 of a
    ``[out, in]`` PyTorch weight; column split: axis 1)."""
    return shard_slice(shape, {axis: world}, {axis: rank})


def mesh_coords(rank: int, mesh_shape: Sequence[int]) -> tuple[int, ...]:
    """The coordinates of `rank` in a device mesh of `mesh_shape`, row-major (the last mesh axis
    varies fastest: rank = c0 * m1 + c1 on a 2-D mesh)."""
    size = math.prod(mesh_shape)
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside a mesh of {size}")
    return tuple(int(c) for c in np.unravel_index(rank, tuple(mesh_shape)))


def mesh_slice(shape: Sequence[int], mesh_shape: Sequence[int], rank: int, axes: Sequence[int | None]) -> Ranges:
    """The slice that `rank` (row-major in `mesh_shape`) holds when mesh axis ``m`` splits tensor
    axis ``axes[m]`` (None: replicated over that mesh axis). Mesh axes that split the same tensor
    axis split it together, the earlier mesh axis major: ``axes=(0, 0)`` on a 2x2 mesh is 4 parts."""
    if len(axes) != len(mesh_shape):
        raise ValueError(f"axes has {len(axes)} entries, the mesh {list(mesh_shape)} has {len(mesh_shape)} axes")
    coords = mesh_coords(rank, mesh_shape)
    parts: dict[int, int] = {}
    index: dict[int, int] = {}
    for size, coord, axis in zip(mesh_shape, coords, axes, strict=True):
        if axis is None:
            continue
        a = _axis(axis, len(shape))
        index[a] = index.get(a, 0) * size + coord
        parts[a] = parts.get(a, 1) * size
    return shard_slice(shape, parts, index)


def full_slice(shape: Sequence[int]) -> Ranges:
    """The slice that is the whole tensor."""
    return tuple((0, int(d)) for d in shape)


def slice_shape(ranges: Sequence[Range]) -> tuple[int, ...]:
    """The shape of a slice."""
    return tuple(stop - start for start, stop in ranges)


def as_index(ranges: Sequence[Range]) -> tuple[slice, ...]:
    """A slice as a numpy index: ``full[as_index(ranges)]`` is the shard."""
    return tuple(slice(start, stop) for start, stop in ranges)


def ranges_of_index(index: Sequence[slice] | slice, shape: Sequence[int]) -> Ranges:
    """A numpy/JAX index of step-1 slices (what ``Sharding.devices_indices_map`` gives, with
    ``slice(None)`` for whole axes; missing trailing axes are whole) as a slice."""
    items = list(index) if isinstance(index, tuple | list) else [index]
    items += [slice(None)] * (len(shape) - len(items))
    if len(items) != len(shape):
        raise ValueError(f"index {index} has more axes than the shape {list(shape)}")
    ranges = []
    for item, dim in zip(items, shape, strict=True):
        if not isinstance(item, slice):
            raise TypeError(f"expected slices, got {item!r}")
        start, stop, step = item.indices(int(dim))
        if step != 1:
            raise ValueError(f"steps are not supported ({item})")
        ranges.append((start, max(start, stop)))
    return tuple(ranges)


def assemble(shape: Sequence[int], dtype: Any, pieces: Iterable[tuple[Sequence[Range], np.ndarray]]) -> np.ndarray:
    """A full tensor from (slice, shard) pieces (what an all-gather collects); every element must be
    covered by at least one piece."""
    out = np.empty(tuple(shape), dtype)
    covered = np.zeros(tuple(shape), bool)
    for ranges, shard in pieces:
        out[as_index(ranges)] = shard
        covered[as_index(ranges)] = True
    if not covered.all():
        raise ValueError(f"the pieces cover {int(covered.sum())} of {covered.size} elements")
    return out


# -- rules: which tensors to shard how --------------------------------------------------------


def rank_shards(axes: Mapping[str, int | None], rank: int, world: int) -> ShardFn:
    """A shard function for rank `rank` of `world`: the first glob of `axes` that matches a name
    (``"*.c_fc.weight"``, ``"h.*.attn.c_attn.*"``) gives the axis to split (None: replicated);
    names that match none are replicated (fetched whole)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    rules = list(axes.items())

    def shard(name: str, shape: tuple[int, ...]) -> Ranges | None:
        for pattern, axis in rules:
            if fnmatch.fnmatchcase(name, pattern):
                return None if axis is None or not shape else rank_slice(shape, rank, world, axis)
        return None

    return shard


# -- fetching ----------------------------------------------------------------------------------


def _check_seed(seed: int, session: Session | str | None) -> None:
    if not seed and session is None:
        raise ValueError("shards need a fixed seed (or a session): every rank must ask for the same one")
    if getattr(session, "sequential", False):
        raise ValueError("a sequential session's values depend on request order, which ranks do not share")


def _spec(variable: VariableLike, ranges: Sequence[Range] | None) -> pb.VariableSpec:
    spec = variable_spec(variable)
    if ranges is not None:
        if len(ranges) != len(spec.shape):
            raise ValueError(f"variable {spec.name!r}: slice has {len(ranges)} axes, its shape {len(spec.shape)}")
        del spec.slice[:]
        if list(ranges) != list(full_slice(spec.shape)):
            spec.slice.extend(pb.Range(start=int(a), stop=int(b)) for a, b in ranges)
    return spec


def fetch_shards(
    client: Client,
    items: Iterable[tuple[VariableLike, Sequence[Range] | None]],
    *,
    seed: int = 0,
    session: Session | str | None = None,
    streams: int = 1,
    out: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """Fetch (variable, slice) pairs (slice None: the whole tensor; a variable's own `slice` is
    replaced) and return the shards in the same order. Identical pairs are fetched once; several
    slices of one variable go in separate requests (a request's names are unique), run
    concurrently. Needs a non-zero `seed` or a by-name session, so every caller gets the same values.

    `out` (one entry per pair, or None): where a pair's bytes go in place, as `Client.materialize_into`
    checks and writes them (the returned shard is then that memory); None entries get buffers of
    their own. A pair with a destination is fetched into it even if it repeats another pair."""
    from .client import _destinations

    _check_seed(seed, session)
    specs = [_spec(variable, ranges) for variable, ranges in items]
    outs = list(out) if out is not None else [None] * len(specs)
    if len(outs) != len(specs):
        raise ValueError(f"out has {len(outs)} entries for {len(specs)} pairs")
    # A pair with a destination is its own key: it is written there, never shared with another.
    keys = [
        s.SerializeToString(deterministic=True) + (b"" if o is None else b"#%d" % i)
        for i, (s, o) in enumerate(zip(specs, outs, strict=True))
    ]
    unique: dict[bytes, int] = {}
    rounds: list[list[int]] = []  # indexes into specs, names unique in each round
    names: list[set[str]] = []
    for i, key in enumerate(keys):
        if key in unique:
            continue
        unique[key] = i
        for members, taken in zip(rounds, names, strict=True):
            if specs[i].name not in taken:
                members.append(i)
                taken.add(specs[i].name)
                break
        else:
            rounds.append([i])
            names.append({specs[i].name})

    def run(members: list[int]) -> dict[int, np.ndarray]:
        request = client.request([specs[i] for i in members], seed=seed, session=session)
        given = {n: outs[i] for n, i in enumerate(members) if outs[i] is not None}
        into = _destinations(request, given, session, partial=True)
        tensors = client._fetch_into(request, into, session, streams, None)
        return {i: tensor.array for i, tensor in zip(members, tensors, strict=True)}

    fetched: dict[int, np.ndarray] = {}
    if len(rounds) <= 1:
        for members in rounds:
            fetched.update(run(members))
    else:
        with ThreadPoolExecutor(max_workers=min(len(rounds), 4), thread_name_prefix="weightgen-shards") as pool:
            for result in pool.map(run, rounds):
                fetched.update(result)
    return [fetched[unique[key]] for key in keys]


def fetch_shard(
    client: Client,
    variable: VariableLike,
    ranges: Sequence[Range] | None = None,
    *,
    seed: int = 0,
    session: Session | str | None = None,
    rank: int | None = None,
    world: int | None = None,
    axis: int = 0,
) -> np.ndarray:
    """One shard of `variable`: the slice `ranges`, or rank `rank` of `world` along `axis`
    (`rank_slice`). With neither, the variable's own `slice` (or the whole tensor)."""
    if rank is not None or world is not None:
        if ranges is not None:
            raise ValueError("give either ranges or rank and world, not both")
        if rank is None or world is None:
            raise ValueError("rank and world go together")
        ranges = rank_slice(variable_spec(variable).shape, rank, world, axis)
    return fetch_shards(client, [(variable, ranges)], seed=seed, session=session)[0]


__all__ = [
    "Range",
    "Ranges",
    "ShardFn",
    "as_index",
    "assemble",
    "fetch_shard",
    "fetch_shards",
    "full_slice",
    "mesh_coords",
    "mesh_slice",
    "ranges_of_index",
    "rank_shards",
    "rank_slice",
    "shard_range",
    "shard_slice",
    "slice_shape",
]
