"""PyTorch: weightgen's arrays as torch tensors, and whole modules built on the ``meta`` device
filled from a weightgen server (torch is imported only when called).

    with torch.device("meta"):
        model = GPT(config)                       # no memory, no initialisation
    materialize_module(model, client, seed=42)    # real CPU tensors: what weightgen produced
    shards = materialize_module(model, client, seed=42, shard=rank_shards({"*.c_fc.weight": 0}, rank, world))

Each parameter and persistent buffer becomes a variable named by its ``state_dict`` key, with
an initializer from the first matching rule: the caller's `rules`, then the preset's table
(`PRESETS`). ``preset="torch"`` reproduces the distributions of PyTorch's own ``reset_parameters``
(Linear and Conv weights ``kaiming_uniform(a=sqrt(5))``, their biases ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` with fan_in from the weight, Embedding ``N(0, 1)``, norms 1 and 0, batch-norm
statistics 0 and 1); ``preset="weightgen"`` is the modern transformer default (truncated normal
0.02 for Linear and Embedding weights, zeros for biases). Initializers without fan axes get
PyTorch's ``[out, in, spatial...]`` layout (``channels_first``). Tied parameters (one tensor under
several keys, as GPT-2's ``lm_head.weight`` and ``wte.weight``) are fetched once and stay tied.

bfloat16 has no numpy dtype of its own (ml_dtypes provides one torch does not know), so its
2-byte patterns travel as uint16 and are reinterpreted as ``torch.bfloat16``: no copy, no rounding.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from weightgen.v1 import weightgen_pb2 as pb

from .sharding import Range, ShardFn, fetch_shards, rank_slice
from .specs import InitializerLike, Variable, initializer

if TYPE_CHECKING:
    from .client import Client, Session


def tensor(array: np.ndarray, *, device: Any = None) -> Any:
    """One array as a torch tensor sharing its memory (on CPU), or copied to `device`."""
    import torch

    array = np.asarray(array)
    if not array.flags.writeable or not array.flags.c_contiguous:  # torch wants writable memory
        array = array.copy()  # (np.ascontiguousarray would make a 0-d array 1-d)
    if array.dtype == ml_dtypes.bfloat16:
        out = torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    else:
        out = torch.from_numpy(array)
    return out if device is None else out.to(device)


def to_torch(arrays: Mapping[str, np.ndarray], *, device: Any = None) -> dict[str, Any]:
    """`{name: array}` (what `Client.materialize` returns) as `{name: torch.Tensor}`, ready for
    ``model.load_state_dict``."""
    return {name: tensor(array, device=device) for name, array in arrays.items()}


# -- modules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One tensor of a module, as rules see it: its ``state_dict`` `key`, the `module` that owns it
    and its attribute `name` there, its full `shape` and torch `dtype`, and whether it is a buffer."""

    key: str
    module: Any
    name: str
    shape: tuple[int, ...]
    dtype: Any
    buffer: bool = False

    def sibling_shape(self, name: str) -> tuple[int, ...]:
        """The shape of another tensor of the same module (a bias rule reads its weight's)."""
        return tuple(getattr(self.module, name).shape)


RuleValue = InitializerLike | Callable[[Param], InitializerLike]
"""What a rule gives: an initializer in any form `Variable` accepts, or a function of the Param."""
RuleKey = str | tuple[Any, str] | Callable[[Param], bool]
"""What a rule matches: a glob on the state-dict key (``"*.c_fc.weight"``), a (module type or
tuple of types, attribute-name glob) pair (``(nn.Linear, "bias")``), or a predicate on the Param."""
Rules = Mapping[RuleKey, RuleValue] | Sequence[tuple[RuleKey, RuleValue]]


def _matches(key: RuleKey, param: Param) -> bool:
    if isinstance(key, str):
        return fnmatch.fnmatchcase(param.key, key)
    if isinstance(key, tuple):
        types, name = key
        return isinstance(param.module, types) and fnmatch.fnmatchcase(param.name, name)
    return bool(key(param))


