"""A Llama-style model, parallelised the way torchtitan does it (tensor parallel with
``parallelize_module``, then FSDP2's ``fully_shard`` per block and at the root), filled by weightgen
shard by shard, and checked against a single-process fill of the unparallelised model.

    torchrun --standalone --nproc-per-node 4 examples/distributed/llama_dtensor.py \\
        --server localhost:50051 --meshes 2x2,4x1,1x4 --seed 42

Each rank builds the model on ``meta``, parallelises it on a ``(dp, tp)`` CPU mesh (gloo), calls
``model.to_empty(device="cpu")`` and then ``materialize_module(model, client, seed=...)``: every
parameter is a DTensor, and each rank fetches exactly the block of the global tensor its local
shard holds, into that shard, in place. Rank 0 then gathers the full state dict
(``get_model_state_dict(full_state_dict=True)``) and compares it, tensor by tensor, with a
single-process fill of the plain model (``--reference``, a safetensors file; computed here when
not given). With ``--metrics URL`` rank 0 also reads the server's ``weightgen_bytes_streamed_total``
before and after each fill: the bytes the server sent, which must be one model plus whatever the
mesh replicates. ``--json FILE`` writes rank 0's summary of every mesh.

``dp x tp`` meshes: ``1x1`` (FSDP on one rank), ``Nx1`` (FSDP only), ``1xN`` (tensor parallel
only), ``2x2`` (both: FSDP's shards of tensor-parallel shards, ``_StridedShard`` placements). The
dimensions are chosen so that splits are uneven (a vocabulary of 251 rows over 4 ranks is 63, 63,
63 and 62 rows, the SwiGLU hidden size 130 over 4 is 33, 33, 33, 31).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 251
    dim: int = 48
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 130
    rope_theta: float = 10000.0
    max_seq_len: int = 32

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


SIZES = {
    "tiny": LlamaConfig(),  # for tests: 75,600 parameters
    # for bench/dtensor_fill.py: 158M parameters (632 MB in float32), still uneven over 4 ranks
    "bench": LlamaConfig(vocab_size=32003, dim=1024, n_layers=8, n_heads=16, n_kv_heads=4, hidden_dim=2818),
}


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.wq = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim)
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        q, k = rotate(q, freqs[:s]), rotate(k, freqs[:s])
        repeat = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.w2 = nn.Linear(c.hidden_dim, c.dim, bias=False)
        self.w3 = nn.Linear(c.dim, c.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(c.dim)
        self.attention = Attention(c)
        self.ffn_norm = nn.RMSNorm(c.dim)
        self.feed_forward = FeedForward(c)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), freqs)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.config = c
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.dim)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        # Rotary angles: computed by the model, not initialised (a non-persistent buffer).
        self.register_buffer("freqs", self.rope_angles(), persistent=False)

    def rope_angles(self) -> torch.Tensor:
        c = self.config
        inverse = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim)
        return torch.outer(torch.arange(c.max_seq_len, dtype=torch.float32), inverse)

    def init_buffers(self) -> None:
        """After ``to_empty``: the buffers the model computes itself."""
        with torch.no_grad():
            self.freqs.copy_(self.rope_angles())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, self.freqs)
        return self.output(self.norm(x))


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


# torchtitan's depth-scaled init, as weightgen rules: the output projections of layer i get
# trunc_normal(std = 0.02 / sqrt(2 * (i + 1))); everything else follows the "torch" preset
# (Linear: kaiming_uniform(a=sqrt(5)) with fan_in from the *global* shape, Embedding: N(0, 1),
# RMSNorm: ones).
def rules(c: LlamaConfig) -> dict[str, str]:
    out = {}
    for i in range(c.n_layers):
        std = 0.02 / math.sqrt(2 * (i + 1))
        out[f"layers.{i}.attention.wo.weight"] = f"truncated_normal(stddev={std!r})"
        out[f"layers.{i}.feed_forward.w2.weight"] = f"truncated_normal(stddev={std!r})"
    return out


def parallelize(model: Llama, mesh: Any) -> Llama:
    """torchtitan's recipe on a ("dp", "tp") mesh: tensor parallel (vocabulary-parallel embedding,
    column-parallel q/k/v/w1/w3 and output, row-parallel wo/w2, sequence-parallel norms) when tp >
    1, then FSDP2 per block and at the root over dp."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    if mesh["tp"].size() > 1:
        tp = mesh["tp"]
        parallelize_module(
            model,
            tp,
            {
                "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
                "norm": SequenceParallel(),
                "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
            },
        )
        for block in model.layers:
            plan = {
                "attention_norm": SequenceParallel(),
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
                "feed_forward.w3": ColwiseParallel(),
            }
            parallelize_module(block, tp, plan)
    if mesh["dp"].size() > 1 or mesh["tp"].size() == 1:
        for block in model.layers:
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    return model


def tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def reference(client: Any, c: LlamaConfig, seed: int) -> dict[str, torch.Tensor]:
    """The single-process fill of the plain (unparallelised) model."""
    from weightgen.client.torch import materialize_module

    with torch.device("meta"):
        model = Llama(c)
    materialize_module(model, client, seed=seed, rules=rules(c), preset="torch")
    return model.state_dict()


