"""Hugging Face transformers: each model family's own ``_init_weights`` as weightgen rules (the
``"hf"`` preset of `weightgen.client.torch`), and seed checkpoints made from a config file alone.

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("path/to/config.json"))
    materialize_module(model, client, seed=42)     # preset "auto" is "hf" here: Llama's own init

    fetch_seed_checkpoint(client, "config.json", "seed-ckpt/", seed=42)   # model.safetensors + config.json
    model = AutoModelForCausalLM.from_pretrained("seed-ckpt/")

`preset_rules(model)` reads the numbers from ``model.config`` and gives, for each tensor, the
distribution the family's ``_init_weights`` draws it from (docs/huggingface.md lists them). The
rules were written from transformers 5.x: a model whose ``_init_weights`` is not the one they
reproduce (a newer transformers that overrides it for the family, or a subclass with its own) is
refused rather than filled with something else.

torch and transformers are imported only when these functions run.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightgen.v1 import weightgen_pb2 as pb

from .specs import Variable, make_initializer
from .torch import Param, PresetRule, RuleKey, Rules, module_variables, padding_note, preset_table, zero_padding_row

if TYPE_CHECKING:
    from .client import Client, Progress, Session
    from .files import Manifest


def _number(value: float, what: str) -> float:
    """A config's number as a float; a boolean (``"initializer_range": true``) is refused, not 1.0."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a number, got the boolean {value!r}")
    return float(value)


def _normal(std: float) -> pb.Initializer:
    """``normal_(mean=0, std=std)``: weightgen's random_normal (untruncated), std set explicitly."""
    return pb.Initializer(random_normal=pb.RandomNormal(stddev=_number(std, "the config's std"), mean=0.0))


def _constant(value: float) -> pb.Initializer:
    return pb.Initializer(constant=pb.Constant(value=_number(value, "the config's constant")))


def _named(description: str, match: Callable[[Param], bool]) -> Callable[[Param], bool]:
    """A predicate rule key that ``module_variables(..., explain=True)`` shows as `description`."""
    match.__qualname__ = match.__name__ = description
    return match


def _owned_by(modules: dict[int, Any], name: str, description: str) -> Callable[[Param], bool]:
    """A rule key: the tensor `name` of one of these modules (by identity)."""
    return _named(description, lambda p: p.name == name and id(p.module) in modules)


_BIAS = "a bias: zeros"


# -- the generic rules: PreTrainedModel._init_weights ------------------------------------------


def init_std(config: Any) -> float:
    """The std ``PreTrainedModel._init_weights`` draws Linear, Conv and Embedding weights with:
    ``initializer_range`` (0 or None: 0.02), else ``init_std``, else ``initializer_factor``, else
    the text config's ``initializer_range`` (default 0.02)."""
    if hasattr(config, "initializer_range"):
        return config.initializer_range or 0.02
    if hasattr(config, "init_std"):
        return config.init_std
    if hasattr(config, "initializer_factor"):
        return config.initializer_factor
    return getattr(config.get_text_config(), "initializer_range", 0.02)