@dataclass(frozen=True)
class PresetRule:
    """A preset entry: the initializer, and a fix-up for what a library's init does beyond one
    distribution (Embedding zeroes its padding row). The fix-up gets the Param, the fetched array
    (writable) and the slice of the full tensor the array holds (empty: the whole tensor)."""

    value: RuleValue
    fixup: Callable[[Param, np.ndarray, Sequence[Range]], None] | None = None


def fan_in(shape: Sequence[int]) -> int:
    """PyTorch's fan_in of a weight ``[out, in, spatial...]``: ``in * prod(spatial)``."""
    return int(shape[1]) * math.prod(int(d) for d in shape[2:]) if len(shape) >= 2 else 0


def torch_bias(param: Param) -> pb.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with fan_in of the module's weight (Linear and Conv
    ``reset_parameters``); zeros when fan_in is 0."""
    bound = 1 / math.sqrt(fan) if (fan := fan_in(param.sibling_shape("weight"))) > 0 else 0.0
    return initializer({"randomUniform": {"min": -bound, "max": bound}})


def _uniform(bound: float) -> pb.Initializer:
    return initializer({"randomUniform": {"min": -bound, "max": bound}})


def zero_padding_row(param: Param, array: np.ndarray, ranges: Sequence[Range]) -> None:
    padding = getattr(param.module, "padding_idx", None)
    if padding is None or array.size == 0:
        return
    start, stop = ranges[0] if ranges else (0, param.shape[0])
    if start <= padding < stop:
        array[padding - start] = 0


def preset_table(module: Any, preset: str = "auto") -> list[tuple[RuleKey, PresetRule]]:
    """The rules of `preset` for `module`, in the order they are tried (see `PRESETS`)."""
    from torch import nn

    preset = _preset_name(module, preset)

    linear = (nn.Linear, nn.modules.conv._ConvNd)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    embeddings = (nn.Embedding, nn.EmbeddingBag)
    common = [
        ((norms, "weight"), PresetRule("ones")),
        ((norms, "bias"), PresetRule("zeros")),
        ((norms, "running_mean"), PresetRule("zeros")),
        ((norms, "running_var"), PresetRule("ones")),
        ((norms, "num_batches_tracked"), PresetRule("zeros")),
        ((nn.MultiheadAttention, "*_proj_weight"), PresetRule("xavier_uniform")),
        ((nn.MultiheadAttention, "in_proj_bias"), PresetRule("zeros")),
        ((nn.MultiheadAttention, "bias_[kv]"), PresetRule("xavier_normal")),
        ((nn.modules.linear.NonDynamicallyQuantizableLinear, "bias"), PresetRule("zeros")),  # MHA's out_proj
        ((nn.Bilinear, "*"), PresetRule(lambda p: _uniform(1 / math.sqrt(p.sibling_shape("weight")[1])))),
        ((nn.RNNBase, "*"), PresetRule(lambda p: _uniform(1 / math.sqrt(p.module.hidden_size)))),
    ]
    torch_table = [
        ((linear, "weight"), PresetRule("kaiming_uniform(a=2.23606797749979)")),  # a = sqrt(5): U(+-1/sqrt(fan_in))
        ((linear, "bias"), PresetRule(torch_bias)),
        ((embeddings, "weight"), PresetRule("random_normal(stddev=1)", zero_padding_row)),
    ]
    weightgen_table = [
        ((nn.Linear, "weight"), PresetRule("truncated_normal(stddev=0.02)")),
        ((nn.modules.conv._ConvNd, "weight"), PresetRule("kaiming_normal(mode=fan_out, nonlinearity=relu)")),
        ((linear, "bias"), PresetRule("zeros")),
        ((embeddings, "weight"), PresetRule("truncated_normal(stddev=0.02)", zero_padding_row)),
    ]
    if preset == "hf":  # the model family's own _init_weights first, then what PyTorch's modules do
        from .hf import preset_rules

        return preset_rules(module) + common + torch_table
    return common + (torch_table if preset == "torch" else weightgen_table)


PRESETS = ("auto", "torch", "weightgen", "hf")
"""The default rule tables (see docs/trainers.md for them in full); ``auto`` is ``hf`` for a
Hugging Face model (one with a ``config.model_type``) and ``torch`` otherwise."""


def _preset_name(module: Any, preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset == "auto":
        return "hf" if getattr(getattr(module, "config", None), "model_type", None) else "torch"
    return preset

_FAN_KINDS = frozenset(
    {
        "variance_scaling",
        "glorot_uniform",
        "glorot_normal",
        "xavier_uniform",
        "xavier_normal",
        "he",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "lecun_uniform",
        "kaiming_uniform",
        "kaiming_normal",
        "dirac",
        "delta_orthogonal",
    }
)


def _with_layout(message: pb.Initializer | None, layout: int) -> pb.Initializer | None:
    """`message` with FanAxes `layout` when it is fan-based and names no fan axes of its own."""
    if message is None or message.HasField("fan_axes") or message.WhichOneof("kind") not in _FAN_KINDS:
        return message
    copy = pb.Initializer()
    copy.CopyFrom(message)
    copy.fan_axes.layout = layout
    return copy


def torch_dtype_name(dtype: Any) -> str:
    """The weightgen dtype name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    name = str(dtype).removeprefix("torch.")
    from weightgen.v1 import wire

    if name not in wire.BY_NAME:
        raise ValueError(f"weightgen has no dtype for {dtype}; choose from {', '.join(wire.BY_NAME)}")
    return name


