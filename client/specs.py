"""Friendly Python for the API's messages: variables, initializers, dtypes and slices as protos.

    Variable("fc.weight", (256, 784), init.kaiming_uniform(a=5**0.5, layout="channels_first"))
    Variable("wte.weight", [50257, 768], "random_normal(stddev=0.02)", dtype="bfloat16")
    Variable("h.0.mlp.c_fc.weight", [768, 3072], {"heNormal": {}}, slice=np.s_[:, :1536])

An initializer is a `pb.Initializer`, a dict in its protobuf JSON form (``{"randomUniform": {"min": -1}}``),
a name (``"he_normal"``, ``"heNormal"``) optionally with parameters (``"random_uniform(min=-1, max=1)"``),
or a call of the `init` helpers, which are generated from the proto's ``Initializer`` oneof so every
initializer the API has is there with its own parameters::

    init.variance_scaling(2.0, "fan_out", "normal", layout="channels_first")
    init.glorot_uniform(fan_in_axes=[0], fan_out_axes=[1], batch_axes=[2])
    init.broadcast(np.arange(3.0))
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

InitializerLike = pb.Initializer | Mapping[str, Any] | str | None
DTypeLike = str | int | np.dtype | type | None
SliceLike = Sequence[slice | tuple[int, int] | Sequence[int] | pb.Range] | slice | None

_KINDS = pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields
_KIND_BY_NAME: dict[str, FieldDescriptor] = {f.name: f for f in _KINDS} | {f.json_name: f for f in _KINDS}
ALIASES = {"normal": "random_normal", "uniform": "random_uniform"}
"""Short names accepted wherever an initializer name is."""

_FAN_KEYWORDS = ("layout", "fan_in_axes", "fan_out_axes", "batch_axes")
DTYPE_ALIASES = {
    **{alias: "float32" for alias in ("fp32", "f32", "single", "float32")},
    **{alias: "float64" for alias in ("fp64", "f64", "double")},
    **{alias: "float16" for alias in ("fp16", "f16", "half")},
    **{alias: "bfloat16" for alias in ("bf16",)},
    **{alias: "complex64" for alias in ("c64", "cfloat")},
    **{alias: "complex128" for alias in ("c128", "cdouble")},
    **{f"i{bits}": f"int{bits}" for bits in (8, 16, 32, 64)},
    **{f"u{bits}": f"uint{bits}" for bits in (8, 16, 32, 64)},
    "long": "int64",
    "short": "int16",
    "boolean": "bool",
}
"""Names a user types for a dtype (case-insensitive), beside weightgen's own (``float32``) and the
enum's (``DTYPE_FLOAT32``)."""

AMBIGUOUS_DTYPES = {
    "float": "float32 (PyTorch's torch.float) or float64 (numpy's float)",
    "int": "int32 (PyTorch's torch.int) or int64 (numpy's int)",
    "complex": "complex64 (PyTorch's torch.cfloat) or complex128 (numpy's complex)",
}
"""Names that mean different widths in different libraries: refused rather than guessed."""


def did_you_mean(text: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of `choices`, or ``""``."""
    close = difflib.get_close_matches(str(text), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- enums and dtypes --------------------------------------------------------------------------


def enum_value(enum_type, value: str | int) -> int:
    """An enum value from its number, its full name (``FAN_MODE_FAN_OUT``) or its short lower-case
    name as the engine and ListInitializers spell it (``fan_out``)."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{enum_type.name}: expected a name or number, got {value!r}")
    if isinstance(value, int):
        if value not in enum_type.values_by_number:
            raise ValueError(f"{enum_type.name}: unknown value {value}")
        return value
    prefix = enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
    text = str(value).strip()
    for candidate in (text, text.upper(), prefix + text.upper()):
        if candidate in enum_type.values_by_name:
            return enum_type.values_by_name[candidate].number
    choices = [v.name.removeprefix(prefix).lower() for v in enum_type.values if v.number]
    hint = did_you_mean(text.lower(), choices)
    raise ValueError(f"{enum_type.name}: unknown value {value!r}{hint}; choose from {', '.join(choices)}")


