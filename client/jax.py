"""JAX and Flax: weightgen's arrays as JAX arrays, and whole parameter pytrees filled from a
weightgen server, optionally sharded over devices (JAX is imported only when called).

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)     # a pytree of jax.ShapeDtypeStruct
    params = materialize_tree(shapes, client, seed=42)            # the same pytree, of jax.Array
    params = materialize_tree(shapes, client, seed=42, mesh=mesh, shardings=ShardingRules({
        "*/kernel": P(None, "model"),                             # first match wins
        "*": P(),                                                 # the rest replicated
    }))
    params = materialize_tree(shapes, client, seed=42, mesh=mesh, shardings="flax")  # with_partitioning

Each leaf becomes a variable named by its path (``params/Dense_0/kernel``), with the initializer
of the first matching rule: the caller's `rules`, then Flax's defaults by the last path component
(`FLAX_DEFAULTS`: ``kernel`` lecun_normal, ``bias`` zeros, ``embedding`` variance_scaling(1,
fan_in, normal) over the features axis, ``scale`` ones; batch statistics ``mean`` 0 and ``var``
1). Layouts are channels-last (JAX's ``[..., in, out]``) unless an initializer names its fan axes.
Flax's boxed leaves (Linen's ``nn.Partitioned`` from ``nn.with_partitioning``, NNX's
``nnx.Variable`` in ``nnx.state(...)``) are leaves named by the box's path, and come back boxed.

With shardings each leaf has its own sharding (one for all, a pytree, a function, `ShardingRules`
or Flax's partitioning metadata), checked against the leaf's shape before anything is fetched;
each device gets only its own slice, fetched from the server as such (slices that several devices
share, replicas, are fetched once), so every process of a multi-host job pulls only what its
devices hold.

JAX keeps 64-bit types only with ``jax_enable_x64``; without it, float64, int64, uint64 and
complex128 arrays would be silently narrowed, so they are refused with a clear error instead.
"""

from __future__ import annotations

import fnmatch
import math
import sys
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


def _check_width(dtype: np.dtype, name: str | None = None) -> None:
    import jax

    if np.dtype(dtype) in _WIDE and not jax.config.jax_enable_x64:
        where = f"{name!r}: " if name else ""
        raise ValueError(
            f"{where}{dtype} needs jax_enable_x64 (jax.config.update('jax_enable_x64', True)); "
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

    def __str__(self) -> str:
        return f"{self.name!r} (shape {list(self.shape)})"


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


def _table(rules: Mapping | Sequence | None) -> list[tuple[Any, Any]]:
    return list(rules.items()) if isinstance(rules, Mapping) else list(rules or ())


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


# Flax's boxes: Linen's AxisMetadata (nn.Partitioned, nn.LogicallyPartitioned) and NNX's Variable
# (VariableState in older Flax). Looked up in sys.modules: a tree can only hold them if Flax is
# already imported, and weightgen does not import it otherwise.


def _box_kind(x: Any) -> str | None:
    meta = sys.modules.get("flax.core.meta")
    if meta is not None and isinstance(x, meta.AxisMetadata):
        return "linen"
    variables = sys.modules.get("flax.nnx.variablelib")
    if variables is not None:
        kinds = tuple(k for k in (getattr(variables, n, None) for n in ("Variable", "VariableState")) if k)
        if isinstance(x, kinds):
            return "nnx"
    return None


def _unbox(x: Any) -> Any:
    kind = _box_kind(x)
    if kind == "nnx":
        return x.get_value() if hasattr(x, "get_value") else x.value
    if kind == "linen":
        return x.value if hasattr(x, "value") else x.unbox()
    return x


def _rebox(box: Any, value: Any) -> Any:
    kind = _box_kind(box)
    if kind == "nnx":
        return box.replace(value)
    if kind == "linen":
        return box.replace_boxed(value)
    return value


@dataclass(frozen=True)
class _Entry:
    keys: tuple[str, ...]  # the path, a name per component, for matching a pytree of shardings
    leaf: Leaf
    box: Any  # the Flax box the leaf came in, or None


def _flatten(shapes: Any, sep: str) -> tuple[list[_Entry], Any]:
    import jax

    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: _box_kind(x) is not None)
    entries = []
    for path, item in flat:
        value = _unbox(item)
        name = path_name(path, sep)
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise ValueError(f"leaf {name!r} is {type(value).__name__}, not an array or jax.ShapeDtypeStruct")
        try:
            dtype = np.dtype(value.dtype)
            wire.numpy_dtype(dtype_value(dtype))  # a dtype weightgen has, or a clear error
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(
                f"leaf {name!r} (shape {list(value.shape)}) has dtype {value.dtype}, which weightgen does not "
                "generate (an NNX state: take only the parameters, nnx.state(model, nnx.Param))"
            ) from e
        leaf = Leaf(name, tuple(int(d) for d in value.shape), dtype)
        box = item if _box_kind(item) else None
        entries.append(_Entry(tuple(_key_name(k) for k in path), leaf, box))
    names = [e.leaf.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"two leaves have the same path name; pass another sep than {sep!r}")
    return entries, treedef


