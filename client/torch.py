"""PyTorch: weightgen's arrays as torch tensors, and whole modules built on the ``meta`` device
filled from a weightgen server (torch is imported only when called).

    with torch.device("meta"):
        model = GPT(config)                       # no memory, no initialisation
    materialize_module(model, client, seed=42)    # real CPU tensors: what weightgen produced

    # FSDP2 / tensor parallel: parallelise on meta, allocate the shards, fill them in place
    parallelize_module(model, mesh["tp"], plan); fully_shard(model, mesh=mesh["dp"])
    model.to_empty(device="cuda")
    materialize_module(model, client, seed=42)    # each rank fetches exactly its DTensor blocks

Each parameter and persistent buffer becomes a variable named by its ``state_dict`` key, with
an initializer from the first matching rule: the caller's `rules`, then the preset's table
(`PRESETS`). ``preset="torch"`` reproduces the distributions of PyTorch's own ``reset_parameters``
(Linear and Conv weights ``kaiming_uniform(a=sqrt(5))``, their biases ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` with fan_in from the weight, Embedding ``N(0, 1)``, norms 1 and 0, batch-norm
statistics 0 and 1, transformers' Conv1D ``N(0, 0.02)``); ``preset="weightgen"`` is the modern
transformer default (truncated normal 0.02 for Linear and Embedding weights, zeros for biases);
``preset="hf"`` is the model family's own ``_init_weights`` (`weightgen.client.hf`). Initializers
without fan axes get PyTorch's ``[out, in, spatial...]`` layout (``channels_first``; transformers'
Conv1D, whose weight is ``[in, out]``, gets ``channels_last``). Tied parameters (one tensor under
several keys, as GPT-2's ``lm_head.weight`` and ``wte.weight``) are fetched once and stay tied.

bfloat16 has no numpy dtype of its own (ml_dtypes provides one torch does not know), so its
2-byte patterns travel as uint16 and are reinterpreted as ``torch.bfloat16``: no copy, no rounding.
"""

from __future__ import annotations

import fnmatch
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1.initializers import FAN_AXES_KINDS

from .sharding import Range, ShardFn, fetch_shards, rank_slice
from .specs import InitializerLike, Variable, dtype_value, initializer

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


def host_array(value: Any) -> np.ndarray | None:
    """A numpy array over torch tensor `value`'s own memory, for writing into it in place (bfloat16
    as its int16 bit patterns, which numpy can hold), or None when it has no such view: a tensor on
    a GPU or the meta device (no host memory: the bytes need a host buffer before the
    host-to-device copy), a non-contiguous one (its bytes are not the delivered order), or one with
    its conjugate or negative bit set (its memory is not its values)."""
    import torch

    if value.device.type != "cpu" or not value.is_contiguous() or value.is_conj() or value.is_neg():
        return None
    local = value.detach()  # a parameter that requires grad: same storage, numpy allowed
    try:
        return local.view(torch.int16).numpy() if local.dtype == torch.bfloat16 else local.numpy()
    except (TypeError, RuntimeError):  # a dtype numpy has not (float8, ...): staged as before
        return None


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


def matches(key: RuleKey, param: Param) -> bool:
    """Whether rule key `key` applies to `param` (see `RuleKey`)."""
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
    note: str | Callable[[Param], str] = ""  # why the tensor is special, if it is (norm ones, padding row)

    def special(self, param: Param) -> str:
        """What makes `param` special to this rule ("" if nothing): a caller's glob that takes it
        over is warned about."""
        return self.note(param) if callable(self.note) else self.note


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


def padding_note(param: Param) -> str:
    """The note of an embedding rule: special only when the embedding has a padding row."""
    padding = getattr(param.module, "padding_idx", None)
    return f"padding row {padding} zeroed" if padding is not None else ""