def enum_short_name(enum_type, number: int) -> str:
    """The short lower-case name of an enum value (FAN_MODE_FAN_OUT -> ``fan_out``)."""
    prefix = enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return enum_type.values_by_number[number].name.removeprefix(prefix).lower()


def dtype_value(dtype: DTypeLike) -> int:
    """The DType enum value of `dtype`: None (unspecified: the session's default, else float32), an
    enum number, a name (``"bfloat16"``, ``"DTYPE_BFLOAT16"``, an alias such as ``"bf16"`` or
    ``"fp32"``: `DTYPE_ALIASES`), a numpy dtype or scalar type (JAX's ``jnp.bfloat16`` is one), a
    torch dtype (``torch.float16``) or a Python type (``float`` is float64, as in numpy)."""
    if dtype is None:
        return pb.DTYPE_UNSPECIFIED
    if isinstance(dtype, bool):
        raise ValueError(f"dtype: expected a dtype, got {dtype!r}")
    if isinstance(dtype, int):
        return enum_value(pb.DType.DESCRIPTOR, dtype)
    if isinstance(dtype, str):
        text = dtype.strip()
        if text in wire.BY_NAME:
            return wire.BY_NAME[text]
        if text.upper() in pb.DType.DESCRIPTOR.values_by_name:
            return pb.DType.Value(text.upper())
        if text.lower() in DTYPE_ALIASES:
            return wire.BY_NAME[DTYPE_ALIASES[text.lower()]]
        if text.lower() in AMBIGUOUS_DTYPES:
            raise ValueError(f"dtype {dtype!r} is ambiguous: say {AMBIGUOUS_DTYPES[text.lower()]}")
        names = [*wire.BY_NAME, *DTYPE_ALIASES]
        raise ValueError(
            f"unknown dtype {dtype!r}{did_you_mean(text.lower(), names)}; choose from {', '.join(wire.BY_NAME)}"
        )
    if type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":  # torch.float16, without importing torch
        name = str(dtype).removeprefix("torch.")
        if name in wire.BY_NAME:
            return wire.BY_NAME[name]
        raise ValueError(f"weightgen has no dtype for {dtype}; choose from {', '.join(wire.BY_NAME)}")
    try:
        return wire.dtype_enum(dtype)
    except (KeyError, TypeError) as e:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(wire.BY_NAME)}") from e