def tree_variables(
    shapes: Any, *, rules: Rules | None = None, defaults: bool = True, sep: str = "/"
) -> tuple[list[Variable], Any]:
    """The Variable of every leaf of `shapes` (anything with ``.shape`` and ``.dtype``, or a Flax
    box of it) and the treedef to rebuild the tree (Flax boxes are its leaves)."""
    entries, treedef = _flatten(shapes, sep)
    table = _table(rules) + (FLAX_DEFAULTS if defaults else [])
    return [_variable(e.leaf, table) for e in entries], treedef


# -- shardings ---------------------------------------------------------------------------------


class ShardingRules:
    """Shardings by path: ``(key, spec)`` pairs, or a mapping, where a key is a glob on the leaf's
    path name (``"*/attn/*/kernel"``) or a predicate on the `Leaf` (`Last`), and a spec is a
    ``jax.sharding.Sharding``, a ``PartitionSpec`` (on `materialize_tree`'s `mesh`) or None (the
    leaf whole on JAX's default device). The first matching key wins; a leaf that no key matches is
    replicated over `mesh` (``PartitionSpec()``); add ``("*", None)`` last to keep such leaves whole
    on the default device instead."""

    def __init__(self, rules: Mapping[RuleKey, Any] | Sequence[tuple[RuleKey, Any]]):
        self.rules = _table(rules)
        for key, _ in self.rules:
            if not isinstance(key, str) and not callable(key):
                raise TypeError(f"ShardingRules: a key is a path glob or a predicate on a Leaf, got {key!r}")

    def spec(self, leaf: Leaf) -> Any:
        """The spec of the first rule whose key matches `leaf`, else ``PartitionSpec()``."""
        return self._match(leaf)[0]

    def _match(self, leaf: Leaf) -> tuple[Any, str]:
        from jax.sharding import PartitionSpec

        for key, spec in self.rules:
            if _matches(key, leaf):
                return spec, f"ShardingRules' rule {key!r}"
        return PartitionSpec(), "ShardingRules (no rule matches the leaf, so it is replicated)"

    def __repr__(self) -> str:
        return f"ShardingRules({self.rules!r})"


ShardingsArg = Any
"""None, a Sharding or PartitionSpec for every leaf, a pytree of them (None: whole on the default
device) matching `shapes` or a prefix of it, a function ``Leaf -> Sharding | PartitionSpec | None``,
`ShardingRules`, or ``"flax"``."""


def _is_spec(x: Any) -> bool:
    from jax.sharding import PartitionSpec, Sharding

    return x is None or isinstance(x, Sharding | PartitionSpec)


def _from_pytree(shardings: Any, entries: list[_Entry], sep: str) -> list[Any]:
    """One spec per entry from a pytree of specs matching the leaves' tree or a prefix of it
    (a spec at a subtree's root is every leaf's under it)."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: _is_spec(x) or _box_kind(x) is not None)[0]
    given: dict[tuple[str, ...], Any] = {}
    for path, item in flat:
        spec = _unbox(item)
        if not _is_spec(spec):
            raise TypeError(
                f"shardings at {path_name(path, sep)!r}: expected a Sharding, a PartitionSpec or None, got {spec!r}"
            )
        given[tuple(_key_name(k) for k in path)] = spec
    used: set[tuple[str, ...]] = set()
    specs = []
    for entry in entries:
        prefixes = [entry.keys[:n] for n in range(len(entry.keys) + 1)]
        found = [p for p in prefixes if p in given]
        if not found:
            raise ValueError(
                f"shardings has nothing for the leaf {entry.leaf}: give a pytree of shardings matching "
                "shapes (or a prefix of it), with None for leaves to keep whole on the default device"
            )
        used.add(found[0])
        specs.append(given[found[0]])
    extra = [sep.join(k) for k in given if k not in used]
    if extra:
        raise ValueError(f"shardings has entries that are not leaves or subtrees of shapes: {extra[:5]}")
    return specs


def _flax_spec(entry: _Entry) -> tuple[Any, Any]:
    """The PartitionSpec Flax's metadata gives a leaf (``PartitionSpec()``, replicated, for an
    unannotated one, as Flax's own get_partition_spec) and the mesh its box names, if any."""
    from jax.sharding import PartitionSpec

    box = entry.box
    kind = _box_kind(box)
    if kind == "nnx":
        from flax import nnx

        metadata = box.get_metadata() if hasattr(box, "get_metadata") else {}
        return _unbox(nnx.get_partition_spec(box)), metadata.get("mesh")
    if kind == "linen":
        return box.get_partition_spec(), getattr(box, "mesh", None)
    return PartitionSpec(), None