def _is_norm(module: Any) -> bool:
    """What PreTrainedModel._init_weights treats as a norm: GroupNorm and BatchNorm, and any class
    whose name contains LayerNorm or RMSNorm (the models' own norm classes)."""
    from torch import nn

    name = type(module).__name__
    return (
        isinstance(module, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
        or "LayerNorm" in name
        or "RMSNorm" in name
    )


def _is_rotary(module: Any) -> bool:
    return "RotaryEmbedding" in type(module).__name__ and hasattr(module, "original_inv_freq")


def _rope_frequencies(param: Param) -> pb.Initializer:
    """A rotary embedding's ``inv_freq`` (and ``original_inv_freq``), computed by the module's own
    rope function from its config exactly as ``_init_weights`` does, sent as a broadcast base."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    module = param.module
    functions = {
        "axial": getattr(module, "compute_axial_rope_parameters", None),
        "ntk_alpha": getattr(module, "compute_ntk_alpha_rope_parameters", None),
        "default": getattr(module, "compute_default_rope_parameters", None),
        **ROPE_INIT_FUNCTIONS,
    }
    function = functions.get(module.rope_type)
    if function is None:
        raise ValueError(f"{param.key}: no rope function for rope_type {module.rope_type!r}")
    with torch.device("cpu"):  # the model may be built under a meta device context
        values, _ = function(module.config)
    base = values.detach().to("cpu", torch.float32).numpy()
    if base.shape != param.shape:
        raise ValueError(
            f"{param.key}: the rope function gives shape {list(base.shape)}, the buffer is {list(param.shape)}"
        )
    return make_initializer("broadcast", base)


def _generic_rules(config: Any) -> list[tuple[RuleKey, PresetRule]]:
    """``PreTrainedModel._init_weights``: Linear and Conv (not ConvTranspose3d) weights N(0, std)
    and zero biases, LSTM weights Xavier-uniform and zero biases, Embedding N(0, std) with the
    padding row zeroed, norms 1 and 0 (batch-norm statistics 0, 1, 0), rotary frequencies
    recomputed. MultiheadAttention keeps PyTorch's own init (the preset's common rules)."""
    from torch import nn

    std = init_std(config)
    linear = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
    norm_ones = ("weight", "running_var")
    norm_zeros = ("bias", "running_mean", "num_batches_tracked")
    norm_ones_key = _named(
        "(*LayerNorm|*RMSNorm|GroupNorm|BatchNorm, weight|running_var)",
        lambda p: p.name in norm_ones and _is_norm(p.module),
    )
    norm_zeros_key = _named(
        "(*LayerNorm|*RMSNorm|GroupNorm|BatchNorm, bias|running_mean|num_batches_tracked)",
        lambda p: p.name in norm_zeros and _is_norm(p.module),
    )
    rotary_key = _named(
        "(*RotaryEmbedding, inv_freq|original_inv_freq)",
        lambda p: p.name in ("inv_freq", "original_inv_freq") and _is_rotary(p.module),
    )
    return [
        ((linear, "weight"), PresetRule(_normal(std))),
        ((linear, "bias"), PresetRule("zeros", note=_BIAS)),
        ((nn.LSTM, "*weight*"), PresetRule("xavier_uniform")),
        ((nn.LSTM, "*bias*"), PresetRule("zeros", note=_BIAS)),
        ((nn.Embedding, "weight"), PresetRule(_normal(std), zero_padding_row, padding_note)),
        (norm_ones_key, PresetRule("ones", note="a norm's scale or running variance: ones")),
        (norm_zeros_key, PresetRule("zeros", note="a norm's shift or running statistics: zeros")),
        (rotary_key, PresetRule(_rope_frequencies, note="rotary frequencies, computed from the config")),
    ]


# -- the families ------------------------------------------------------------------------------


def _gpt2_rules(model: Any) -> list[tuple[RuleKey, PresetRule]]:
    """GPT2PreTrainedModel._init_weights: Conv1D weights N(0, initializer_range) and zero biases;
    the residual projections (``c_proj`` of every GPT2Attention and GPT2MLP) N(0,
    initializer_range / sqrt(2 * n_layer))."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention
    from transformers.pytorch_utils import Conv1D

    config = model.config
    residual = {id(m.c_proj): m.c_proj for m in model.modules() if isinstance(m, (GPT2Attention, GPT2MLP))}
    scaled = config.initializer_range / math.sqrt(2 * config.n_layer)
    return [
        (
            _owned_by(residual, "weight", "(GPT2Attention|GPT2MLP).c_proj.weight"),
            PresetRule(
                _normal(scaled),
                note=f"a residual projection: N(0, initializer_range / sqrt(2 * n_layer) = {scaled:.6g})",
            ),
        ),
        ((Conv1D, "weight"), PresetRule(_normal(config.initializer_range))),
        ((Conv1D, "bias"), PresetRule("zeros", note=_BIAS)),
    ]


def _bert_rules(model: Any) -> list[tuple[RuleKey, PresetRule]]:
    """BertPreTrainedModel._init_weights: the LM head's bias 0; the embeddings' ``position_ids``
    ``arange`` and ``token_type_ids`` 0 (buffers the model does not save)."""
    from transformers.models.bert.modeling_bert import BertEmbeddings, BertLMPredictionHead

    def positions(param: Param) -> pb.Initializer:
        return make_initializer("broadcast", np.arange(param.shape[-1], dtype=np.int64))

    return [
        ((BertLMPredictionHead, "bias"), PresetRule("zeros", note=_BIAS)),
        ((BertEmbeddings, "position_ids"), PresetRule(positions, note="position ids: arange")),
        ((BertEmbeddings, "token_type_ids"), PresetRule("zeros", note="token type ids: zeros")),
    ]


