"""torchtitan's own Llama3 (torchtitan 0.3.0), parallelised by torchtitan's own code (tensor
parallel from its sharding configs with ``Module.parallelize``, FSDP2 with
``apply_fsdp_to_decoder``), filled by weightgen shard by shard, and checked against a
single-process fill of the unparallelised model.

    python examples/distributed/torchtitan_llama.py --server localhost:50051 --reference-out ref
    torchrun --standalone --nproc-per-node 4 examples/distributed/torchtitan_llama.py \\
        --server localhost:50051 --meshes 2x2,4x1 --reference ref --qkv separate,fused

Without torchrun (no process group) it builds the plain model on ``meta``, ``to_empty``,
``init_states`` (torchtitan's rotary cache and its own parameter init), fills it with
``materialize_module`` and writes the state dict to ``--reference-out DIR`` (one safetensors
file per ``--qkv`` variant; under torchrun, when ``--reference`` is absent, every rank computes
it the same way). Under torchrun each rank
builds the same model on ``meta``, parallelises it on a ``dp x tp`` CPU mesh (gloo) as
torchtitan's trainer does, runs ``to_empty`` and ``init_states`` (seeded identically on every
rank), records the digests of torchtitan's own initial weights (gathered with
``get_model_state_dict(full_state_dict=True)``), then calls ``materialize_module(model, client,
seed=...)``: each rank fetches exactly the block of the global tensor its local shard holds.
Rank 0 compares the gathered model with the reference, tensor by tensor.

The initializers are torchtitan's own, read from each module's ``param_init`` and translated to
weightgen's (`titan_rules`): ``trunc_normal_(std=0.02)`` for ``wq``/``wk``/``wv``/``w1``, the
depth-scaled ``std = 0.02 / sqrt(2 * (layer + 1))`` for ``wo``/``w2``/``w3``, ``std = dim ** -0.5``
cut at 3 std for ``lm_head``, ``N(0, 1)`` for the embedding, ones for the norms. torchtitan's
cutoffs ``a``/``b`` are absolute values, weightgen's ``lower``/``upper`` are in standard
deviations: ``lower = (a - mean) / std``, so the default ``a = -2`` at ``std = 0.02`` is ``-100``.

What it shows: torchtitan's own ``init_states`` on a CPU mesh gives different weights for
every mesh (DTensor's random ops have no sharding-aware generator on CPU: each rank draws its
local shard from the same seeded generator, so every tensor but the norms' ones depends on the
mesh). torchtitan documents the general problem: runs with different parallelism configs need a
"seed checkpoint" to start from the same weights (its docs/debugging.md, pytorch/torchtitan#1363;
#514 found matching the single-device init under TP/DP "practically impossible"). weightgen's
fill gives the single-process model at every mesh, bit for bit. ``--qkv fused`` (torchtitan's default, one ``wqkv``)
gathers the state dict tensor by tensor: ``get_model_state_dict`` fails on the hook that saves
``wqkv`` as ``wq``, ``wk``, ``wv``.
``--metrics URL`` reads the server's ``weightgen_bytes_streamed_total`` before and after each fill
(one model plus what the mesh replicates); ``--json FILE`` writes rank 0's summary.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import math
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from llama_dtensor import bytes_streamed, tensor_digest


@dataclass(frozen=True)
class TitanConfig:
    vocab_size: int = 251  # over 4 ranks: 63, 63, 63, 62 rows; over 2: 126, 125
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 130  # over 4: 33, 33, 33, 31
    max_seq_len: int = 128
    fuse_qkv: bool = False  # one wqkv projection (torchtitan's default) instead of wq, wk, wv


# torchtitan's minimal-async expert-parallel kernels: the names its api module imports from them.
_EP_KERNELS = "torchtitan.distributed.minimal_async_ep.kernels"
_EP_KERNEL_NAMES = (
    "copy_full_counts_to_peers_kernel",
    "copy_rows_to_peers_kernel",
    "expand_topk_grad_kernel",
    "fill_combine_metadata_kernel",
    "fill_dispatch_metadata_kernel",
    "invert_flat_indices_kernel",
    "reduce_topk_slots_kernel",
    "topk_scores_grad_kernel",
)


def torchtitan_workarounds() -> list[str]:
    """Import torchtitan's Llama3 on a CPU-only machine; returns the workarounds it applied.

    1. ``torchtitan.models.llama3`` imports, through the MoE token dispatcher,
       ``torchtitan/distributed/minimal_async_ep/kernels.py``, which imports ``triton``
       unconditionally (Triton kernels for expert parallelism, never run by a dense Llama). The
       CPU torch wheel has no triton (and a fake ``triton`` breaks torch itself: torch._dynamo
       reads ``triton.language.dtype`` once the module is found), so that one module is replaced
       by a stub holding the names torchtitan imports from it. A wrong name list fails the
       import; a stub torchtitan no longer imports raises here.
    2. torchtitan sets its device type at import to ``_get_available_device_type() or "cuda"``:
       "cuda" on a CPU machine, and ``ParallelDims.build_mesh`` builds its meshes there. Both
       module globals are set to "cpu" (this example runs on gloo); attributes that moved raise.

    Each is applied only where it is needed, and named in the list returned: the test expects
    both, so one that stops being needed fails it, as one that breaks does."""
    applied = []
    stub = None
    if importlib.util.find_spec("triton") is None:
        stub = types.ModuleType(_EP_KERNELS, "stub: torchtitan's Triton EP kernels (no triton here)")
        for name in _EP_KERNEL_NAMES:
            setattr(stub, name, None)
        sys.modules[_EP_KERNELS] = stub

    import torchtitan.distributed.parallel_dims as titan_parallel_dims
    import torchtitan.models.llama3  # noqa: F401
    import torchtitan.tools.utils as titan_utils

    if stub is not None:
        if sys.modules.get(_EP_KERNELS) is not stub or "torchtitan.distributed.minimal_async_ep.api" not in sys.modules:
            raise RuntimeError(f"torchtitan.models.llama3 no longer imports {_EP_KERNELS}: remove its stub")
        applied.append(f"stub {_EP_KERNELS} (no triton)")
    for module in (titan_utils, titan_parallel_dims):
        if not hasattr(module, "device_type"):
            raise RuntimeError(f"{module.__name__}.device_type is gone: revisit the device-type workaround")
        if module.device_type != "cpu":
            applied.append(f"{module.__name__}.device_type {module.device_type!r} -> 'cpu'")
            module.device_type = "cpu"
    return applied


def titan_model_config(c: TitanConfig) -> Any:
    """torchtitan's Llama3 config with its own initializers (as its registry's flavours build it)
    and its tensor-parallel sharding specs, sequence parallel on as by default (what its trainer's
    ``update_from_config`` sets)."""
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.llama3 import (
        _EMBEDDING_INIT,
        _NORM_INIT,
        Llama3Model,
        _build_llama3_layers,
        _output_linear_init,
    )
    from torchtitan.models.llama3.sharding import set_llama3_sharding_config

    config = Llama3Model.Config(
        dim=c.dim,
        vocab_size=c.vocab_size,
        tok_embeddings=Embedding.Config(num_embeddings=c.vocab_size, embedding_dim=c.dim, param_init=_EMBEDDING_INIT),
        norm=RMSNorm.Config(normalized_shape=c.dim, param_init=_NORM_INIT),
        lm_head=Linear.Config(in_features=c.dim, out_features=c.vocab_size, param_init=_output_linear_init(c.dim)),
        layers=_build_llama3_layers(
            n_layers=c.n_layers,
            dim=c.dim,
            n_heads=c.n_heads,
            n_kv_heads=c.n_kv_heads,
            hidden_dim=c.hidden_dim,
            rope=ComplexRoPE.Config(dim=c.dim // c.n_heads, max_seq_len=c.max_seq_len, theta=500000, scaling="llama"),
            attn_backend="flex",
            fuse_qkv=c.fuse_qkv,
        ),
    )
    set_llama3_sharding_config(config, enable_sp=True)
    return config


def _weightgen_initializer(init: Any, key: str) -> str:
    """One torchtitan ``param_init`` function (``functools.partial`` of ``torch.nn.init``) as the
    weightgen initializer with the same distribution; anything else raises."""
    nn_init = torch.nn.init
    if getattr(init, "__qualname__", "").startswith("_fused_qkv_param_init."):
        # The fused wqkv: torchtitan draws q, k and v with one base init each and interleaves them
        # by kv group; every element has that base distribution, so it is the fused tensor's.
        return _weightgen_initializer(inspect.getclosurevars(init).nonlocals["base_init"], key)
    function = init.func if isinstance(init, functools.partial) else init
    bound = {}
    if function in (nn_init.trunc_normal_, nn_init.normal_):
        arguments = inspect.signature(function).bind(None, *getattr(init, "args", ()), **getattr(init, "keywords", {}))
        arguments.apply_defaults()
        bound = arguments.arguments
    if function is nn_init.trunc_normal_:
        mean, std, a, b = (float(bound[k]) for k in ("mean", "std", "a", "b"))
        lower, upper = (a - mean) / std, (b - mean) / std  # torchtitan's cutoffs are absolute
        return f"truncated_normal(mean={mean!r}, stddev={std!r}, lower={lower!r}, upper={upper!r})"
    if function is nn_init.normal_:
        return f"random_normal(mean={float(bound['mean'])!r}, stddev={float(bound['std'])!r})"
    if function is nn_init.ones_:
        return "ones"
    if function is nn_init.zeros_:
        return "zeros"
    raise ValueError(f"{key}: torchtitan initialises it with {init!r}, which has no weightgen translation here")


def titan_rules(model: torch.nn.Module) -> dict[str, str]:
    """weightgen rules for every parameter, by its name in ``named_parameters`` (weightgen's
    variable name; a fused ``wqkv`` keeps its name), from torchtitan's own ``param_init`` of the
    module that owns it (what ``init_states`` calls)."""
    rules = {}
    for prefix, module in model.named_modules():
        inits = getattr(module, "_param_init", None)
        for name, _ in module.named_parameters(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            if inits is None or name not in inits:
                raise ValueError(f"{key}: torchtitan has no param_init for it")
            rules[key] = _weightgen_initializer(inits[name], key)
    return rules


def build(c: TitanConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return titan_model_config(c).build()


def titan_init(model: torch.nn.Module, seed: int) -> None:
    """torchtitan's own initialisation after ``to_empty``: every rank seeded alike, as torchtitan's
    ``set_determinism`` does across the data- and tensor-parallel ranks."""
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_states(buffer_device=torch.device("cpu"))


def plain_model(c: TitanConfig, titan_seed: int) -> torch.nn.Module:
    """The unparallelised torchtitan model with torchtitan's own init (no process group)."""
    model = build(c)
    model.to_empty(device="cpu")
    titan_init(model, titan_seed)
    return model