def _conv1d() -> type | None:
    """transformers' Conv1D (GPT-2's Linear, weight ``[in, out]``), if transformers is loaded (no
    module can be one otherwise)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _is_conv1d(module: Any) -> bool:
    conv1d = _conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def preset_table(module: Any, preset: str = "auto") -> list[tuple[RuleKey, PresetRule]]:
    """The rules of `preset` for `module`, in the order they are tried (see `PRESETS`)."""
    from torch import nn

    preset = _preset_name(module, preset)

    linear = (nn.Linear, nn.modules.conv._ConvNd)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    embeddings = (nn.Embedding, nn.EmbeddingBag)
    conv1d = _conv1d()
    conv1d_bias = [((conv1d, "bias"), PresetRule("zeros", note="a bias: zeros"))] if conv1d else []
    common = [
        ((norms, "weight"), PresetRule("ones", note="a norm's scale: ones")),
        ((norms, "bias"), PresetRule("zeros", note="a norm's shift: zeros")),
        ((norms, "running_mean"), PresetRule("zeros", note="a running mean: zeros")),
        ((norms, "running_var"), PresetRule("ones", note="a running variance: ones")),
        ((norms, "num_batches_tracked"), PresetRule("zeros", note="a counter: zero")),
        ((nn.MultiheadAttention, "*_proj_weight"), PresetRule("xavier_uniform")),
        ((nn.MultiheadAttention, "in_proj_bias"), PresetRule("zeros", note="a bias: zeros")),
        ((nn.MultiheadAttention, "bias_[kv]"), PresetRule("xavier_normal")),
        # MHA's out_proj:
        ((nn.modules.linear.NonDynamicallyQuantizableLinear, "bias"), PresetRule("zeros", note="a bias: zeros")),
        ((nn.Bilinear, "*"), PresetRule(lambda p: _uniform(1 / math.sqrt(p.sibling_shape("weight")[1])))),
        ((nn.RNNBase, "*"), PresetRule(lambda p: _uniform(1 / math.sqrt(p.module.hidden_size)))),
    ]
    torch_table = [
        ((linear, "weight"), PresetRule("kaiming_uniform(a=2.23606797749979)")),  # a = sqrt(5): U(+-1/sqrt(fan_in))
        ((linear, "bias"), PresetRule(torch_bias, note="a bias: U(+-1/sqrt(fan_in of its weight))")),
        ((embeddings, "weight"), PresetRule("random_normal(stddev=1)", zero_padding_row, padding_note)),
        *([((conv1d, "weight"), PresetRule("random_normal(stddev=0.02)"))] if conv1d else []),  # its __init__
        *conv1d_bias,
    ]
    weightgen_table = [
        ((nn.Linear, "weight"), PresetRule("truncated_normal(stddev=0.02)")),
        ((nn.modules.conv._ConvNd, "weight"), PresetRule("kaiming_normal(mode=fan_out, nonlinearity=relu)")),
        ((linear, "bias"), PresetRule("zeros", note="a bias: zeros")),
        ((embeddings, "weight"), PresetRule("truncated_normal(stddev=0.02)", zero_padding_row, padding_note)),
        *([((conv1d, "weight"), PresetRule("truncated_normal(stddev=0.02)"))] if conv1d else []),
        *conv1d_bias,
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

def _with_layout(message: pb.Initializer | None, layout: int) -> pb.Initializer | None:
    """`message` with FanAxes `layout` when it is fan-based and names no fan axes of its own."""
    if message is None or message.HasField("fan_axes") or message.WhichOneof("kind") not in FAN_AXES_KINDS:
        return message
    copy = pb.Initializer()
    copy.CopyFrom(message)
    copy.fan_axes.layout = layout
    return copy


def torch_dtype_name(dtype: Any) -> str:
    """The weightgen dtype name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    from weightgen.v1 import wire

    return wire.dtype_name(dtype_value(dtype))


@dataclass
class _Entry:
    param: Param
    tensor: Any
    persistent: bool
    rule: PresetRule | None = None
    source: str = ""  # which rule chose it, as `explain` shows it
    overrides: str = ""  # what the preset would have done, when a caller's glob took it over
    primary: str = ""  # the key of the first entry holding the same tensor (ties)