def _t5_rules(model: Any) -> list[tuple[RuleKey, PresetRule]]:
    """T5PreTrainedModel._init_weights, every std scaled by ``initializer_factor`` (f): layer norms
    f; the shared embedding and an untied ``lm_head`` N(0, f); attention ``q`` N(0, f / sqrt(d_model
    * d_kv)), ``k`` and ``v`` N(0, f / sqrt(d_model)), ``o`` N(0, f / sqrt(num_heads * d_kv)),
    relative attention bias N(0, f / sqrt(d_model)); feed-forward ``wi``, ``wi_0``, ``wi_1`` N(0, f /
    sqrt(d_model)), ``wo`` N(0, f / sqrt(d_ff)); heads: ``qa_outputs``, classification ``dense``
    and ``out_proj`` N(0, f / sqrt(d_model)), token ``classifier`` N(0, f); their biases 0."""
    from transformers.models.t5 import modeling_t5 as t5

    config = model.config
    f = config.initializer_factor
    d_model, d_kv, d_ff, heads = config.d_model, config.d_kv, config.d_ff, config.num_heads
    stds: dict[int, tuple[Any, float]] = {}  # id(module) -> (module, std of its weight)
    biases: dict[int, Any] = {}  # modules whose bias _init_weights zeroes

    def weight(module: Any, std: float, bias: bool = False) -> None:
        stds[id(module)] = (module, std)
        if bias:
            biases[id(module)] = module

    # The post-order walk of _init_weights: a module's rule is written after its children's, so
    # an ancestor's wins. Apply them here in the same order (children first, then parents).
    for module in _post_order(model):
        if isinstance(module, t5.T5Attention):
            weight(module.q, f * (d_model * d_kv) ** -0.5)
            weight(module.k, f * d_model**-0.5)
            weight(module.v, f * d_model**-0.5)
            weight(module.o, f * (heads * d_kv) ** -0.5)
            if module.has_relative_attention_bias:
                weight(module.relative_attention_bias, f * d_model**-0.5)
        elif isinstance(module, t5.T5DenseGatedActDense):
            weight(module.wi_0, f * d_model**-0.5, bias=True)
            weight(module.wi_1, f * d_model**-0.5, bias=True)
            weight(module.wo, f * d_ff**-0.5, bias=True)
        elif isinstance(module, t5.T5DenseActDense):
            weight(module.wi, f * d_model**-0.5, bias=True)
            weight(module.wo, f * d_ff**-0.5, bias=True)
        elif isinstance(module, t5.T5ClassificationHead):
            weight(module.dense, f * d_model**-0.5, bias=True)
            weight(module.out_proj, f * d_model**-0.5, bias=True)
        elif isinstance(module, t5.T5ForTokenClassification) and hasattr(module, "classifier"):
            weight(module.classifier, f * 1.0, bias=True)
        elif isinstance(
            module, (t5.T5Model, t5.T5ForConditionalGeneration, t5.T5EncoderModel, t5.T5ForQuestionAnswering)
        ):
            weight(module.shared, f * 1.0)
            if hasattr(module, "lm_head") and not config.tie_word_embeddings:
                weight(module.lm_head, f * 1.0)
            if hasattr(module, "qa_outputs"):
                weight(module.qa_outputs, f * d_model**-0.5, bias=True)

    def t5_normal(param: Param) -> pb.Initializer:
        return _normal(stds[id(param.module)][1])

    return [
        ((t5.T5LayerNorm, "weight"), PresetRule(_constant(f * 1.0), note="a norm's scale: initializer_factor")),
        (
            _owned_by({k: m for k, (m, _) in stds.items()}, "weight", "T5 projection or embedding weight"),
            PresetRule(t5_normal),
        ),
        (_owned_by(biases, "bias", "T5 projection bias"), PresetRule("zeros", note=_BIAS)),
    ]


def _post_order(module: Any) -> list[Any]:
    """Every submodule, children before their parent (the order of ``smart_apply``)."""
    out: list[Any] = []
    for child in module.children():
        out += _post_order(child)
    out.append(module)
    return out


def _no_rules(model: Any) -> list[tuple[RuleKey, PresetRule]]:
    return []


@dataclass(frozen=True)
class Family:
    """A model family the ``hf`` preset reproduces: its `name`, the ``_init_weights`` its rules
    follow (``qualname``), and its rules ahead of the generic ones."""

    name: str
    init_weights: str
    rules: Callable[[Any], list[tuple[RuleKey, PresetRule]]]


_GENERIC = "PreTrainedModel._init_weights"
FAMILIES: dict[str, Family] = {
    "gpt2": Family("GPT-2", "GPT2PreTrainedModel._init_weights", _gpt2_rules),
    "llama": Family("Llama", _GENERIC, _no_rules),
    "mistral": Family("Mistral", _GENERIC, _no_rules),
    "qwen2": Family("Qwen2", _GENERIC, _no_rules),
    "qwen3": Family("Qwen3", _GENERIC, _no_rules),
    "bert": Family("BERT", "BertPreTrainedModel._init_weights", _bert_rules),
    "t5": Family("T5", "T5PreTrainedModel._init_weights", _t5_rules),
}
"""``config.model_type`` -> the family's rules (see docs/huggingface.md)."""