def reference(client: Any, c: TitanConfig, seed: int, titan_seed: int) -> dict[str, torch.Tensor]:
    """The single-process fill of the unparallelised torchtitan model."""
    from weightgen.client.torch import materialize_module

    model = plain_model(c, titan_seed)
    materialize_module(model, client, seed=seed, rules=titan_rules(model))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def parallelize(model: torch.nn.Module, dp: int, tp: int) -> Any:
    """torchtitan's ``parallelize_llama`` for the partial-DTensor backend, without compile or
    activation checkpointing: ``Module.parallelize`` (tensor parallel from the sharding configs)
    when tp > 1, then ``apply_fsdp_to_decoder`` (FSDP2 per block, the embedding, and norm with
    lm_head) over the fsdp mesh."""
    import torch.distributed as dist
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.fsdp import apply_fsdp_to_decoder

    dims = ParallelDims(
        dp_replicate=1,
        dp_shard=dp,
        cp=1,
        tp=tp,
        pp=1,
        ep=1,
        world_size=dist.get_world_size(),
        spmd_backend="partial_dtensor",
    )
    dims.build_mesh()
    if dims.tp_enabled:
        model.parallelize(dims)
    apply_fsdp_to_decoder(
        model, dims.get_mesh("fsdp"), param_dtype=torch.float32, reduce_dtype=torch.float32, pp_enabled=False
    )
    return dims


