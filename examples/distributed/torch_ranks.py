"""Each rank fetches only its shards of a GPT-2-sized model from one weightgen server, then the
ranks all-gather them and rank 0 checks the assembled model against a single-process fetch.

    torchrun --standalone --nproc-per-node 4 examples/distributed/torch_ranks.py --server localhost:50051

The model is built on the ``meta`` device (no memory, no initialisation). Megatron-style tensor
parallelism decides the shards (``--plan tp``): vocabulary-parallel embeddings, column-parallel
``c_attn`` and ``c_fc`` (weights and biases split on their output axis), row-parallel ``c_proj``
(split on the input axis), layer norms and row-parallel biases replicated. ``--plan fsdp`` splits
every tensor on its first axis instead. Shards follow ``torch.chunk``: 50257 vocabulary rows over
4 ranks are 12565 + 12565 + 12565 + 12562.

Because weightgen computes fans from the full shape and draws every element from its own place in
the full tensor, the assembled model is the same, bit for bit, at every world size: the digest
printed at the end is the same for 1, 2 and 4 ranks (``run_world_sizes.py`` checks exactly that).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from weightgen.client import Client
from weightgen.client.sharding import rank_shards
from weightgen.client.torch import materialize_module

# Hugging Face gpt2 (124M parameters) and a tiny one for tests; odd vocabularies give uneven shards.
SIZES = {
    "gpt2-small": {"vocab": 50257, "context": 1024, "embed": 768, "layers": 12},
    "small": {"vocab": 1003, "context": 64, "embed": 64, "layers": 2},
}

PLANS = {
    # Megatron-LM tensor parallelism; nn.Linear weights are [out, in].
    "tp": {
        "wte.weight": 0,  # vocabulary-parallel (lm_head.weight is the same tensor)
        "wpe.weight": 1,
        "h.*.attn.c_attn.weight": 0,  # column-parallel
        "h.*.attn.c_attn.bias": 0,
        "h.*.attn.c_proj.weight": 1,  # row-parallel; its bias is replicated
        "h.*.mlp.c_fc.weight": 0,
        "h.*.mlp.c_fc.bias": 0,
        "h.*.mlp.c_proj.weight": 1,
    },
    # ZeRO-3 / FSDP: every tensor split on its first axis.
    "fsdp": {"*": 0},
}


class Attention(nn.Module):
    def __init__(self, embed: int):
        super().__init__()
        self.c_attn = nn.Linear(embed, 3 * embed)
        self.c_proj = nn.Linear(embed, embed)


class MLP(nn.Module):
    def __init__(self, embed: int):
        super().__init__()
        self.c_fc = nn.Linear(embed, 4 * embed)
        self.c_proj = nn.Linear(4 * embed, embed)


class Block(nn.Module):
    def __init__(self, embed: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed)
        self.attn = Attention(embed)
        self.ln_2 = nn.LayerNorm(embed)
        self.mlp = MLP(embed)


class GPT(nn.Module):
    """GPT-2's parameters (Hugging Face's names, nn.Linear's [out, in] layout); no forward needed."""

    def __init__(self, vocab: int, context: int, embed: int, layers: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, embed)
        self.wpe = nn.Embedding(context, embed)
        self.h = nn.ModuleList(Block(embed) for _ in range(layers))
        self.ln_f = nn.LayerNorm(embed)
        self.lm_head = nn.Linear(embed, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2


def meta_model(size: str) -> GPT:
    with torch.device("meta"):
        return GPT(**SIZES[size])


def gpt2_rules(size: str) -> list[tuple[object, str]]:
    """GPT-2's _init_weights on top of the "weightgen" preset (biases 0, layer norms 1 and 0):
    normal(0.02), and normal(0.02 / sqrt(2 * layers)) for the residual projections."""
    layers = SIZES[size]["layers"]
    return [
        ("h.*.c_proj.weight", f"random_normal(stddev={0.02 / math.sqrt(2 * layers)})"),
        ((nn.Linear, "weight"), "random_normal(stddev=0.02)"),
        ((nn.Embedding, "weight"), "random_normal(stddev=0.02)"),
    ]


def fetch(client: Client, model: GPT, size: str, seed: int, shard=None):
    """The whole model filled in place, or with `shard` this rank's shards by state-dict key."""
    return materialize_module(model, client, seed=seed, rules=gpt2_rules(size), preset="weightgen", shard=shard)


def split_axis(axes: dict[str, int], key: str, shape: tuple[int, ...]) -> int | None:
    """The axis `key` is split on under the plan `axes` (as `rank_shards` reads it), or None."""
    axis = next((a for pattern, a in axes.items() if fnmatch.fnmatchcase(key, pattern)), None)
    return None if axis is None or not shape else axis % len(shape)


def gather(local: torch.Tensor, shape: tuple[int, ...], axis: int, world: int) -> torch.Tensor:
    """The full tensor from every rank's shard along `axis`: shards padded to ceil(dim / world),
    all-gathered as bytes (any dtype), cut back to `dim`."""
    chunk = -(-shape[axis] // world)
    moved = local.movedim(axis, 0)
    padded = torch.zeros((chunk, *moved.shape[1:]), dtype=local.dtype)
    padded[: moved.shape[0]] = moved
    flat = padded.reshape(-1).view(torch.uint8)
    pieces = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(pieces, flat)
    full = torch.cat([p.view(local.dtype).reshape(padded.shape) for p in pieces])[: shape[axis]]
    return full.movedim(0, axis).contiguous()


def raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


TIED = "lm_head.weight"  # the same tensor as wte.weight: left out of digests and counts


def add_to_digest(digest, key: str, t: torch.Tensor) -> None:
    digest.update(key.encode() + b"\0" + raw(t))


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """The SHA-256 of a state dict in its order (keys and bytes), the tied lm_head left out: what
    every world size must agree on."""
    digest = hashlib.sha256()
    for key, t in state.items():
        if key != TIED:
            add_to_digest(digest, key, t)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--small", action="store_true", help="a tiny GPT-2-like model (tests)")
    parser.add_argument("--plan", choices=sorted(PLANS), default="tp")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--digest-out", type=Path, help="rank 0 writes its summary here as JSON")
    args = parser.parse_args()
    size = "small" if args.small else "gpt2-small"
    dtype = getattr(torch, args.dtype)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    axes = PLANS[args.plan]
    with Client(args.server, timeout=600) as client:
        model = meta_model(size).to(dtype)
        dist.barrier()
        started = time.perf_counter()
        shards = fetch(client, model, size, args.seed, shard=rank_shards(axes, rank, world))
        fetch_seconds = time.perf_counter() - started
        local_bytes = sum(t.numel() * t.element_size() for k, t in shards.items() if k != TIED)

        digest = hashlib.sha256()
        model_bytes, assembled = 0, {}
        for key, meta in model.state_dict().items():
            if key == TIED:
                continue
            shape = tuple(meta.shape)
            axis = split_axis(axes, key, shape)
            full = shards[key] if axis is None or world == 1 else gather(shards[key], shape, axis, world)
            add_to_digest(digest, key, full)
            model_bytes += full.numel() * full.element_size()
            if rank == 0:
                assembled[key] = full
        counts = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([local_bytes, fetch_seconds], dtype=torch.float64))

        if rank == 0:
            reference = fetch(client, meta_model(size).to(dtype), size, args.seed)
            expected = {k: v for k, v in reference.state_dict().items() if k != TIED}
            same = expected.keys() == assembled.keys() and all(raw(expected[k]) == raw(assembled[k]) for k in expected)
            tied = reference.lm_head.weight is reference.wte.weight
            fetched = sum(int(c[0]) for c in counts)
            print(f"{'rank':>4} {'bytes fetched':>15} {'seconds':>8}")
            for r, c in enumerate(counts):
                print(f"{r:>4} {int(c[0]):>15,} {float(c[1]):>8.2f}")
            print(f"model: {size} {args.dtype}, {model_bytes:,} bytes; plan {args.plan}, world {world}")
            print(f"fetched by all ranks: {fetched:,} bytes = {fetched / model_bytes:.3f}x the model")
            print(f"assembled == single-process fetch: {same}; lm_head tied to wte: {tied}")
            print(f"digest {digest.hexdigest()}")
            if args.digest_out:
                summary = {
                    "world": world,
                    "plan": args.plan,
                    "digest": digest.hexdigest(),
                    "model_bytes": model_bytes,
                    "fetched_bytes": fetched,
                    "seconds": max(float(c[1]) for c in counts),
                    "identical": same and tied,
                }
                args.digest_out.write_text(json.dumps(summary))
            ok = same and tied
        else:
            ok = True
        # Every rank waits for rank 0's check before tearing gloo down: a rank that leaves while a
        # peer still holds the group open can abort the peer's process at exit.
        dist.barrier()
    dist.destroy_process_group()
    if not ok:
        print("the assembled model differs from a single-process fetch", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # torch's gloo backend keeps its worker threads (pt_gloo_runloop) running after
    # destroy_process_group; C++ static destructors at interpreter exit then race them and can abort
    # a rank that finished its work (std::terminate: SIGABRT, sometimes SIGBUS). Every result is
    # written and flushed by now, so leave without running those destructors.
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