def family(module: Any) -> Family:
    """The Family of a transformers model, checked: ValueError naming what is not supported."""
    from transformers import PreTrainedModel

    escape = "pass preset='torch' (PyTorch's module defaults) or rules={...} for its tensors"
    supported = ", ".join(f"{k} ({v.name})" for k, v in FAMILIES.items())
    if not isinstance(module, PreTrainedModel):
        raise ValueError(
            f"preset 'hf' reproduces a transformers PreTrainedModel's _init_weights; {type(module).__name__} "
            f"is not one: {escape}"
        )
    model_type = getattr(module.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"preset 'hf' has no rules for model_type {model_type!r} ({type(module).__name__}); it knows {supported}: "
            f"{escape}"
        )
    found = FAMILIES[model_type]
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            owner = type(sub)._init_weights.__qualname__
            if owner != found.init_weights:
                raise ValueError(
                    f"preset 'hf': {type(sub).__name__} initialises with {owner}, not the {found.init_weights} "
                    f"the {found.name} rules reproduce: {escape}"
                )
    return found


def preset_rules(module: Any) -> list[tuple[RuleKey, PresetRule]]:
    """The ``hf`` preset's own rules for a transformers model: its family's, then the generic
    ``PreTrainedModel._init_weights`` ones (`preset_table` appends PyTorch's module defaults)."""
    return family(module).rules(module) + _generic_rules(module.config)


# -- seed checkpoints --------------------------------------------------------------------------


@dataclass
class SeedCheckpoint:
    """What a model's initial weights are, from its config alone: the `model` (on the meta
    device: no memory), the `variables` of its ``state_dict`` (a tied tensor once, under its first
    key; the buffers the model computes itself left out), and the `zero_rows` its init zeroes
    after drawing them (Embedding padding rows: ``{key: [row, ...]}``)."""

    config: Any
    model: Any
    variables: list[Variable]
    zero_rows: dict[str, list[int]] = field(default_factory=dict)

    def request(self, seed: int = 0) -> pb.MaterializeRequest:
        return pb.MaterializeRequest(seed=seed, variables=[v.to_proto() for v in self.variables])

    def spec(self, seed: int = 0) -> dict[str, Any]:
        """The request as a spec file (protobuf JSON; ``zeroRows`` when there are any), which
        ``weightgen fetch`` reads."""
        from google.protobuf import json_format

        data = json_format.MessageToDict(self.request(seed))
        if self.zero_rows:
            data["zeroRows"] = self.zero_rows
        return data


DTYPES = ("float32", "bfloat16", "float16", "float64")


def load_config(config: Any) -> Any:
    """A transformers config: itself, or read from a local config.json (or a folder holding one)
    without touching the network."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    path = Path(config)
    if not path.exists():
        raise ValueError(f"no such config: {path}")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the Hugging Face config {path}: {e}") from None


def meta_model(config: Any, *, model_class: str | None = None, dtype: str | None = None) -> Any:
    """The model of `config` built on the meta device (no memory, no init). `model_class` is a
    transformers class name (``LlamaForCausalLM``, or an auto class such as
    ``AutoModelForCausalLM``), by default the config's first ``architectures`` entry; `dtype` by
    default the config's own, as ``from_config`` does (float32 when it has none)."""
    import torch
    import transformers

    config = load_config(config)
    name = model_class or next(iter(config.architectures or ()), None)
    if not name:
        raise ValueError(
            "the config names no architectures: say which model class to build (--hf-class, e.g. "
            "LlamaForCausalLM or AutoModelForCausalLM)"
        )
    cls = getattr(transformers, name, None)
    is_auto = name.startswith("Auto") and hasattr(cls, "from_config")
    if cls is None or not (is_auto or (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel))):
        raise ValueError(f"model class {name!r}: not a transformers model class (e.g. LlamaForCausalLM, AutoModel)")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    with torch.device("meta"):
        # Auto classes' from_config calls the model class's _from_config: the config's dtype by default.
        return cls.from_config(config, **kwargs) if is_auto else cls._from_config(config, **kwargs)