@dataclass
class _Entry:
    param: Param
    tensor: Any
    persistent: bool
    rule: PresetRule | None = None
    primary: str = ""  # the key of the first entry holding the same tensor (ties)


def _entries(module: Any) -> list[_Entry]:
    """Every parameter and buffer of `module` under every key it has (shared modules and tied
    tensors included), in state-dict order; `primary` names the first key of each tensor."""
    entries: list[_Entry] = []
    first: dict[int, str] = {}
    for prefix, mod in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        items = [(n, t, False, True) for n, t in mod._parameters.items()]
        items += [(n, t, True, n not in mod._non_persistent_buffers_set) for n, t in mod._buffers.items()]
        for name, value, is_buffer, persistent in items:
            if value is None:
                continue
            key = dot + name
            param = Param(key, mod, name, tuple(value.shape), value.dtype, is_buffer)
            entries.append(_Entry(param, value, persistent, primary=first.setdefault(id(value), key)))
    return entries


def _resolve(module: Any, entries: list[_Entry], rules: Rules | None, preset: str) -> None:
    user = list(rules.items()) if isinstance(rules, Mapping) else list(rules or ())
    table = [(k, PresetRule(v)) for k, v in user] + preset_table(module, preset)
    unmatched = []
    for entry in entries:
        if entry.primary != entry.param.key:
            continue
        entry.rule = next((rule for key, rule in table if _matches(key, entry.param)), None)
        if entry.rule is None and entry.tensor.is_meta:
            unmatched.append(entry.param)
    if unmatched:
        listed = "; ".join(f"{p.key} ({type(p.module).__name__}.{p.name}, {list(p.shape)})" for p in unmatched[:10])
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        raise ValueError(
            f"no initializer rule for {listed}{more}: pass rules={{'<key glob>': <initializer>}} "
            "(or (module type, name) keys)"
        )


def _variable(entry: _Entry) -> Variable:
    param = entry.param
    value = entry.rule.value
    if callable(value) and not isinstance(value, pb.Initializer):
        value = value(param)
    message = _with_layout(initializer(value), pb.FAN_LAYOUT_CHANNELS_FIRST)
    return Variable(param.key, param.shape, message, dtype=torch_dtype_name(param.dtype))


