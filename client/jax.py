"""JAX and Flax: weightgen's arrays as JAX arrays, and whole parameter pytrees filled from a
weightgen server, optionally sharded over devices (JAX is imported only when called).

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)     # a pytree of jax.ShapeDtypeStruct
    params = materialize_tree(shapes, client, seed=42)            # the same pytree, of jax.Array
    params = materialize_tree(shapes, client, seed=42, shardings=NamedSharding(mesh, P(None, "model")))

Each leaf becomes a variable named by its path (``params/Dense_0/kernel``), with the initializer
of the first matching rule: the caller's `rules`, then Flax's defaults by the last path component
(`FLAX_DEFAULTS`: ``kernel`` lecun_normal, ``bias`` zeros, ``embedding`` variance_scaling(1,
fan_in, normal) over the features axis, ``scale`` ones; batch statistics ``mean`` 0 and ``var``
1). Layouts are channels-last (JAX's ``[..., in, out]``) unless an initializer names its fan axes.
With shardings each device gets only its own slice, fetched from the server as such (slices that
several devices share, replicas, are fetched once), so every process of a multi-host job pulls
only what its devices hold.

JAX keeps 64-bit types only with ``jax_enable_x64``; without it, float64, int64, uint64 and
complex128 arrays would be silently narrowed, so they are refused with a clear error instead.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from weightgen.v1 import wire

from .sharding import Ranges, fetch_shards, ranges_of_index
from .specs import InitializerLike, Variable, dtype_value

if TYPE_CHECKING:
    from .client import Client, Session

_WIDE = frozenset(np.dtype(t) for t in (np.float64, np.int64, np.uint64, np.complex128))


def _check_width(dtype: np.dtype) -> None:
    import jax

    if np.dtype(dtype) in _WIDE and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{dtype} needs jax_enable_x64 (jax.config.update('jax_enable_x64', True)); "
            "without it JAX would narrow the values"
        )


def array(value: np.ndarray, *, device: Any = None) -> Any:
    """One numpy array as a JAX array, on `device` (default: JAX's default device)."""
    import jax

    value = np.asarray(value)
    _check_width(value.dtype)
    return jax.device_put(value, device)


def to_jax(arrays: Mapping[str, np.ndarray], *, device: Any = None) -> dict[str, Any]:
    """`{name: array}` (what `Client.materialize` returns) as `{name: jax.Array}`."""
    return {name: array(value, device=device) for name, value in arrays.items()}


# -- pytrees -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One leaf of a parameter pytree, as rules see it: its path `name` (``params/Dense_0/kernel``),
    full `shape` and numpy `dtype`."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def last(self) -> str:
        """The last path component (``kernel``)."""
        return self.name.rsplit("/", 1)[-1]


RuleValue = InitializerLike | Callable[[Leaf], InitializerLike]
"""An initializer in any form `Variable` accepts, or a function of the Leaf."""
RuleKey = str | Callable[[Leaf], bool]
"""A glob on the path name (``"*/Dense_*/kernel"``, ``"params/embed/*"``) or a predicate."""
Rules = Mapping[RuleKey, RuleValue] | Sequence[tuple[RuleKey, RuleValue]]


@dataclass(frozen=True)
class Last:
    """A rule key that matches leaves whose last path component is `name` (``Last("kernel")``)."""

    name: str

    def __call__(self, leaf: Leaf) -> bool:
        return leaf.last == self.name


FLAX_DEFAULTS: list[tuple[RuleKey, RuleValue]] = [
    (Last("kernel"), "lecun_normal"),  # nn.Dense, nn.Conv, nn.DenseGeneral: lecun_normal, [..., in, out]
    (Last("bias"), "zeros"),
    # nn.Embed: variance_scaling(1.0, 'fan_in', 'normal', out_axis=0) on [vocab, features]:
    # JAX's fans make fan_in = features, which FanAxes say as in = axis 1, out = axis 0.
    (Last("embedding"), "variance_scaling(1, fan_in, normal, fan_in_axes=[1], fan_out_axes=[0])"),
    (Last("scale"), "ones"),  # nn.LayerNorm, nn.RMSNorm, nn.BatchNorm, nn.GroupNorm
    (Last("mean"), "zeros"),  # nn.BatchNorm's batch_stats
    (Last("var"), "ones"),
]
"""Flax's default initializers, by the last component of a leaf's path."""


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path: Sequence[Any], sep: str = "/") -> str:
    """A ``jax.tree_util`` key path as a name: ``params/Dense_0/kernel``, list items by index."""
    return sep.join(_key_name(k) for k in path)


def _matches(key: RuleKey, leaf: Leaf) -> bool:
    return fnmatch.fnmatchcase(leaf.name, key) if isinstance(key, str) else bool(key(leaf))