def _entries(module: Any) -> list[_Entry]:
    """Every parameter and buffer of `module` under every key it has (shared modules and tied
    tensors included), in state-dict order; `primary` names the first key of each tensor.

    A buffer is persistent unless its module lists it in ``_non_persistent_buffers_set``
    (private, stable since torch 1.6, and checked by tests/client/test_client_torch_module.py):
    asking ``state_dict()`` instead would run the module's state-dict hooks, which on a
    parallelised model may be collectives (torchtitan's fused QKV gathers itself on save)."""
    entries: list[_Entry] = []
    first: dict[int, str] = {}
    for prefix, mod in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        computed = mod._non_persistent_buffers_set
        items = [(n, t, False) for n, t in mod.named_parameters(recurse=False, remove_duplicate=False)]
        items += [(n, t, True) for n, t in mod.named_buffers(recurse=False, remove_duplicate=False)]
        for name, value, is_buffer in items:
            key = dot + name
            param = Param(key, mod, name, tuple(value.shape), value.dtype, is_buffer)
            persistent = not (is_buffer and name in computed)
            entries.append(_Entry(param, value, persistent, primary=first.setdefault(id(value), key)))
    return entries


def _describe_key(key: RuleKey) -> str:
    if isinstance(key, str):
        return repr(key)
    if isinstance(key, tuple):
        types, name = key
        names = "|".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        return f"({names}, {name!r})"
    return getattr(key, "__qualname__", None) or repr(key)


def _describe_value(value: RuleValue) -> str:
    if isinstance(value, str):
        return value
    if callable(value) and not isinstance(value, pb.Initializer):
        return f"{getattr(value, '__qualname__', repr(value))}(param)"
    message = initializer(value)
    if message is None:
        return "session default"
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


class RuleOverrideWarning(UserWarning):
    """A caller's glob rule took over tensors the preset initialises specially (norms, biases,
    embeddings' padding rows)."""


def _resolve(module: Any, entries: list[_Entry], rules: Rules | None, preset: str) -> None:
    """Give each tensor its rule: the caller's `rules` in order, then the preset's table. A caller's
    glob (a string with wildcards) that takes over a tensor the preset treats specially warns
    (RuleOverrideWarning): `"*.weight"` would otherwise silently turn every norm's ones random."""
    import warnings

    user = list(rules.items()) if isinstance(rules, Mapping) else list(rules or ())
    name = _preset_name(module, preset)
    table = preset_table(module, name)
    unmatched = []
    for entry in entries:
        if entry.primary != entry.param.key:
            continue
        param = entry.param
        chosen = next(((k, v) for k, v in user if matches(k, param)), None)
        fallback = next(((k, r) for k, r in table if matches(k, param)), None)
        if chosen is not None:
            entry.rule = PresetRule(chosen[1])
            entry.source = f"rules[{_describe_key(chosen[0])}]"
            if fallback is not None and isinstance(chosen[0], str) and any(c in chosen[0] for c in "*?["):
                note = fallback[1].special(param)
                if note and not _same(chosen[1], fallback[1]):
                    entry.overrides = f"preset {name} {_describe_key(fallback[0])}: {note}"
        elif fallback is not None:
            entry.rule = fallback[1]
            entry.source = f"preset {name} {_describe_key(fallback[0])}"
        elif not entry.persistent:
            entry.source = "left as the module computes it (a non-persistent buffer)"
        elif _is_meta(entry.tensor):
            unmatched.append(param)
        else:
            entry.source = "left as it is (already real; no rule)"
    if unmatched:
        listed = "; ".join(f"{p.key} ({type(p.module).__name__}.{p.name}, {list(p.shape)})" for p in unmatched[:10])
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        raise ValueError(
            f"no initializer rule for {listed}{more}: pass rules={{'<key glob>': <initializer>}} "
            "(or (module type, name) keys)"
        )
    overridden = [e for e in entries if e.overrides]
    if overridden:
        listed = "; ".join(f"{e.param.key} by {e.source} (instead of {e.overrides})" for e in overridden[:5])
        more = f" and {len(overridden) - 5} more" if len(overridden) > 5 else ""
        warnings.warn(
            f"a glob rule takes over tensors the preset initialises specially: {listed}{more}. If that is "
            "meant, name them exactly or by (module type, name); else narrow the glob. "
            "module_variables(..., explain=True) lists every choice",
            RuleOverrideWarning,
            stacklevel=3,
        )