def as_int(value: Any, where: str) -> int:
    """``int(value)``, refusing booleans (``int(True)`` is 1: a shape of ``[True, 3]`` or a seed of
    ``False`` is a mistake, not a number)."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{where}: expected an integer, got the boolean {value!r}")
    return int(value)


# -- initializers ------------------------------------------------------------------------------


def _tensor(value: Any) -> pb.Tensor:
    """A broadcast base: a pb.Tensor, or anything numpy turns into an array of a weightgen dtype."""
    if isinstance(value, pb.Tensor):
        return value
    array = np.asarray(value)
    dtype = dtype_value(array.dtype)
    little = np.ascontiguousarray(array, dtype=wire.numpy_dtype(dtype).newbyteorder("<"))
    return pb.Tensor(dtype=dtype, shape=list(array.shape), data=little.tobytes())


def _set_param(message, field: FieldDescriptor, value: Any, where: str) -> None:
    if field.enum_type is not None:
        setattr(message, field.name, enum_value(field.enum_type, value))
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(_tensor(value))
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        if isinstance(value, bool | np.bool_):  # float(True) is 1.0: a boolean is not a number here
            raise ValueError(f"{where}: expected a number, got the boolean {value!r}")
        try:
            setattr(message, field.name, float(value))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    elif field.type == FieldDescriptor.TYPE_INT32:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool | np.bool_):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        setattr(message, field.name, value)
    else:  # pragma: no cover - the proto has no other parameter types
        setattr(message, field.name, value)


def fan_axes(
    layout: str | int | None = None,
    fan_in_axes: Iterable[int] | None = None,
    fan_out_axes: Iterable[int] | None = None,
    batch_axes: Iterable[int] | None = None,
) -> pb.FanAxes | None:
    """A FanAxes message (None when every argument is None). `layout` is ``channels_last`` (JAX,
    Keras, GoMLX: ``[spatial..., in, out]``) or ``channels_first`` (PyTorch: ``[out, in, spatial...]``)."""
    if layout is None and fan_in_axes is None and fan_out_axes is None and batch_axes is None:
        return None
    axes = pb.FanAxes(
        in_axes=[as_int(a, "fan_in_axes") for a in fan_in_axes or ()],
        out_axes=[as_int(a, "fan_out_axes") for a in fan_out_axes or ()],
        batch_axes=[as_int(a, "batch_axes") for a in batch_axes or ()],
    )
    if layout is not None:
        axes.layout = enum_value(pb.FanLayout.DESCRIPTOR, layout)
    return axes


def make_initializer(kind: str, *args: Any, **kwargs: Any) -> pb.Initializer:
    """An Initializer of `kind` (oneof field name, JSON name or alias) with its parameters given
    positionally (in the message's field order) or by name, plus the FanAxes keywords
    ``layout``, ``fan_in_axes``, ``fan_out_axes`` and ``batch_axes``."""
    field = _KIND_BY_NAME.get(ALIASES.get(kind, kind))
    if field is None:
        names = [f.name for f in _KINDS]
        hint = did_you_mean(kind, [*names, *ALIASES])
        raise ValueError(f"unknown initializer {kind!r}{hint}; choose from {', '.join(names)}")
    body_fields = field.message_type.fields
    if len(args) > len(body_fields):
        raise ValueError(f"{field.name} takes at most {len(body_fields)} positional parameters, got {len(args)}")
    params = dict(zip((f.name for f in body_fields), args, strict=False))
    axes = {k: kwargs.pop(k) for k in _FAN_KEYWORDS if k in kwargs}
    for name in kwargs:
        if name in params:
            raise ValueError(f"{field.name}: parameter {name!r} given twice")
    params.update(kwargs)
    message = pb.Initializer()
    body = getattr(message, field.name)
    body.SetInParent()
    by_name = {f.name: f for f in body_fields} | {f.json_name: f for f in body_fields}
    for name, value in params.items():
        if name not in by_name:
            known = ", ".join(f.name for f in body_fields) or "none"
            hint = did_you_mean(name, [f.name for f in body_fields])
            raise ValueError(f"{field.name}: unknown parameter {name!r}{hint} (parameters: {known})")
        if value is not None:
            _set_param(body, by_name[name], value, f"{field.name}.{name}")
    fans = fan_axes(**axes)
    if fans is not None:
        message.fan_axes.CopyFrom(fans)
    return message


def _split_args(text: str) -> list[str]:
    """Split ``a=1, b=[0, 1]`` at top-level commas."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current))
    return [p.strip() for p in parts]


def _literal(text: str) -> Any:
    """A parameter value in an initializer string: a number, a list of numbers, or a bare word."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip("'\"")


_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def parse_initializer(text: str) -> pb.Initializer:
    """An Initializer from ``name`` or ``name(p=v, ...)``, e.g. ``"kaiming_normal(mode=fan_out,
    nonlinearity=relu, layout=channels_first)"`` or ``"random_normal(0.02)"``."""
    match = _CALL.match(text)
    if not match:
        raise ValueError(f"cannot parse initializer {text!r}: expected name or name(param=value, ...)")
    kind, arguments = match.group(1), match.group(2) or ""
    args, kwargs = [], {}
    for part in _split_args(arguments):
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key.strip()] = _literal(value.strip())
        elif kwargs:
            raise ValueError(f"initializer {text!r}: a positional parameter follows a named one")
        else:
            args.append(_literal(part))
    return make_initializer(kind, *args, **kwargs)