def _leaf_specs(shardings: ShardingsArg, entries: list[_Entry], sep: str) -> list[tuple[Any, Any, str]]:
    """Per entry: (spec, the mesh it names if any, where it came from, for messages)."""
    if shardings is None or _is_spec(shardings):
        return [(shardings, None, "the one sharding given for every leaf")] * len(entries)
    if isinstance(shardings, str):
        if shardings != "flax":
            raise ValueError(f"shardings={shardings!r}: the only name accepted is 'flax'")
        return [(*_flax_spec(e), "Flax's partitioning metadata") for e in entries]
    if isinstance(shardings, ShardingRules):
        return [(spec, None, origin) for spec, origin in (shardings._match(e.leaf) for e in entries)]
    if callable(shardings) and not isinstance(shardings, Mapping | Sequence):
        return [(shardings(e.leaf), None, "the shardings function") for e in entries]
    return [(spec, None, "the shardings pytree") for spec in _from_pytree(shardings, entries, sep)]


def _entry_axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple | list) else (entry,)


def _check_named(leaf: Leaf, spec: Any, mesh: Any, fail: Callable[[str], ValueError]) -> None:
    """What JAX asks of a NamedSharding's spec for this leaf, said with the leaf's name."""
    from jax.sharding import PartitionSpec

    axes = dict(mesh.shape)
    if len(spec) > len(leaf.shape):
        raise fail(f"has {len(spec)} entries but the leaf has rank {len(leaf.shape)}")
    seen: set[str] = set()
    for axis, (entry, dim) in enumerate(zip(spec, leaf.shape, strict=False)):
        if entry is PartitionSpec.UNCONSTRAINED:
            raise fail(f"leaves axis {axis} unconstrained, which says nothing about where its values go")
        names = _entry_axes(entry)
        for name in names:
            if name not in axes:
                raise fail(f"names mesh axis {name!r}, which the mesh {axes} does not have")
            if name in seen:
                raise fail(f"uses mesh axis {name!r} twice")
            seen.add(name)
        parts = math.prod(axes[n] for n in names)
        if dim % parts:
            raise fail(
                f"splits axis {axis} (size {dim}) {parts} ways over mesh axes {names}, which does not divide it "
                "(JAX's NamedSharding needs even shards)"
            )


def _resolve(leaf: Leaf, spec: Any, box_mesh: Any, mesh: Any, origin: str) -> Any:
    """The leaf's jax.sharding.Sharding (None: whole on the default device), checked to fit it."""
    from jax.sharding import NamedSharding, PartitionSpec

    def fail(problem: str, per_leaf_hint: bool = True) -> ValueError:
        hint = ""
        if origin.startswith("the one sharding") and per_leaf_hint:
            hint = (
                "; one sharding for every leaf must fit every leaf: give one per leaf "
                "(ShardingRules, a function of the Leaf, or a pytree)"
            )
        return ValueError(f"sharding for the leaf {leaf} from {origin}: {spec} {problem}{hint}")

    if spec is None:
        return None
    if isinstance(spec, PartitionSpec):
        if box_mesh is not None and mesh is not None and box_mesh != mesh:
            raise fail(
                f"comes with its own mesh {dict(box_mesh.shape)}, not mesh= {dict(mesh.shape)}", per_leaf_hint=False
            )
        on = mesh if mesh is not None else box_mesh
        if on is None:
            raise fail("is a PartitionSpec: pass mesh= (a jax.sharding.Mesh) to place it", per_leaf_hint=False)
        _check_named(leaf, spec, on, fail)
        try:
            sharding = NamedSharding(on, spec)
        except Exception as e:  # what JAX refuses beyond the checks above
            raise fail(f"is refused by JAX: {e}") from e
    else:
        sharding = spec
        if isinstance(sharding, NamedSharding):
            _check_named(leaf, sharding.spec, sharding.mesh, fail)
    try:
        sharding.shard_shape(leaf.shape)
        sharding.addressable_devices_indices_map(leaf.shape)
    except Exception as e:  # any other Sharding that does not fit the shape: JAX's words, with the leaf's
        raise fail(f"does not fit: {type(e).__name__}: {e}") from e
    return sharding