def _same(value: RuleValue, rule: PresetRule) -> bool:
    """Whether a caller's rule asks for exactly what the preset's would do."""
    if rule.fixup is not None or (callable(value) and not isinstance(value, pb.Initializer)):
        return False
    if callable(rule.value) and not isinstance(rule.value, pb.Initializer):
        return False
    return initializer(value) == initializer(rule.value)


def _is_meta(value: Any) -> bool:
    return bool(getattr(value, "is_meta", False))


def _variable(entry: _Entry) -> Variable:
    param = entry.param
    value = entry.rule.value
    if callable(value) and not isinstance(value, pb.Initializer):
        value = value(param)
    layout = pb.FAN_LAYOUT_CHANNELS_LAST if _is_conv1d(param.module) else pb.FAN_LAYOUT_CHANNELS_FIRST
    message = _with_layout(initializer(value), layout)
    return Variable(param.key, param.shape, message, dtype=torch_dtype_name(param.dtype))


@dataclass(frozen=True)
class Choice:
    """What `module_variables(..., explain=True)` says about one tensor: its state-dict `key`,
    the `variable` fetched for it (None when nothing is fetched), the rule that chose it
    (`source`), what a caller's glob took over (`overrides`), and the key it is `tied` to."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    variable: Variable | None
    source: str
    overrides: str = ""
    tied: str = ""

    @property
    def what(self) -> str:
        """The initializer, as text (``= key (tied)`` for a tied tensor, ``-`` when none is fetched)."""
        if self.tied:
            return f"= {self.tied} (tied)"
        return _describe_value(self.variable.initializer) if self.variable is not None else "-"

    def __str__(self) -> str:
        line = f"{self.key} {list(self.shape)} {self.dtype}: {self.what}  <- {self.source}"
        return line + (f"  [overrides {self.overrides}]" if self.overrides else "")


def explain_table(choices: Mapping[str, Choice]) -> str:
    """`module_variables(..., explain=True)` as text, one tensor a line."""
    return "\n".join(str(c) for c in choices.values())


def module_variables(
    module: Any, *, rules: Rules | None = None, preset: str = "auto", explain: bool = False
) -> dict[str, Variable] | dict[str, Choice]:
    """The Variable each tensor of `module` maps to, by state-dict key (a tied tensor once, under
    its first key; tensors no rule matches that are already real, and non-persistent buffers
    without a rule, are left out). Shapes are the full (global) shapes, DTensors included.

    With ``explain=True``: every tensor, tied and left-out ones too, as a `Choice` naming the rule
    that chose its initializer (``str(choice)`` or `explain_table` for text). Precedence: the
    caller's `rules` in their order, then the preset's table (`preset_table`) in its order."""
    entries = _entries(module)
    _resolve(module, entries, rules, preset)
    if not explain:
        return {e.param.key: _variable(e) for e in entries if e.primary == e.param.key and e.rule is not None}
    by_key = {e.param.key: e for e in entries}
    choices = {}
    for e in entries:
        head = by_key[e.primary]
        variable = _variable(head) if head.rule is not None and e is head else None
        tied = e.primary if e is not head else ""
        dtype = str(e.param.dtype).removeprefix("torch.")
        source = head.source
        choices[e.param.key] = Choice(e.param.key, e.param.shape, dtype, variable, source, head.overrides, tied)
    return choices


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


# -- DTensors ----------------------------------------------------------------------------------


def _dtensor_type() -> Any:
    import torch

    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _one_block(value: Any) -> str:
    """Why this rank's local shard of DTensor `value` is not one contiguous block of the global
    tensor ("" when it is). Nested ``Shard(d)`` placements chunk a chunk: one block. FSDP2 over
    tensor parallelism puts ``_StridedShard(d, split_factor=k)`` on the FSDP mesh axis followed by
    ``Shard(d)`` on mesh axes of k ranks in all: one block again. Other strided patterns (strided
    then replicated, or a split factor that is not what follows) interleave rows from several
    blocks, and are refused rather than filled with the wrong rows."""
    mesh, placements = value.device_mesh, list(value.placements)
    for dim in range(value.ndim):
        on_dim = [
            (axis, placement)
            for axis, placement in enumerate(placements)
            if mesh.size(axis) > 1
            and (placement.is_shard(dim) or (getattr(placement, "split_factor", None) and placement.dim == dim))
        ]
        for i, (axis, placement) in enumerate(on_dim):
            factor = getattr(placement, "split_factor", None)
            if factor is None:
                continue
            after = on_dim[i + 1 :]
            plain = all(getattr(p, "split_factor", None) is None for _, p in after)
            if not plain or math.prod(mesh.size(a) for a, _ in after) != factor:
                return f"{placement!r} on mesh axis {axis} is not followed by Shard({dim}) over {factor} ranks"
    return ""


def dtensor_block(value: Any, key: str = "") -> tuple[Range, ...]:
    """The block of the global tensor that this rank's local shard of DTensor `value` holds, one
    ``(start, stop)`` per axis (empty ranges for an empty shard).

    Every placement FSDP2 and tensor parallelism make (``Shard``, ``Replicate``, FSDP's
    ``_StridedShard`` over a tensor-parallel ``Shard``, on 1-D and 2-D meshes, uneven splits as
    ``torch.chunk``) leaves each rank one contiguous block; other layouts are refused (ValueError).
    The offset comes from torch's own ``compute_local_shape_and_global_offset`` (the function
    torch.distributed.checkpoint uses for the same question; private, so its result is checked
    against the local tensor here, and against ``distribute_tensor``, public, by the tests)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    where = f"{key}: " if key else ""
    partial = [str(p) for p in value.placements if p.is_partial()]
    if partial:
        raise ValueError(f"{where}a DTensor with Partial placements ({', '.join(partial)}) holds no values to fill")
    scattered = _one_block(value)
    if scattered:
        raise ValueError(
            f"{where}the local shard of this DTensor ({list(value.placements)}) is not one block of the "
            f"global tensor: {scattered}; weightgen fills block shards (FSDP2, tensor parallel, both)"
        )
    local = value.to_local()
    shape, offset = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
    if tuple(shape) != tuple(local.shape):
        raise RuntimeError(
            f"{where}torch says the local shard of {list(value.shape)} with {value.placements} is "
            f"{list(shape)}, the DTensor holds {list(local.shape)}: this torch ({_torch_version()}) shards "
            "differently from the ones weightgen was tested with; please report it"
        )
    return tuple((int(o), int(o) + int(n)) for o, n in zip(offset, shape, strict=True))