def full_state_dict(model: torch.nn.Module, c: TitanConfig) -> dict[str, torch.Tensor]:
    """The gathered model (a collective: every rank calls it; rank 0's is the one used). With a
    fused wqkv, ``get_model_state_dict`` fails on the hook that saves it as wq, wk and wv, so the
    module's own state dict (hook included) is gathered tensor by tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    if c.fuse_qkv:
        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def fetched_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(one model's bytes, what the ranks must fetch in all): every parameter once per replica of
    its DTensor. The parameters are what weightgen fetches here: torchtitan's one buffer, the
    rotary cache, is non-persistent and left as ``init_states`` computed it. (The state dict is no
    measure with a fused wqkv: torchtitan's save hook turns it into replicated wq, wk and wv.)"""
    from torch.distributed.tensor import DTensor

    model_bytes = wanted = 0
    for _, value in model.named_parameters():
        size = value.numel() * value.element_size()
        model_bytes += size
        replicas = 1
        if isinstance(value, DTensor):
            replicas = math.prod(value.device_mesh.size(i) for i, p in enumerate(value.placements) if p.is_replicate())
        wanted += size * replicas
    return model_bytes, wanted


def run_mesh(
    args: argparse.Namespace, c: TitanConfig, ref: dict[str, torch.Tensor], plain: dict[str, str], dp: int, tp: int
) -> dict:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, distribute_tensor

    from weightgen.client import Client
    from weightgen.client.torch import materialize_module

    rank = dist.get_rank()
    model = build(c)
    parallelize(model, dp, tp)
    model.to_empty(device="cpu")
    titan_init(model, args.titan_seed)
    own = {k: tensor_digest(v) for k, v in full_state_dict(model, c).items()}

    params = dict(model.named_parameters())
    placements = {k: str(tuple(v.placements)) for k, v in params.items() if isinstance(v, DTensor)}
    locals_before = {k: v.to_local().data_ptr() for k, v in params.items() if isinstance(v, DTensor)}
    buffers_before = {k: (v, v.clone()) for k, v in model.named_buffers()}
    rules = titan_rules(model)

    dist.barrier()
    before = bytes_streamed(args.metrics) if args.metrics and rank == 0 else 0.0
    dist.barrier()
    started = time.perf_counter()
    with Client(args.server, timeout=120) as client:
        materialize_module(model, client, seed=args.seed, rules=rules)
    seconds = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    dist.barrier()
    after = bytes_streamed(args.metrics) if args.metrics and rank == 0 else 0.0

    # Each parameter is still the DTensor it was, on the same local storage; the buffers are
    # torchtitan's (the same objects, the same values).
    still = all(model.get_parameter(k) is v for k, v in params.items())
    same_storage = all(params[k].to_local().data_ptr() == p for k, p in locals_before.items())
    buffers = dict(model.named_buffers())
    kept_buffers = buffers.keys() == buffers_before.keys() and all(
        buffers[k] is old and torch.equal(_local(old), _local(copy)) for k, (old, copy) in buffers_before.items()
    )
    # torch's own sharding of the reference (distribute_tensor, no communication) is what each rank
    # holds (a fused wqkv is not in the reference, which holds torchtitan's checkpoint layout).
    checked = [k for k, v in params.items() if isinstance(v, DTensor) and k in ref]
    mismatched = [
        k
        for k in checked
        if not torch.equal(
            distribute_tensor(ref[k], params[k].device_mesh, params[k].placements, src_data_rank=None).to_local(),
            params[k].to_local(),
        )
    ]
    flags = torch.tensor([int(still), int(same_storage), int(kept_buffers)])
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    bad = torch.tensor([len(mismatched)])
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    model_bytes, wanted = fetched_bytes(model)
    filled = {k: tensor_digest(v) for k, v in full_state_dict(model, c).items()}

    summary: dict = {}
    if rank == 0:
        expected = {k: tensor_digest(v) for k, v in ref.items()}
        summary = {
            "qkv": "fused" if c.fuse_qkv else "separate",
            "mesh": f"{dp}x{tp}",
            "world": dist.get_world_size(),
            "identical": filled == expected,
            "differ": sorted(k for k in expected.keys() | filled.keys() if filled.get(k) != expected.get(k)),
            "titan_init_differs": sorted(k for k in plain.keys() | own.keys() if own.get(k) != plain.get(k)),
            "all_dtensors": all(isinstance(v, DTensor) for v in params.values()),
            "kept_type": bool(flags[0]),
            "kept_storage": bool(flags[1]),
            "kept_buffers": bool(flags[2]),
            "buffers": sorted(buffers),
            "torch_sharding_checked": len(checked),
            "torch_sharding_mismatches": int(bad[0]),
            "mismatched_example": mismatched[:5],
            "placements": placements,
            "model_bytes": model_bytes,
            "expected_bytes": wanted,
            "server_bytes": int(after - before) if args.metrics else None,
            "fill_seconds": float(seconds[0]),
        }
    dist.barrier()
    return summary


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