def module_variables(module: Any, *, rules: Rules | None = None, preset: str = "auto") -> dict[str, Variable]:
    """The Variable each tensor of `module` maps to, by state-dict key (a tied tensor once, under
    its first key; tensors no rule matches that are already real are left out)."""
    entries = _entries(module)
    _resolve(module, entries, rules, preset)
    return {e.param.key: _variable(e) for e in entries if e.primary == e.param.key and e.rule is not None}


def _shard_fn(shard: ShardFn | Mapping[str, Any]) -> ShardFn:
    if callable(shard):
        return shard
    rules = list(shard.items())

    def lookup(key: str, shape: tuple[int, ...]) -> Sequence[Range] | None:
        for pattern, value in rules:
            if key == pattern or fnmatch.fnmatchcase(key, pattern):
                if value is None:
                    return None
                if len(value) == 3 and all(isinstance(v, int) for v in value):
                    axis, rank, world = value
                    return rank_slice(shape, rank, world, axis)
                return tuple((int(a), int(b)) for a, b in value)
        return None

    return lookup


def materialize_module(
    module: Any,
    client: Client,
    *,
    seed: int = 0,
    rules: Rules | None = None,
    preset: str = "auto",
    shard: ShardFn | Mapping[str, Any] | None = None,
    session: Session | str | None = None,
    device: Any = "cpu",
    streams: int = 1,
) -> Any:
    """Fill `module` (typically built under ``torch.device("meta")``) with weightgen's tensors.

    Every parameter and persistent buffer with a rule is fetched (seed `seed`, or `session`),
    and replaced in place by a real tensor on `device`: parameters stay ``nn.Parameter`` with
    their ``requires_grad``, dtypes are kept, tied tensors are fetched once and stay one tensor.
    Tensors without a rule must already be real (else ValueError naming them). Returns `module`,
    whose ``state_dict`` is then the fetched values (except Embedding's ``padding_idx`` row, zeroed
    by the presets as ``reset_parameters`` does).

    With `shard`, nothing in the module changes: it returns ``{state-dict key: local shard}`` with
    only this rank's slice of each tensor fetched (fans from the full shape). `shard` is a function
    ``(key, full shape) -> slice or None`` (`weightgen.client.sharding.rank_shards`) or a mapping
    from key globs to ``(axis, rank, world)`` or to a slice; None means the whole tensor."""
    import torch

    entries = _entries(module)
    _resolve(module, entries, rules, preset)
    where = _shard_fn(shard) if shard is not None else None
    primaries = [e for e in entries if e.primary == e.param.key and e.rule is not None]
    slices = [where(e.param.key, e.param.shape) if where else None for e in primaries]
    items = [(_variable(e), s) for e, s in zip(primaries, slices, strict=True)]
    arrays = fetch_shards(client, items, seed=seed, session=session, streams=streams)
    values: dict[str, Any] = {}
    for entry, ranges, array in zip(primaries, slices, arrays, strict=True):
        if entry.rule.fixup is not None:
            entry.rule.fixup(entry.param, array, ranges or ())
        values[entry.param.key] = tensor(array, device=device)

    if where is not None:
        return {e.param.key: values[e.primary] for e in entries if e.persistent and e.primary in values}

    replaced: dict[int, Any] = {}
    with torch.no_grad():
        for entry in entries:
            if entry.primary not in values:
                continue
            old, mod, name = entry.tensor, entry.param.module, entry.param.name
            if id(old) not in replaced:
                new = values[entry.primary]
                if not entry.param.buffer:
                    new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
                replaced[id(old)] = new
            if entry.param.buffer:
                mod._buffers[name] = replaced[id(old)]
            else:
                mod._parameters[name] = replaced[id(old)]
    return module


__all__ = [
    "PRESETS",
    "Param",
    "PresetRule",
    "fan_in",
    "materialize_module",
    "module_variables",
    "preset_table",
    "tensor",
    "to_torch",
    "torch_bias",
    "torch_dtype_name",
    "zero_padding_row",
]