def _variable(leaf: Leaf, rules: list[tuple[RuleKey, RuleValue]]) -> Variable:
    for key, value in rules:
        if _matches(key, leaf):
            chosen = value(leaf) if callable(value) else value
            return Variable(leaf.name, leaf.shape, chosen, dtype=dtype_value(leaf.dtype))
    raise ValueError(
        f"no initializer rule for {leaf.name!r} (shape {list(leaf.shape)}, {leaf.dtype}): "
        "pass rules={'<path glob>': <initializer>}"
    )


def tree_variables(
    shapes: Any, *, rules: Rules | None = None, defaults: bool = True, sep: str = "/"
) -> tuple[list[Variable], Any]:
    """The Variable of every leaf of `shapes` (anything with ``.shape`` and ``.dtype``) and the
    treedef to rebuild the tree."""
    import jax

    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    table = list(rules.items()) if isinstance(rules, Mapping) else list(rules or ())
    table += FLAX_DEFAULTS if defaults else []
    variables = []
    for path, value in flat:
        leaf = Leaf(path_name(path, sep), tuple(int(d) for d in value.shape), np.dtype(value.dtype))
        wire.numpy_dtype(dtype_value(leaf.dtype))  # a dtype weightgen has, or a clear error
        variables.append(_variable(leaf, table))
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise ValueError(f"two leaves have the same path name; pass another sep than {sep!r}")
    return variables, treedef


def _leaf_shardings(shardings: Any, treedef: Any, variables: list[Variable]) -> list[Any]:
    import jax

    if shardings is None:
        return [None] * len(variables)
    if isinstance(shardings, jax.sharding.Sharding):
        return [shardings] * len(variables)
    if callable(shardings):
        return [shardings(Leaf(v.name, tuple(v.shape), wire.numpy_dtype(v.dtype))) for v in variables]
    return treedef.flatten_up_to(shardings)


def materialize_tree(
    shapes: Any,
    client: Client,
    *,
    seed: int = 0,
    rules: Rules | None = None,
    shardings: Any = None,
    session: Session | str | None = None,
    defaults: bool = True,
    sep: str = "/",
    streams: int = 1,
) -> Any:
    """`shapes` (a pytree of ``jax.ShapeDtypeStruct``, as ``jax.eval_shape(model.init, ...)``
    returns, or of arrays) with every leaf replaced by weightgen's values, as ``jax.Array``.

    `rules` map path globs (or predicates) to initializers and come before `FLAX_DEFAULTS`
    (``defaults=False`` drops those). `shardings` is None (each leaf whole on the default device),
    one ``jax.sharding.Sharding`` for every leaf, a pytree of them matching `shapes`, or a function
    ``Leaf -> Sharding | None``: each addressable device gets its slice, as
    ``sharding.addressable_devices_indices_map(shape)`` says, fetched as a slice (fans always from
    the full shape), and the leaf is ``jax.make_array_from_single_device_arrays``. Needs a
    non-zero `seed` or a by-name `session`."""
    import jax

    variables, treedef = tree_variables(shapes, rules=rules, defaults=defaults, sep=sep)
    leaf_shardings = _leaf_shardings(shardings, treedef, variables)
    items: list[tuple[Variable, Ranges | None]] = []
    plan: list[list[tuple[Any, int]] | int] = []  # per leaf: [(device, item index)] or an item index
    for variable, sharding in zip(variables, leaf_shardings, strict=True):
        _check_width(wire.numpy_dtype(dtype_value(variable.dtype)))
        if sharding is None:
            plan.append(len(items))
            items.append((variable, None))
            continue
        shape = tuple(variable.shape)
        placed = []
        seen: dict[Ranges, int] = {}
        for device, index in sharding.addressable_devices_indices_map(shape).items():
            ranges = ranges_of_index(index, shape)
            if ranges not in seen:
                seen[ranges] = len(items)
                items.append((variable, ranges))
            placed.append((device, seen[ranges]))
        plan.append(placed)
    arrays = fetch_shards(client, items, seed=seed, session=session, streams=streams)
    out = []
    for variable, sharding, placed in zip(variables, leaf_shardings, plan, strict=True):
        if isinstance(placed, int):
            out.append(jax.device_put(arrays[placed]))
            continue
        pieces = [jax.device_put(arrays[i], device) for device, i in placed]
        out.append(jax.make_array_from_single_device_arrays(tuple(variable.shape), sharding, pieces))
    return jax.tree_util.tree_unflatten(treedef, out)


__all__ = ["FLAX_DEFAULTS", "Last", "Leaf", "array", "materialize_tree", "path_name", "to_jax", "tree_variables"]