def _spmd_typed(value: Any) -> bool:
    """Whether `value` is a local tensor annotated by spmd_types (only if the model loaded it)."""
    runtime = sys.modules.get("spmd_types.runtime")
    return runtime is not None and bool(runtime.has_local_type(value))


def _torch_version() -> str:
    import torch

    return torch.__version__


@dataclass
class _Target:
    """Where one fetched tensor goes: a new tensor for a meta one, or into an existing local
    storage (a DTensor's shard, or a real tensor) in place; `ranges` is the block fetched."""

    entry: _Entry
    ranges: tuple[Range, ...] | None
    local: Any = None  # the tensor to copy into, or None: make a new one


def _targets(entries: list[_Entry], dtensor: Any, where: ShardFn | None) -> list[_Target]:
    targets = []
    for entry in entries:
        value, key = entry.tensor, entry.param.key
        if dtensor is not None and isinstance(value, dtensor):
            if where is not None:
                raise ValueError(
                    f"{key} is a DTensor, which carries its own placements: drop shard= "
                    "(the local shards are filled in place)"
                )
            local = value.to_local()
            if _is_meta(local):
                raise ValueError(
                    f"{key} is a DTensor on the meta device: call model.to_empty(device=...) after "
                    "parallelising (fully_shard and parallelize_module own their shards' storage), then fill it"
                )
            targets.append(_Target(entry, dtensor_block(value, key), local))
        elif _spmd_typed(value):
            raise ValueError(
                f"{key} is a local shard typed by spmd_types (torchtitan's spmd_types backend), not a DTensor: "
                "its place in the global tensor is not known here; parallelise with DTensors "
                "(torchtitan: spmd_backend='partial_dtensor' or 'full_dtensor')"
            )
        elif where is not None:
            targets.append(_Target(entry, where(key, entry.param.shape)))
        else:
            targets.append(_Target(entry, None, None if _is_meta(value) else value))
    return targets


