"""A client built from the .proto with stock protobuf parsing, against the project's fast path (issue 13, goal 5).

    .venv/bin/python bench/stock_client.py [--mib 256] [--repeats 10]

One weightgen server subprocess (``--devices auto``, warm, block cache on) serves one cached tensor
(random_normal float32 [4096, 16384] = 256 MiB; every variant fetches it after a warm-up, so the
server's cost is the same for each: asserted with its block-cache metrics) with the client's
default chunk (`wire.MAX_CHUNK_BYTES`) and an XXH3-128 digest (``MaterializeRequest.digest_algorithm``),
to each of these, interleaved ``--repeats`` times (in a new, seeded random order each time) so that each sees
the same load:

1. fast path: the project's own receive loop: ``channel.unary_stream(..., response_deserializer=None)``,
   `wire.decode_chunk` (the data stays a view of the message), each chunk copied into one
   preallocated numpy buffer at its offset, a running XXH3-128 checked on the last chunk;
2. stock, first try: the generated stub ``weightgen_pb2_grpc.WeightGenStub(channel).Materialize``
   (stock protobuf parsing into TensorChunk objects), ``np.frombuffer(chunk.data)`` per chunk,
   ``np.concatenate`` at the end, then XXH3-128 of the whole array: what a user writes first;
2b. the same, with the request a user writes first: no chunk_bytes (the server's 1 MiB) and no
   digest_algorithm (SHA-256) (the server's cost differs here: its chunks are smaller);
3. stock, improved: the generated stub, with what a user can do without a hand-written codec: one
   buffer preallocated from TensorInfo.byte_size, each chunk's data written at its offset, a running
   XXH3-128 updated per chunk (no b"".join, no concatenate);
4. the example clients in examples/ (Go, Node.js, C++; built by ``make test-interop`` into
   build/interop/), each a whole process reading the same request as protobuf JSON; wall time and
   the child's CPU (user + system, from its resource usage); their fixed cost (start-up,
   connection) is measured alone on a one-element request and the "net" columns subtract it.

Every variant's digest is checked against the server's and the fast path's. GB/s counts tensor
bytes (1e9); ratios are against the fast path in this run: of the best times and of the medians.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import xxhash
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc as pb_grpc
from weightgen.v1 import wire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serverproc import launch  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
SEED = 4242
BUILD = ROOT / "build" / "interop"
EXTERNAL = {
    "Go example (weightgen-go)": [str(BUILD / "go" / "bin" / "weightgen-go")],
    "Node.js example (weightgen-node)": ["node", str(ROOT / "examples" / "node" / "bin" / "weightgen-node.js")],
    "C++ example (weightgen-cpp)": [str(BUILD / "cpp" / "weightgen-cpp")],
}


def make_request(mib: int, *, defaults: bool = False) -> pb.MaterializeRequest:
    elements = mib * MiB // 4
    shape = (elements // 16384, 16384) if elements >= 16384 else (1, elements)
    variable = pb.VariableSpec(
        name="bench/w",
        shape=shape,
        dtype=pb.DTYPE_FLOAT32,
        initializer=pb.Initializer(random_normal=pb.RandomNormal(stddev=1.0)),
    )
    request = pb.MaterializeRequest(seed=SEED, variables=[variable])
    if not defaults:
        request.chunk_bytes = wire.MAX_CHUNK_BYTES
        request.digest_algorithm = pb.DIGEST_ALGORITHM_XXH3_128
    return request


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the in-process variants: each returns (array, digest it checked) ------------------------------


def fast_path(channel: grpc.Channel, request: pb.MaterializeRequest) -> tuple[np.ndarray, bytes]:
    call = channel.unary_stream(
        MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString, response_deserializer=None
    )
    buffer = hasher = info = None
    digest = b""
    for raw in call(request, timeout=600):
        chunk = wire.decode_chunk(raw)
        if chunk.info is not None:
            info = chunk.info
            buffer = np.empty(info.byte_size, np.uint8)
            hasher = xxhash.xxh3_128()
        n = len(chunk.data)
        buffer[chunk.offset : chunk.offset + n] = chunk.data
        hasher.update(chunk.data)
        if chunk.last:
            digest = chunk.digest
            if hasher.digest() != digest:
                raise AssertionError("fast path: digest mismatch")
    return buffer.view(np.float32).reshape(tuple(info.shape)), digest


def stock_first(channel: grpc.Channel, request: pb.MaterializeRequest) -> tuple[np.ndarray, bytes]:
    stub = pb_grpc.WeightGenStub(channel)
    parts, info, digest = [], None, b""
    for chunk in stub.Materialize(request, timeout=600):
        if chunk.HasField("info"):
            info = chunk.info
        parts.append(np.frombuffer(chunk.data, dtype=np.float32))
        if chunk.last:
            digest = chunk.digest
    array = np.concatenate(parts).reshape(tuple(info.shape))
    algorithm = info.digest_algorithm or "sha256"
    computed = wire.new_digest(algorithm)
    computed.update(array)
    if computed.digest() != digest:
        raise AssertionError("stock: digest mismatch")
    return array, digest


def stock_improved(channel: grpc.Channel, request: pb.MaterializeRequest) -> tuple[np.ndarray, bytes]:
    stub = pb_grpc.WeightGenStub(channel)
    buffer = hasher = info = None
    digest = b""
    for chunk in stub.Materialize(request, timeout=600):
        if chunk.HasField("info"):
            info = chunk.info
            buffer = np.empty(info.byte_size, np.uint8)
            hasher = xxhash.xxh3_128()
        data = chunk.data
        buffer[chunk.offset : chunk.offset + len(data)] = np.frombuffer(data, np.uint8)
        hasher.update(data)
        if chunk.last:
            digest = chunk.digest
            if hasher.digest() != digest:
                raise AssertionError("stock improved: digest mismatch")
    return buffer.view(np.float32).reshape(tuple(info.shape)), digest


# -- the example clients, as processes -------------------------------------------------------------


def run_external(command: list[str], address: str, request_file: Path) -> tuple[float, float, str]:
    """(wall seconds, child CPU seconds, its stdout) of one example client run."""
    args = [*command, "--server", address, "--timeout", "600", str(request_file)]
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        raise RuntimeError(f"{args[0]} exited {code}: {err.decode()[-1000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, out.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="tensor size in MiB (float32)")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved repeats of every variant")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    nbytes = args.mib * MiB
    request = make_request(args.mib)
    first_request = make_request(args.mib, defaults=True)
    workdir = Path(tempfile.mkdtemp(prefix="weightgen-stock-"))
    request_file = workdir / "request.json"
    request_file.write_text(json_format.MessageToJson(request))
    tiny = pb.MaterializeRequest(
        seed=SEED,
        variables=[pb.VariableSpec(name="x", shape=[1], initializer=pb.Initializer(zeros=pb.Zeros()))],
        digest_algorithm=pb.DIGEST_ALGORITHM_XXH3_128,
    )
    tiny_file = workdir / "tiny.json"
    tiny_file.write_text(json_format.MessageToJson(tiny))

    server = launch(
        workdir / "server",
        *("--devices", "auto", "--warm-precisions", "float32", "--cache-bytes", str(4 * nbytes)),
        cache_dir=workdir / "xla-cache",
    )
    external = {}
    notes = []
    for name, command in EXTERNAL.items():
        program = command[-1] if command[0] == "node" else command[0]
        if not Path(program).exists():
            notes.append(f"{name}: not built ({program} missing; `make test-interop` builds it)")
        else:
            external[name] = command
    fast_channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", -1)])
    stock_channel = grpc.insecure_channel(server.address)  # stock options: gRPC's 4 MiB receive limit
    variants = {
        "1. fast path (identity deserializer, wire.decode_chunk, at offset)": lambda: fast_path(fast_channel, request),
        "2. stock stub, first try (frombuffer per chunk, concatenate)": lambda: stock_first(stock_channel, request),
        "2b. same, request defaults (1 MiB chunks, SHA-256)": lambda: stock_first(stock_channel, first_request),
        "3. stock stub, improved (preallocated, at offset, running xxh3)": lambda: stock_improved(
            stock_channel, request
        ),
    }
    names = list(variants) + list(external)
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}  # (wall, client, server)
    startup: dict[str, tuple[float, float]] = {}
    try:
        # Warm-up: fills the block cache and both digests on the server's digest board.
        array, reference = fast_path(fast_channel, request)
        reference_sha = stock_first(stock_channel, first_request)[1]
        expected = xxhash.xxh3_128_digest(array)
        assert expected == reference
        for name, command in external.items():
            startup[name] = min(run_external(command, server.address, tiny_file)[:2] for _ in range(3))
            _, _, out = run_external(command, server.address, request_file)
            assert out.split("\t")[-1].strip() == expected.hex(), (name, out)
        misses, hits = server.metric("weightgen_cache_misses_total"), server.metric("weightgen_cache_hits_total")
        shuffle = random.Random(13)
        for _ in range(args.repeats):
            # A new order every repeat (seeded): no variant always first, or always after the same one.
            for name in shuffle.sample(names, len(names)):
                server0, client0 = cpu_seconds(server.proc.pid), time.process_time()
                if name in variants:
                    t = time.perf_counter()
                    array, digest = variants[name]()
                    seconds = time.perf_counter() - t
                    client_cpu = time.process_time() - client0
                    assert array.nbytes == nbytes
                    assert digest == (reference_sha if name.startswith("2b") else expected), name
                    del array
                else:
                    seconds, client_cpu, out = run_external(external[name], server.address, request_file)
                    assert out.split("\t")[-1].strip() == expected.hex(), (name, out)
                times[name].append((seconds, client_cpu, cpu_seconds(server.proc.pid) - server0))
        assert server.metric("weightgen_cache_misses_total") == misses, "a timed fetch generated"
        assert server.metric("weightgen_cache_hits_total") > hits
    finally:
        fast_channel.close()
        stock_channel.close()
        code = server.stop()
        if code != 0:
            print(server.log()[-4000:], file=sys.stderr)

    gib = nbytes / GiB
    fast = names[0]
    best = {name: min(r[0] for r in rows) for name, rows in times.items()}
    median = {name: float(np.median([r[0] for r in rows])) for name, rows in times.items()}
    print(f"Command: .venv/bin/python bench/stock_client.py --mib {args.mib} --repeats {args.repeats}")
    print(
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, grpcio {grpc.__version__}, protobuf "
        f"{__import__('google.protobuf').protobuf.__version__} ({_protobuf_backend()}); 1-minute load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"Tensor: random_normal float32 {list(request.variables[0].shape)} ({nbytes / 1e9:.3f} GB) from the block "
        f"cache; chunk {wire.MAX_CHUNK_BYTES // 1024} KiB; xxh3_128; {args.repeats} interleaved runs of each"
    )
    print()
    print(
        "| client | best GB/s | best / fast | median GB/s | median / fast | CPU s/GiB client | server "
        "| fixed cost s | net best GB/s | net best / fast |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = times[name]
        b, m = nbytes / best[name] / 1e9, nbytes / median[name] / 1e9
        client_cpu = float(np.median([r[1] for r in rows])) / gib
        server_cpu = float(np.median([r[2] for r in rows])) / gib
        if name in startup:
            fixed = startup[name][0]
            net = nbytes / max(best[name] - fixed, 1e-9) / 1e9
            extra = f"{fixed:.2f} | {net:.3f} | {net / (nbytes / best[fast] / 1e9):.2f}x"
        else:
            extra = "- | - | -"
        print(
            f"| {name} | {b:.3f} | {best[fast] / best[name]:.2f}x | {m:.3f} | {median[fast] / median[name]:.2f}x "
            f"| {client_cpu:.2f} | {server_cpu:.2f} | {extra} |"
        )
    for name, (seconds, cpu) in startup.items():
        print(f"Fixed cost of {name}: {seconds:.3f} s wall, {cpu:.3f} CPU s (a one-element request, best of 3)")
    for note in notes:
        print(f"Skipped: {note}")
    print("Every run's digest matched the server's and the fast path's (XXH3-128; 2b: SHA-256).")


def _protobuf_backend() -> str:
    from google.protobuf.internal import api_implementation

    return api_implementation.Type()


if __name__ == "__main__":
    main()