def bytes_streamed(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^weightgen_bytes_streamed_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def expected_bytes(model: nn.Module) -> tuple[int, int]:
    """(one model's bytes, what the ranks must fetch in all: each tensor once per replica)."""
    from torch.distributed.tensor import DTensor

    model_bytes = wanted = 0
    seen = set()
    for value in model.state_dict().values():
        if id(value) in seen:
            continue
        seen.add(id(value))
        size = value.numel() * value.element_size()
        model_bytes += size
        replicas = 1
        if isinstance(value, DTensor):
            replicas = math.prod(value.device_mesh.size(i) for i, p in enumerate(value.placements) if p.is_replicate())
        else:
            replicas = int(os.environ.get("WORLD_SIZE", "1"))
        wanted += size * replicas
    return model_bytes, wanted


def run_mesh(args: argparse.Namespace, c: LlamaConfig, ref: dict[str, torch.Tensor] | None, dp: int, tp: int) -> dict:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, distribute_tensor

    from weightgen.client import Client
    from weightgen.client.torch import materialize_module

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    with torch.device("meta"):
        model = Llama(c)
    parallelize(model, mesh)
    model.to_empty(device="cpu")
    model.init_buffers()
    placements = {k: str(v.placements) for k, v in model.state_dict().items() if isinstance(v, DTensor)}
    kinds = {k: type(v).__name__ for k, v in model.named_parameters()}
    locals_before = {k: v.to_local().data_ptr() for k, v in model.named_parameters() if isinstance(v, DTensor)}

    dist.barrier()
    before = bytes_streamed(args.metrics) if args.metrics and rank == 0 else 0.0
    dist.barrier()
    started = time.perf_counter()
    with Client(args.server, timeout=120) as client:
        materialize_module(model, client, seed=args.seed, rules=rules(c), preset="torch")
    seconds = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    dist.barrier()
    after = bytes_streamed(args.metrics) if args.metrics and rank == 0 else 0.0

    # Each parameter is still the DTensor it was, on the same local storage.
    still = all(type(v).__name__ == kinds[k] for k, v in model.named_parameters())
    same_storage = all(model.get_parameter(k).to_local().data_ptr() == p for k, p in locals_before.items())
    # torch's own sharding of the reference (distribute_tensor, no communication) is what each rank
    # holds: the check that weightgen's reading of the placements is torch's.
    def torch_shard(key: str, value: DTensor) -> torch.Tensor:
        return distribute_tensor(ref[key], value.device_mesh, value.placements, src_data_rank=None).to_local()

    state = model.state_dict()
    dtensors = {k: v for k, v in state.items() if isinstance(v, DTensor)}
    mismatched = []
    if ref is not None:
        mismatched = [k for k, v in dtensors.items() if not torch.equal(torch_shard(k, v), v.to_local())]
    flags = torch.tensor([int(still), int(same_storage)])
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    bad = torch.tensor([len(mismatched)])
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)

    model_bytes, wanted = expected_bytes(model)
    full = None
    if ref is not None:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    summary: dict = {}
    if rank == 0:
        differ = []
        if full is not None:
            differ = [k for k in ref if k not in full or tensor_digest(full[k]) != tensor_digest(ref[k])]
        summary = {
            "mesh": f"{dp}x{tp}",
            "world": dist.get_world_size(),
            "identical": None if full is None else not differ and set(full) == set(ref),
            "differ": differ,
            "all_dtensors": all(k == "DTensor" for k in kinds.values()),
            "kept_type": bool(flags[0]),
            "kept_storage": bool(flags[1]),
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


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--meshes", default="", help="dp x tp meshes, comma-separated (default: the world as FSDP)")
    parser.add_argument("--reference", type=Path, help="the single-process fill (safetensors); computed if absent")
    parser.add_argument("--no-check", action="store_true", help="only fill and count (no reference, no gather)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--metrics", default="", help="the server's /metrics URL: count the bytes it sent")
    parser.add_argument("--json", type=Path, help="rank 0's summary of every mesh")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    c = SIZES[args.size]
    if args.no_check:
        ref = None
    elif args.reference is not None and args.reference.exists():
        ref = load_file(args.reference)
    else:
        from weightgen.client import Client

        with Client(args.server, timeout=120) as client:
            ref = {k: v.contiguous() for k, v in reference(client, c, args.seed).items()}
        if args.reference is not None and rank == 0:
            save_file(ref, args.reference)
    meshes = [tuple(int(n) for n in m.split("x")) for m in (args.meshes or f"{world}x1").split(",")]
    summaries = []
    for dp, tp in meshes:
        if dp * tp != world:
            raise SystemExit(f"mesh {dp}x{tp} needs {dp * tp} ranks, torchrun gave {world}")
        summaries.append(run_mesh(args, c, ref, dp, tp))
        if rank == 0:
            s = summaries[-1]
            sent = f"{s['server_bytes'] / s['model_bytes']:.3f}x" if s["server_bytes"] is not None else "-"
            print(
                f"mesh {s['mesh']}: identical={s['identical']} bytes sent / model = {sent} "
                f"(expected {s['expected_bytes'] / s['model_bytes']:.3f}x) fill {s['fill_seconds']:.2f} s",
                flush=True,
            )
    if rank == 0 and args.json is not None:
        args.json.write_text(json.dumps({"config": asdict(c), "meshes": summaries}, indent=1))
    dist.destroy_process_group()
    return 0 if rank != 0 or all(s["identical"] is not False for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