def reject_booleans(data: Any, descriptor, where: str = "") -> None:
    """Raise ValueError naming the field when `data`, protobuf JSON for a message of `descriptor`,
    has a boolean where the message has a number or an enum: ``json_format.ParseDict`` reads a
    Python ``True`` (and ``json_format.Parse`` a JSON ``true``) as 1.0 for a double field and as 1
    for an integer or enum field, so ``{"xavierUniform": {"gain": false}}`` would silently give
    zeros. Unknown keys are left for ParseDict to report."""
    if not isinstance(data, Mapping):
        return
    fields = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            continue
        path = f"{where}.{key}" if where else str(key)
        repeated = field.is_repeated and isinstance(value, list)
        items = list(enumerate(value)) if repeated else [(None, value)]
        for i, item in items:
            at = path if i is None else f"{path}[{i}]"
            if field.message_type is not None:
                reject_booleans(item, field.message_type, at)
            elif field.type != FieldDescriptor.TYPE_BOOL and isinstance(item, bool | np.bool_):
                raise ValueError(f"{at}: expected a number, got the boolean {item!r}")


def initializer(value: InitializerLike) -> pb.Initializer | None:
    """An Initializer message from any accepted form (None stays None: the session's default)."""
    if value is None:
        return None
    if isinstance(value, pb.Initializer):
        return value
    if isinstance(value, str):
        return parse_initializer(value)
    if isinstance(value, Mapping):
        reject_booleans(value, pb.Initializer.DESCRIPTOR, "initializer")
        try:
            return json_format.ParseDict(dict(value), pb.Initializer())
        except json_format.ParseError as e:
            raise ValueError(f"initializer {dict(value)!r}: {e}") from None
    raise TypeError(f"cannot make an initializer from {type(value).__name__}: {value!r}")


class _InitializerHelpers:
    """One function per initializer of the API, e.g. ``init.he_normal()``,
    ``init.random_uniform(min=-1, max=1)``; see `make_initializer`."""

    def __dir__(self) -> list[str]:
        return sorted(f.name for f in _KINDS)


def _helper(field: FieldDescriptor) -> Callable[..., pb.Initializer]:
    def build(*args: Any, **kwargs: Any) -> pb.Initializer:
        return make_initializer(field.name, *args, **kwargs)

    params = [
        inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
        for f in field.message_type.fields
    ]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in _FAN_KEYWORDS]
    build.__name__ = build.__qualname__ = field.name
    build.__signature__ = inspect.Signature(params, return_annotation=pb.Initializer)
    names = ", ".join(f.name for f in field.message_type.fields) or "no parameters"
    build.__doc__ = (
        f"The {field.name!r} initializer ({names}; absent ones take the server's defaults, see "
        f"`weightgen list`), with optional FanAxes keywords {', '.join(_FAN_KEYWORDS)}."
    )
    return build


init = _InitializerHelpers()
"""Initializer helpers, one per kind of the API: ``init.he_normal()``, ``init.orthogonal(scale=2)``."""
for _field in _KINDS:
    setattr(init, _field.name, _helper(_field))


# -- slices and variables ----------------------------------------------------------------------


def slice_ranges(value: SliceLike, shape: Sequence[int]) -> list[pb.Range]:
    """One Range per axis from numpy-style slices (``np.s_[:, 128:256]``; trailing axes may be
    omitted; steps are not allowed), (start, stop) pairs or Range messages. None: the whole tensor."""
    if value is None:
        return []
    items = list(value) if isinstance(value, tuple | list) else [value]
    if len(items) > len(shape):
        raise ValueError(f"slice has {len(items)} axes, the shape {list(shape)} has {len(shape)}")
    items += [slice(None)] * (len(shape) - len(items))
    ranges = []
    for axis, (item, dim) in enumerate(zip(items, shape, strict=True)):
        if isinstance(item, pb.Range):
            ranges.append(pb.Range(start=item.start, stop=item.stop))
        elif isinstance(item, slice):
            if item.step not in (None, 1):
                raise ValueError(f"slice axis {axis}: steps are not supported ({item})")
            start, stop, _ = item.indices(int(dim))
            ranges.append(pb.Range(start=start, stop=max(start, stop)))
        else:
            start, stop = (as_int(x, f"slice axis {axis}") for x in item)
            ranges.append(pb.Range(start=start, stop=stop))
    return ranges