VARIANTS = {"separate": TitanConfig(), "fused": TitanConfig(fuse_qkv=True)}


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import load_file, save_file

    from weightgen.client import Client

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--seed", type=int, default=42, help="weightgen's seed")
    parser.add_argument("--titan-seed", type=int, default=0, help="torch.manual_seed before torchtitan's init_states")
    parser.add_argument("--meshes", default="", help="dp x tp meshes, comma-separated (default: the world as FSDP)")
    parser.add_argument("--qkv", default="separate", help="separate (wq, wk, wv), fused (wqkv) or both: separate,fused")
    parser.add_argument("--reference", type=Path, help="a folder with the single-process fills; computed if absent")
    parser.add_argument("--reference-out", type=Path, help="without torchrun: write the single-process fills here")
    parser.add_argument("--metrics", default="", help="the server's /metrics URL: count the bytes it sent")
    parser.add_argument("--json", type=Path, help="rank 0's summary")
    args = parser.parse_args(argv)
    variants = args.qkv.split(",")
    if unknown := set(variants) - VARIANTS.keys():
        parser.error(f"--qkv: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    torch.set_num_threads(1)
    workarounds = torchtitan_workarounds()
    if args.reference_out is not None:  # one process, no process group
        args.reference_out.mkdir(parents=True, exist_ok=True)
        with Client(args.server, timeout=120) as client:
            for variant in variants:
                ref = reference(client, VARIANTS[variant], args.seed, args.titan_seed)
                save_file(ref, args.reference_out / f"{variant}.safetensors")
                print(f"reference ({variant} qkv): {len(ref)} tensors -> {args.reference_out / variant}.safetensors")
        return 0

    import torch.distributed as dist

    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    summaries = []
    for variant in variants:
        c = VARIANTS[variant]
        path = args.reference / f"{variant}.safetensors" if args.reference is not None else None
        if path is not None and path.exists():
            ref = load_file(path)
        else:
            with Client(args.server, timeout=120) as client:
                ref = reference(client, c, args.seed, args.titan_seed)
        plain = {k: tensor_digest(v) for k, v in plain_model(c, args.titan_seed).state_dict().items()}
        for mesh in (args.meshes or f"{world}x1").split(","):
            dp, tp = (int(n) for n in mesh.split("x"))
            if dp * tp != world:
                raise SystemExit(f"mesh {dp}x{tp} needs {dp * tp} ranks, torchrun gave {world}")
            summaries.append(run_mesh(args, c, ref, plain, dp, tp))
            if rank == 0:
                s = summaries[-1]
                sent = f"{s['server_bytes'] / s['model_bytes']:.3f}x" if s["server_bytes"] is not None else "-"
                print(
                    f"{variant} qkv, mesh {s['mesh']}: torchtitan's own init differs from the unparallelised "
                    f"one in {len(s['titan_init_differs'])} of {len(plain)} tensors; weightgen's fill is the "
                    f"single-process fill: {s['identical']}; bytes sent / model = {sent} "
                    f"(expected {s['expected_bytes'] / s['model_bytes']:.3f}x); fill {s['fill_seconds']:.2f} s",
                    flush=True,
                )
    if rank == 0 and args.json is not None:
        configs = {v: asdict(VARIANTS[v]) for v in variants}
        rules = {v: titan_rules(build(VARIANTS[v])) for v in variants}
        args.json.write_text(
            json.dumps({"configs": configs, "rules": rules, "workarounds": workarounds, "meshes": summaries}, indent=1)
        )
    dist.destroy_process_group()
    return 0 if rank != 0 or all(s["identical"] for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