def seed_checkpoint(
    config: Any, *, model_class: str | None = None, dtype: str | None = None, rules: Rules | None = None
) -> SeedCheckpoint:
    """The variables of a model's initial weights under the ``hf`` preset (after the caller's
    `rules`), from its config alone (a path to config.json, a folder with one, or a config)."""
    config = load_config(config)
    model = meta_model(config, model_class=model_class, dtype=dtype)
    user = list(rules.items()) if isinstance(rules, Mapping) else list(rules or ())
    table = [(k, PresetRule(v)) for k, v in user] + preset_table(model, "hf")
    saved = set(model.state_dict())  # persistent tensors only: what from_pretrained loads
    variables = {k: v for k, v in module_variables(model, rules=rules, preset="hf").items() if k in saved}
    return SeedCheckpoint(config, model, list(variables.values()), _zero_rows(model, variables, table))


def _zero_rows(
    model: Any, variables: dict[str, Variable], table: Sequence[tuple[RuleKey, PresetRule]]
) -> dict[str, list[int]]:
    """The padding rows the rules zero after the fetch, as data a file's manifest can record;
    ValueError for any other fix-up (a file cannot apply a Python function)."""
    from .torch import matches

    out: dict[str, list[int]] = {}
    for prefix, module in model.named_modules():
        for name, value in module.named_parameters(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            if key not in variables:
                continue
            param = Param(key, module, name, tuple(value.shape), value.dtype)
            rule = next((r for k, r in table if matches(k, param)), None)
            if rule is None or rule.fixup is None:
                continue
            if rule.fixup is not zero_padding_row:
                raise ValueError(f"{key}: its rule has a fix-up ({rule.fixup!r}) a seed checkpoint cannot apply")
            padding = getattr(module, "padding_idx", None)
            if padding is not None:
                out[key] = [int(padding)]
    return out


def fetch_seed_checkpoint(
    client: Client,
    config: Any,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    model_class: str | None = None,
    dtype: str | None = None,
    rules: Rules | None = None,
    session: Session | str | None = None,
    streams: int = 1,
    progress: Progress | None = None,
) -> tuple[Path, Manifest]:
    """A model's initial weights as a safetensors file that ``from_pretrained`` loads, fetched
    without building the model. `output` ending in ``.safetensors`` is that file; anything else is
    a folder (created) that gets ``model.safetensors`` and a copy of the config file. Returns the
    file's path and its manifest."""
    checkpoint = seed_checkpoint(config, model_class=model_class, dtype=dtype, rules=rules)
    return write_seed_checkpoint(
        client, checkpoint, output, seed=seed, session=session, streams=streams, progress=progress, config_file=config
    )


def write_seed_checkpoint(
    client: Client,
    checkpoint: SeedCheckpoint,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    session: Session | str | None = None,
    streams: int = 1,
    progress: Progress | None = None,
    config_file: Any = None,
) -> tuple[Path, Manifest]:
    """Fetch `checkpoint` into `output` (see `fetch_seed_checkpoint`); a folder also gets
    `config_file` (a config.json or a folder with one) copied, or the config saved when it is none."""
    path, folder = checkpoint_paths(output)
    manifest = client.materialize_to_file(
        checkpoint.request(seed),
        path,
        session=session,
        streams=streams,
        progress=progress,
        zero_rows=checkpoint.zero_rows,
    )
    if folder is not None:
        save_config(checkpoint.config, folder, config_file)
    return path, manifest


def checkpoint_paths(output: str | os.PathLike) -> tuple[Path, Path | None]:
    """Where a seed checkpoint goes: (the safetensors file, the folder or None). `output` ending in
    ``.safetensors`` is the file; anything else is a folder holding ``model.safetensors``. Missing
    folders are created."""
    output = Path(output)
    if output.suffix == ".safetensors":
        output.parent.mkdir(parents=True, exist_ok=True)
        return output, None
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: not a folder (a seed checkpoint file's name ends in .safetensors)")
    output.mkdir(parents=True, exist_ok=True)
    return output / "model.safetensors", output


def save_config(config: Any, folder: Path, config_file: Any = None) -> Path:
    """Put the config beside the weights so ``from_pretrained(folder)`` works: a copy of
    `config_file` (config.json, or a folder with one) byte for byte, else `config` saved."""
    target = folder / "config.json"
    if isinstance(config_file, (str, os.PathLike)):
        source = Path(config_file)
        source = source / "config.json" if source.is_dir() else source
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    else:
        config.save_pretrained(str(folder))
    return target


__all__ = [
    "DTYPES",
    "FAMILIES",
    "Family",
    "SeedCheckpoint",
    "checkpoint_paths",
    "family",
    "fetch_seed_checkpoint",
    "init_std",
    "load_config",
    "meta_model",
    "preset_rules",
    "save_config",
    "seed_checkpoint",
    "write_seed_checkpoint",
]