def _shardings(entries: list[_Entry], shardings: ShardingsArg, mesh: Any, sep: str) -> list[Any]:
    import jax

    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh= must be a jax.sharding.Mesh of devices, got {type(mesh).__name__}")
    out = []
    for entry, (spec, box_mesh, origin) in zip(entries, _leaf_specs(shardings, entries, sep), strict=True):
        if not _is_spec(spec):
            raise TypeError(
                f"{origin} gave {spec!r} for the leaf {entry.leaf}: expected a Sharding, a PartitionSpec or None"
            )
        out.append(_resolve(entry.leaf, spec, box_mesh, mesh, origin))
    return out


def leaf_shardings(shapes: Any, shardings: ShardingsArg, *, mesh: Any = None, sep: str = "/") -> list[tuple[Leaf, Any]]:
    """Every leaf of `shapes` with the ``jax.sharding.Sharding`` `materialize_tree` would give it
    (None: whole on the default device), each checked to fit its leaf: a dry run that fetches nothing."""
    entries, _ = _flatten(shapes, sep)
    return list(zip((e.leaf for e in entries), _shardings(entries, shardings, mesh, sep), strict=True))


def materialize_tree(
    shapes: Any,
    client: Client,
    *,
    seed: int = 0,
    rules: Rules | None = None,
    shardings: ShardingsArg = None,
    mesh: Any = None,
    session: Session | str | None = None,
    defaults: bool = True,
    sep: str = "/",
    streams: int = 1,
) -> Any:
    """`shapes` (a pytree of ``jax.ShapeDtypeStruct``, as ``jax.eval_shape(model.init, ...)``
    returns, or of arrays, or Flax's boxes of them) with every leaf replaced by weightgen's values,
    as ``jax.Array``.

    `rules` map path globs (or predicates) to initializers and come before `FLAX_DEFAULTS`
    (``defaults=False`` drops those). `shardings` gives each leaf a sharding:

    - None: every leaf whole on JAX's default device;
    - one ``jax.sharding.Sharding`` (or ``PartitionSpec`` on `mesh`) for every leaf: each leaf must
      fit it;
    - a pytree of ``Sharding`` / ``PartitionSpec`` / None matching `shapes`, or a prefix of it (a
      spec at a subtree's root covers every leaf under it), e.g. ``nn.get_partition_spec(shapes)``;
    - a function ``Leaf -> Sharding | PartitionSpec | None``;
    - `ShardingRules`: path globs or predicates -> spec, first match wins, unmatched leaves
      replicated over `mesh`;
    - ``"flax"``: Flax's partitioning metadata (``nn.with_partitioning``, ``nnx.with_partitioning``,
      logical names through Flax's axis rules in context), unannotated leaves replicated.

    A ``PartitionSpec`` is placed on `mesh` (a ``jax.sharding.Mesh``; for ``"flax"`` a mesh the box
    names serves too). Every leaf's sharding is checked before anything is fetched: one that does not
    fit the leaf (more entries than its rank, an unknown or repeated mesh axis, an axis that does not
    divide evenly, ...) is a ValueError naming the leaf, its shape and the spec. Each addressable
    device gets its slice, as ``sharding.addressable_devices_indices_map(shape)`` says, fetched as a
    slice (fans always from the full shape), and the leaf is
    ``jax.make_array_from_single_device_arrays``. Needs a non-zero `seed` or a by-name `session`."""
    import jax

    entries, treedef = _flatten(shapes, sep)
    table = _table(rules) + (FLAX_DEFAULTS if defaults else [])
    variables = [_variable(e.leaf, table) for e in entries]
    for entry in entries:
        _check_width(entry.leaf.dtype, entry.leaf.name)
    placements = _shardings(entries, shardings, mesh, sep)
    items: list[tuple[Variable, Ranges | None]] = []
    plan: list[list[tuple[Any, int]] | int] = []  # per leaf: [(device, item index)] or an item index
    for variable, sharding in zip(variables, placements, strict=True):
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
    # fetch_shards' buffers are 64-byte aligned (assemble.ALIGNMENT), so on CPU jax.device_put adopts
    # them without a copy; on an accelerator it must copy host to device, the one copy left.
    arrays = fetch_shards(client, items, seed=seed, session=session, streams=streams)
    out = []
    for entry, sharding, placed in zip(entries, placements, plan, strict=True):
        if isinstance(placed, int):
            value = jax.device_put(arrays[placed])
        else:
            pieces = [jax.device_put(arrays[i], device) for device, i in placed]
            value = jax.make_array_from_single_device_arrays(entry.leaf.shape, sharding, pieces)
        out.append(value if entry.box is None else _rebox(entry.box, value))
    return jax.tree_util.tree_unflatten(treedef, out)


__all__ = [
    "FLAX_DEFAULTS",
    "Last",
    "Leaf",
    "ShardingRules",
    "array",
    "leaf_shardings",
    "materialize_tree",
    "path_name",
    "to_jax",
    "tree_variables",
]