@dataclass(frozen=True)
class Variable:
    """One variable to generate: `name`, full `shape`, `initializer` (any form `initializer()`
    accepts; None = the session's default), `dtype` (None = the session's default, else float32),
    `seed` (non-zero overrides the request's or session's seed for it) and `slice` (a shard of the
    full tensor; fans always come from the full shape)."""

    name: str
    shape: Sequence[int]
    initializer: InitializerLike = None
    dtype: DTypeLike = None
    seed: int = 0
    slice: SliceLike = None

    def __post_init__(self) -> None:
        # A dtype or initializer the client cannot send is an error here, not at the fetch.
        try:
            dtype_value(self.dtype)
            initializer(self.initializer)
        except ValueError as e:
            raise ValueError(f"variable {self.name!r}: {e}") from None

    def to_proto(self) -> pb.VariableSpec:
        spec = pb.VariableSpec(
            name=self.name,
            shape=[as_int(d, f"{self.name}: shape") for d in self.shape],
            dtype=dtype_value(self.dtype),
            seed=as_int(self.seed, f"{self.name}: seed"),
            slice=slice_ranges(self.slice, self.shape),
        )
        message = initializer(self.initializer)
        if message is not None:
            spec.initializer.CopyFrom(message)
        return spec


VariableLike = Variable | pb.VariableSpec | Mapping[str, Any]


def variable_spec(value: VariableLike) -> pb.VariableSpec:
    """A VariableSpec from a Variable, a VariableSpec (copied) or a dict: either protobuf JSON
    (``{"name": ..., "shape": [...], "dtype": "DTYPE_FLOAT32", "initializer": {"heNormal": {}}}``) or
    Variable's keywords (``{"name": ..., "shape": [...], "initializer": "he_normal", "dtype": "bf16"}``)."""
    if isinstance(value, Variable):
        return value.to_proto()
    if isinstance(value, pb.VariableSpec):
        copy = pb.VariableSpec()
        copy.CopyFrom(value)
        return copy
    if isinstance(value, Mapping):
        reject_booleans(value, pb.VariableSpec.DESCRIPTOR, str(value.get("name", "variable")))
        try:
            return json_format.ParseDict(dict(value), pb.VariableSpec())
        except json_format.ParseError:
            return Variable(**value).to_proto()
    raise TypeError(f"cannot make a VariableSpec from {type(value).__name__}: {value!r}")


def variable_specs(variables: VariableLike | Iterable[VariableLike]) -> list[pb.VariableSpec]:
    """A list of VariableSpecs from one variable or many."""
    if isinstance(variables, Variable | pb.VariableSpec):
        return [variable_spec(variables)]
    if isinstance(variables, Mapping) and "name" in variables:
        return [variable_spec(variables)]
    return [variable_spec(v) for v in variables]


def delivered_shape(spec: pb.VariableSpec | pb.TensorInfo) -> tuple[int, ...]:
    """The shape of the delivered tensor: the slice's, or the full shape."""
    if spec.slice:
        return tuple(r.stop - r.start for r in spec.slice)
    return tuple(spec.shape)


def planned_bytes(spec: pb.VariableSpec, default_dtype: int = pb.DTYPE_FLOAT32) -> int:
    """The bytes a variable will deliver (before any resume offset), with `default_dtype` for an
    unspecified dtype."""
    dtype = spec.dtype or default_dtype or pb.DTYPE_FLOAT32
    count = 1
    for d in delivered_shape(spec):
        count *= max(0, d)
    return count * wire.numpy_dtype(dtype).itemsize


__all__ = [
    "Variable",
    "as_int",
    "delivered_shape",
    "dtype_value",
    "enum_value",
    "fan_axes",
    "init",
    "initializer",
    "make_initializer",
    "parse_initializer",
    "planned_bytes",
    "reject_booleans",
    "slice_ranges",
    "variable_spec",
    "variable_specs",
]