def _stage(local: Any, array: np.ndarray) -> None:
    """Copy a fetched host array into an existing tensor with no host view of its own (`host_array`
    is None: a GPU tensor or shard, a strided one): one copy, host to device where it lives."""
    local.copy_(tensor(array).view(local.shape))


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
    """Fill `module` with weightgen's tensors, fans always from the full (global) shapes.

    Every parameter and persistent buffer with a rule is fetched (seed `seed`, or `session`):

    - **DTensors** (a model parallelised with ``fully_shard`` and/or ``parallelize_module``, then
      ``to_empty``): each rank fetches exactly the block of the global tensor its local shard
      holds (`dtensor_block`; replicated tensors whole) and copies it into the local shard in
      place: the parameter keeps its type, placements, mesh and storage. Every world size and mesh
      gives the same global model, bit for bit, and the ranks together fetch one model's bytes
      (plus what is replicated).
    - **meta tensors** are replaced by real tensors on `device` (parameters stay
      ``nn.Parameter`` with their ``requires_grad``);
    - **real tensors** are overwritten in place, where they are.

    Dtypes are kept; tied tensors are fetched once and stay one tensor. Tensors without a rule must
    be real already (else ValueError naming them), except non-persistent buffers (rotary
    frequencies), which are left as the module computes them. Returns `module`.

    With `shard` (plain modules only), nothing in the module changes: it returns ``{state-dict key:
    local shard}`` with only this rank's slice of each tensor fetched. `shard` is a function
    ``(key, full shape) -> slice or None`` (`weightgen.client.sharding.rank_shards`) or a mapping
    from key globs to ``(axis, rank, world)`` or to a slice; None means the whole tensor."""
    import torch

    entries = _entries(module)
    _resolve(module, entries, rules, preset)
    where = _shard_fn(shard) if shard is not None else None
    primaries = [e for e in entries if e.primary == e.param.key and e.rule is not None]
    targets = _targets(primaries, _dtensor_type(), where)
    wanted = [t for t in targets if t.local is None or t.local.numel() > 0]  # an empty local shard needs nothing
    items = [(_variable(t.entry), t.ranges) for t in wanted]
    # A contiguous CPU tensor (or DTensor shard) is written in place by the fetch itself, no copy;
    # anything else (GPU, meta, strided) is fetched into host buffers first, then copied over.
    direct = [host_array(t.local) if t.local is not None else None for t in wanted]
    arrays = fetch_shards(client, items, seed=seed, session=session, streams=streams, out=direct)
    values: dict[str, Any] = {}
    with torch.no_grad():
        for target, array, written in zip(wanted, arrays, direct, strict=True):
            entry = target.entry
            if entry.rule.fixup is not None:  # on the tensor's own memory when it was written in place
                entry.rule.fixup(entry.param, array, target.ranges or ())
            if written is not None:
                continue
            if target.local is not None:
                _stage(target.local, array)
            else:
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
            setattr(mod, name, replaced[id(old)])  # a registered name: replaces the parameter or buffer
    return module


__all__ = [
    "PRESETS",
    "Choice",
    "Param",
    "PresetRule",
    "RuleOverrideWarning",
    "dtensor_block",
    "explain_table",
    "fan_in",
    "host_array",
    "matches",
    "materialize_module",
    "module_variables",
    "padding_note",
    "preset_table",
    "tensor",
    "to_torch",
    "torch_bias",
    "torch_dtype_name",
    "zero_padding_row",
]
