"""Sharded fetch: 4 trainer ranks pulling only their shards of GPT-2 small, against 4 full fetches.

    .venv/bin/python bench/sharded_fetch.py [--repeats 2] [--ranks 4] [--dtype float32]

A weightgen server subprocess (``--devices auto``: one CPU device per core, warm, XLA compilation
cache in a temporary directory) serves ``examples/specs/gpt2-small.json`` (Hugging Face names,
Conv1D ``[in, out]`` weights, 124,439,808 parameters). Each scenario starts `--ranks` threads, one
`weightgen.client.Client` (one channel) each, released together; its wall time is from the
release to the last rank's last byte, and its bytes are counted twice: the sum of what the
ranks received, and the growth of the server's ``weightgen_bytes_streamed_total``. Every
scenario uses its own seed, so the server's block cache never serves one scenario from another.

- full x1: one rank fetches the whole model (the reference time).
- tp x4: Megatron tensor parallelism: ``wte`` rows, column-parallel ``c_attn``/``c_fc`` (weight
  columns and bias), row-parallel ``c_proj`` (weight rows), ``wpe`` columns; layer norms and the
  ``c_proj`` biases replicated (each rank fetches those whole).
- fsdp x4: ZeRO-3/FSDP: every tensor split on its first axis (``torch.chunk`` convention).
- full x4: every rank fetches the whole model (what trainers do without shards; concurrent
  identical requests share generation through the server's single-flight and block cache).

Goals (issue): a 4-rank sharded fetch sends 1x the model, not 4x; its wall time is reported
against one full fetch. Each figure is the median of `--repeats` runs, after one warm-up fetch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serverproc import launch  # noqa: E402

from weightgen.client import Client  # noqa: E402
from weightgen.client.sharding import Ranges, fetch_shards, rank_shards  # noqa: E402
from weightgen.client.specfile import load_spec  # noqa: E402
from weightgen.client.specs import planned_bytes  # noqa: E402
from weightgen.v1 import weightgen_pb2 as pb  # noqa: E402

SPEC = ROOT / "examples" / "specs" / "gpt2-small.json"
METRIC = "weightgen_bytes_streamed_total"
PLANS = {
    # Hugging Face GPT-2's Conv1D weights are [in, out]: column-parallel splits axis 1.
    "tp": {
        "wte.weight": 0,
        "wpe.weight": 1,
        "h.*.attn.c_attn.weight": 1,
        "h.*.attn.c_attn.bias": 0,
        "h.*.attn.c_proj.weight": 0,
        "h.*.mlp.c_fc.weight": 1,
        "h.*.mlp.c_fc.bias": 0,
        "h.*.mlp.c_proj.weight": 0,
    },
    "fsdp": {"*": 0},
}


def model(dtype: str) -> list[pb.VariableSpec]:
    request = load_spec(SPEC)
    specs = list(request.variables)
    for spec in specs:
        spec.dtype = pb.DType.Value(f"DTYPE_{dtype.upper()}")
    return specs


def run_ranks(address: str, ranks: int, work: Callable[[Client, int], int]) -> tuple[float, int]:
    """`ranks` threads, each with its own Client, released together; (wall seconds, bytes)."""
    clients = [Client(address, timeout=900) for _ in range(ranks)]
    barrier = threading.Barrier(ranks + 1)
    received = [0] * ranks
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        barrier.wait()
        try:
            received[rank] = work(clients[rank], rank)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    for c in clients:
        c.close()
    if errors:
        raise errors[0]
    return seconds, sum(received)


def full_fetch(specs: list[pb.VariableSpec], seed: int) -> Callable[[Client, int], int]:
    def work(client: Client, rank: int) -> int:
        return sum(t.array.nbytes for t in client.stream(specs, seed=seed))  # arrays dropped as they come

    return work


def shard_fetch(specs: list[pb.VariableSpec], seed: int, plan: str, ranks: int) -> Callable[[Client, int], int]:
    def work(client: Client, rank: int) -> int:
        where = rank_shards(PLANS[plan], rank, ranks)
        items: list[tuple[pb.VariableSpec, Ranges | None]] = [(s, where(s.name, tuple(s.shape))) for s in specs]
        return sum(a.nbytes for a in fetch_shards(client, items, seed=seed))

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    specs = model(args.dtype)
    model_bytes = sum(planned_bytes(s) for s in specs)
    ranks = args.ranks

    with tempfile.TemporaryDirectory(prefix="weightgen-bench-") as tmp:
        workdir = Path(tmp)
        server = launch(workdir / "server", "--devices", "auto", "--warm-precisions", "float32", cache_dir=workdir)
        try:
            address = server.address
            run_ranks(address, 1, full_fetch(specs, seed=1))  # warm-up: every kernel compiled
            scenarios = {
                "full x1": lambda seed: full_fetch(specs, seed),
                f"tp x{ranks}": lambda seed: shard_fetch(specs, seed, "tp", ranks),
                f"fsdp x{ranks}": lambda seed: shard_fetch(specs, seed, "fsdp", ranks),
                f"full x{ranks}": lambda seed: full_fetch(specs, seed),
            }
            results: dict[str, dict[str, float]] = {}
            seed = 100
            for name, make in scenarios.items():
                count = 1 if name == "full x1" else ranks
                runs = []
                for _ in range(args.repeats):
                    seed += 1
                    before = server.metric(METRIC)
                    seconds, received = run_ranks(address, count, make(seed))
                    runs.append((seconds, received, server.metric(METRIC) - before))
                results[name] = {
                    "seconds": statistics.median(r[0] for r in runs),
                    "bytes_received": runs[-1][1],
                    "bytes_sent": runs[-1][2],
                }
                print(f"{name}: {results[name]}", flush=True)
        finally:
            server.stop()

    base = results["full x1"]["seconds"]
    lines = [
        f"command: `.venv/bin/python bench/sharded_fetch.py --repeats {args.repeats} --ranks {ranks}"
        f" --dtype {args.dtype}`",
        f"date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()}; server --devices auto; model: GPT-2 small, {args.dtype}, {model_bytes:,} bytes",
        "",
        "| scenario | server bytes sent | x model | ranks received | wall s (median) | x one full fetch |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {int(r['bytes_sent']):,} | {r['bytes_sent'] / model_bytes:.3f} | "
            f"{int(r['bytes_received']):,} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} |"
        )
    sharded = [n for n in results if not n.startswith("full")]
    worst = max(results[n]["bytes_sent"] / model_bytes for n in sharded)
    lines += [
        "",
        f"goal (4 ranks send 1x the model, not {ranks}x): {'met' if worst < 1.05 else 'NOT met'} "
        f"(worst sharded plan {worst:.3f}x; {ranks} full fetches "
        f"{results[f'full x{ranks}']['bytes_sent'] / model_bytes:.2f}x)",
    ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"model_bytes": model_bytes, "results": results}, indent=1))


if __name__ == "__main__":
    main()
