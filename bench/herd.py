"""Herds: N concurrent identical fetches of one tensor against one fetch, on one server.

    .venv/bin/python bench/herd.py [--clients 16] [--mib 1024] [--devices auto]

A weightgen server subprocess (default block cache, 128 MiB; `--devices auto`: one CPU device per
core; XLA compilation cache in a temporary directory) and `--clients` receiver processes, each with
its own channel, started and connected before the clock starts. Each receiver takes the stream on
the fast path (identity deserializer, `wire.decode_chunk`) in chunks of the client's default size,
counts the bytes and keeps the digest of the last chunk; every receiver must report the same
digest, and the single fetch's bytes are checked against it (SHA-256) outside the timing.
Scenarios, each on a tensor nobody fetched before:

- one: a single fetch, 1 GiB by default;
- herd: `--clients` identical fetches at once (single-flight plus the block cache);
- distinct: `--clients` fetches at once of different tensors (other seeds): what the herd would cost
  if nothing were shared.

For each: wall time from the start signal to the last receiver's last byte, the server's CPU
seconds, and its kernel calls from /metrics: submitted (cache hits + misses), generated (misses -
shared), served without generating (hits + shared), evicted; and the bytes it hashed for digests
(a herd shares one digest). Goal (issue): herd <= 2x one.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
CALL_ELEMENTS = 1 << 18
GOAL = 2.0


def shape_for(mib: int) -> list[int]:
    elements = mib * (1 << 20) // 4
    return [elements // 16384, 16384] if elements >= 16384 else [1, elements]


def request_bytes(name: str, seed: int, mib: int) -> bytes:
    from weightgen.v1 import weightgen_pb2 as pb

    variable = pb.VariableSpec(
        name=name, shape=shape_for(mib), initializer=pb.Initializer(random_normal=pb.RandomNormal(stddev=1.0))
    )
    from weightgen.v1 import wire

    request = pb.MaterializeRequest(seed=seed, variables=[variable], chunk_bytes=wire.MAX_CHUNK_BYTES)
    return request.SerializeToString()


def receiver(address: str, ready, go, results, keep: bool) -> None:
    """One client process: connect, wait for the start, take one stream, report."""
    import grpc

    from weightgen.v1 import wire

    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 8 << 20)])
    call = channel.unary_stream(MATERIALIZE, request_serializer=None, response_deserializer=None)
    grpc.channel_ready_future(channel).result(timeout=60)
    ready.put(os.getpid())
    request = go.get()
    t0 = time.perf_counter()
    received, digest, first = 0, b"", None
    sha = hashlib.sha256() if keep else None
    for raw in call(request, timeout=3600):
        chunk = wire.decode_chunk(raw)
        if first is None:
            first = time.perf_counter() - t0
        received += chunk.data.nbytes
        if sha is not None:
            sha.update(chunk.data)
        if chunk.last:
            digest = chunk.digest
    results.put(
        {
            "bytes": received,
            "seconds": time.perf_counter() - t0,
            "ttfb": first,
            "digest": digest.hex(),
            "verified": None if sha is None else sha.digest() == digest,
        }
    )
    channel.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(server) -> dict[str, float]:
    names = ("cache_hits", "cache_misses", "generation_shared", "cache_evictions", "digest_bytes_hashed")
    return {n: server.metric(f"weightgen_{n}_total") for n in names}


def scenario(server, requests: list[bytes], keep: bool) -> dict:
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=receiver, args=(server.address, ready, go, results, keep)) for _ in requests]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    before, cpu0 = counters(server), cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    for r in requests:
        go.put(r)
    out = [results.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    after = counters(server)
    delta = {k: after[k] - before[k] for k in after}
    return {
        "wall": wall,
        "server_cpu": cpu_seconds(server.proc.pid) - cpu0,
        "results": out,
        "submitted": delta["cache_hits"] + delta["cache_misses"],
        "generated": delta["cache_misses"] - delta["generation_shared"],
        "served": delta["cache_hits"] + delta["generation_shared"],
        "evicted": delta["cache_evictions"],
        "hashed": delta["digest_bytes_hashed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--cache-bytes", type=int, default=None, help="server --cache-bytes (default: its own)")
    args = parser.parse_args()

    import jax
    from serverproc import launch

    load = os.getloadavg()[0]
    calls = -(-shape_for(args.mib)[0] * shape_for(args.mib)[1] // CALL_ELEMENTS)
    nbytes = shape_for(args.mib)[0] * shape_for(args.mib)[1] * 4
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--devices", args.devices, "--warm-precisions", "float32", "--max-concurrent-streams", "256"]
        if args.cache_bytes is not None:
            flags += ["--cache-bytes", str(args.cache_bytes)]
        server = launch(Path(tmp) / "server", *flags, cache_dir=Path(tmp) / "xla")
        try:
            cache = server.metric("weightgen_cache_max_bytes")
            one = scenario(server, [request_bytes("herd/one", 1, args.mib)], keep=True)
            herd = scenario(server, [request_bytes("herd/many", 1, args.mib)] * args.clients, keep=False)
            distinct = scenario(
                server, [request_bytes("herd/distinct", 100 + i, args.mib) for i in range(args.clients)], keep=False
            )
        finally:
            server.stop()

    assert one["results"][0]["verified"], "the single fetch's bytes do not match its digest"
    for name, run in (("one", one), ("herd", herd), ("distinct", distinct)):
        assert all(r["bytes"] == nbytes for r in run["results"]), f"{name}: short stream"
    assert len({r["digest"] for r in herd["results"]}) == 1, "herd members got different bytes"
    ratio = herd["wall"] / one["wall"]

    print(f"weightgen herd bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(
        f"python {platform.python_version()}, jax {jax.__version__}, {os.cpu_count()} CPUs, "
        f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (the machine is shared)"
    )
    print(
        f"tensor: random_normal float32 {shape_for(args.mib)} = {nbytes / 2**20:.0f} MiB, {calls} kernel calls; "
        f"server --devices {args.devices}, block cache {cache / 2**20:.0f} MiB; {args.clients} receiver processes"
    )
    print()
    print(
        "| scenario | streams | wall s | GB/s delivered | server CPU s | kernel calls submitted | generated "
        "| served shared/cached | evicted | GiB hashed | median TTFB s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, run in (("one", one), ("herd (identical)", herd), ("distinct", distinct)):
        n = len(run["results"])
        ttfb = sorted(r["ttfb"] for r in run["results"])[n // 2]
        print(
            f"| {name} | {n} | {run['wall']:.2f} | {n * nbytes / run['wall'] / 1e9:.2f} | {run['server_cpu']:.1f} | "
            f"{run['submitted']:.0f} | {run['generated']:.0f} | {run['served']:.0f} | {run['evicted']:.0f} "
            f"| {run['hashed'] / 2**30:.2f} | {ttfb:.3f} |"
        )
    print()
    print(
        f"herd / one: {ratio:.2f}x (goal <= {GOAL:.0f}x: {'met' if ratio <= GOAL else 'NOT met'}); "
        f"distinct / herd: {distinct['wall'] / herd['wall']:.2f}x; "
        f"herd generated {herd['generated'] / calls:.2f}x one fetch's calls"
    )


if __name__ == "__main__":
    main()
