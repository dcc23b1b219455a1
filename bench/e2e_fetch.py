"""End-to-end fetch of 1 GiB of float32 into numpy, against in-process generation and the bare wire.

    .venv/bin/python bench/e2e_fetch.py [--repeats 3] [--mib 1024]

Four ways to get the same tensor (random_normal, float32, [16384, 16384] = 1 GiB) into a
preallocated numpy buffer, each the best of `--repeats` runs, for chunk sizes 256 KiB, 1 MiB and
the largest (4 MiB - 4 KiB, so a chunk with its framing fits gRPC's default 4 MiB message limit):

- e2e: a weightgen server subprocess (``--devices auto``: one CPU device per core, warm, XLA
  compilation cache in a temporary directory, block cache and digest cache off so that every run
  generates and hashes) and this process as the client on the fast path: a grpc channel's
  ``unary_stream(..., response_deserializer=None)``, `wire.decode_chunk` on each message, its data copied into the
  buffer at its offset, asking for `--digest` (default XXH3-128, the Client's). The bytes are
  checked once per chunk size, after the timed runs, against the stream's digest and the in-process
  engine's SHA-256.
- client: ``weightgen.client.Client(chunk_bytes=...).materialize(request)`` (its defaults: XXH3-128
  digest, verified), when that package is importable and works; skipped otherwise.
- in-process: the same kernels without gRPC: a subprocess configured like the server
  (``configure_host_devices()``, warm `Engine`) copying ``engine.stream(prepared)`` into a buffer.
- raw wire: a bare grpc.aio server subprocess (identity serializers, no compression, glibc malloc
  tuned as the server does) streaming ready-made bytes as TensorChunks of the same chunk size
  (``wire.encode_chunk`` of one preallocated payload per chunk), received exactly like e2e: the
  wire's own ceiling on this machine, with no generation at all.

GB/s counts tensor bytes (1e9 per GB). Besides wall time, each fastest run's CPU seconds (user +
system, every thread, from /proc/<pid>/stat and `time.process_time`) per GiB show where the time
goes, which the wall time alone cannot on a machine shared with other work.
Goals: e2e >= 0.8x in-process (an earlier issue); issue 13's first fetch: the default Client's
server + client CPU seconds per GiB <= the in-process engine's + 1.15x the bare wire's (server +
client), i.e. integrity and framing add at most 15% to what moving the bytes costs.

    .venv/bin/python bench/e2e_fetch.py --cached [--mib 96] [--repeats 5]

`--cached` measures the fetch that does no generation instead: the server keeps the tensor in its
block cache (and its digests on its digest board) after one warm-up fetch per digest algorithm, and
`Client.materialize` with its defaults (XXH3-128 digest, verified, the largest chunk) is compared
with the bare wire for the same bytes and chunk size; also SHA-256 (the default before XXH3-128) and
XXH3-128 unverified. Goal (issue 13): the default client >= 0.9x the bare wire.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serverproc import launch  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
CHUNKS = (256 * KiB, MiB, wire.MAX_CHUNK_BYTES)
MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
RAW = "/bench.Raw/Stream"
GOAL = 0.8
CACHED_GOAL = 0.9
FIRST_FETCH_GOAL = 1.15
SEED = 1234


def shape_for(mib: int) -> tuple[int, int]:
    elements = mib * MiB // 4
    return (elements // 16384, 16384) if elements >= 16384 else (1, elements)


def request(shape: tuple[int, int], chunk_bytes: int, digest: str | None = None) -> pb.MaterializeRequest:
    """The bench's request; `digest` None names no algorithm (the server's default is SHA-256; a
    `Client` fills in its own)."""
    variable = pb.VariableSpec(
        name="bench/w", shape=shape, initializer=pb.Initializer(random_normal=pb.RandomNormal(stddev=1.0))
    )
    request = pb.MaterializeRequest(seed=SEED, variables=[variable], chunk_bytes=chunk_bytes)
    if digest is not None:
        request.digest_algorithm = wire.digest_enum(digest)
    return request


def receive(call, buffer: memoryview) -> tuple[int, bytes]:
    """Copies every chunk's data into `buffer` at its offset; returns (bytes received, digest)."""
    received, digest = 0, b""
    for raw in call:
        chunk = wire.decode_chunk(raw)
        n = len(chunk.data)
        buffer[chunk.offset : chunk.offset + n] = chunk.data
        received += n
        if chunk.last:
            digest = chunk.digest
    return received, digest


def best_of(repeats: int, run):
    """The fastest of `repeats` runs; a run returns a tuple whose first item is its seconds."""
    return min((run() for _ in range(repeats)), key=lambda r: r[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(server_pid: int, work) -> tuple[float, float, float]:
    """(seconds, server CPU seconds, this process's CPU seconds) of `work()`."""
    server0, client0, t = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    work()
    seconds = time.perf_counter() - t
    return seconds, cpu_seconds(server_pid) - server0, time.process_time() - client0


# -- the in-process engine (a subprocess, so its devices are the server's) ---------------------------


def in_process(mib: int, repeats: int, cache_dir: str) -> None:
    from weightgen.server.engine import Engine, Initializer, VariableSpec, configure_host_devices

    configure_host_devices()
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    engine = Engine()
    engine.warm(("float32",))
    spec = VariableSpec("bench/w", shape_for(mib), "float32", Initializer("random_normal", {"stddev": 1.0}))
    out = np.empty(mib * MiB // 4, np.float32)

    def run() -> tuple[float, float]:
        t, cpu = time.perf_counter(), time.process_time()
        prepared = engine.prepare(spec, seed=SEED)
        at = 0
        for values in engine.stream(prepared):
            out[at : at + values.size] = values
            at += values.size
        assert at == out.size
        return time.perf_counter() - t, time.process_time() - cpu

    seconds, cpu = best_of(repeats, run)
    digest = hashlib.sha256(out.view(np.uint8)).hexdigest()
    print(json.dumps({"seconds": seconds, "cpu": cpu, "devices": len(engine.pool.devices), "digest": digest}))


# -- the bare wire ----------------------------------------------------------------------------------


def raw_server(port_file: str) -> None:
    from weightgen.server.__main__ import tune_malloc

    tune_malloc()
    payload = np.random.default_rng(0).bytes(wire.MAX_CHUNK_BYTES)
    info = pb.TensorInfo(name="raw", digest_algorithm="sha256").SerializeToString()

    async def stream(request: bytes, context):
        spec = json.loads(request)
        total, size = spec["total"], spec["chunk_bytes"]
        view = memoryview(payload)
        for offset in range(0, total, size):
            n = min(size, total - offset)
            last = offset + n >= total
            yield wire.encode_chunk(
                0, offset, view[:n], info=info if offset == 0 else b"", last=last, digest=b"\0" * 32 if last else b""
            )

    async def main() -> None:
        server = grpc.aio.server(
            options=[("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)],
            compression=grpc.Compression.NoCompression,
        )
        handler = grpc.unary_stream_rpc_method_handler(stream, request_deserializer=None, response_serializer=None)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Raw", {"Stream": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


def stop_servers(server, raw_proc: subprocess.Popen) -> None:
    """Stop the bare wire and the weightgen server (its log's tail to stderr if it failed)."""
    raw_proc.terminate()
    raw_proc.wait(30)
    if server.stop() != 0:
        print(server.log()[-4000:], file=sys.stderr)


def start_raw(workdir: Path) -> tuple[subprocess.Popen, int]:
    port_file = workdir / "raw-port"
    proc = subprocess.Popen([sys.executable, __file__, "--raw-server", str(port_file)])
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the raw grpc server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


# -- the report -------------------------------------------------------------------------------------


def label(chunk_bytes: int) -> str:
    return f"{chunk_bytes // KiB} KiB" if chunk_bytes % MiB else f"{chunk_bytes // MiB} MiB"


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def try_client(
    address: str, server_pid: int, shape, chunk_bytes: int, repeats: int, nbytes: int
) -> tuple[tuple[float, float, float] | None, str]:
    """The default `Client` (XXH3-128, verified): (seconds, server CPU, client CPU) of its fastest run."""
    try:
        from weightgen.client import Client
    except Exception as error:  # being written concurrently: optional
        return None, f"weightgen.client unavailable ({type(error).__name__}: {error})"
    try:
        with Client(address, chunk_bytes=chunk_bytes, timeout=600) as client:

            def run() -> None:
                arrays = client.materialize(request(shape, chunk_bytes))
                (array,) = arrays.values()
                assert array.nbytes == nbytes

            return best_of(repeats, lambda: timed(server_pid, run)), "Client.materialize (XXH3-128 verified)"
    except Exception as error:
        return None, f"Client.materialize failed: {type(error).__name__}: {error}"


def cached(mib: int, repeats: int, server_args: list[str]) -> None:
    """The generation-free fetch (issue 13, goal 1): the default Client against the bare wire."""
    from weightgen.client import Client

    nbytes = mib * MiB
    shape = shape_for(mib)
    chunk_bytes = wire.MAX_CHUNK_BYTES  # the Client's default
    workdir = Path(tempfile.mkdtemp(prefix="weightgen-e2e-cached-"))
    server = launch(
        workdir / "server",
        *("--devices", "auto", "--warm-precisions", "float32", "--cache-bytes", str(4 * nbytes)),
        *server_args,
        cache_dir=workdir / "xla-cache",
    )
    chunk_cache = server.metric("weightgen_chunk_cache_max_bytes")  # keeps the tensor's messages if >= 2x
    raw_proc, raw_port = start_raw(workdir)
    buffer = np.empty(nbytes, np.uint8)
    view = memoryview(buffer)
    variants = {
        "Client() default: xxh3_128, verified": {},
        "Client(digest='sha256'), verified": {"digest": "sha256"},
        "Client(verify=False): xxh3_128 unverified": {"verify": False},
        "Client(digest='none')": {"digest": "none"},
    }
    times: dict[str, list[float]] = {"bare wire": [], **{name: [] for name in variants}}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in times}  # (server, client) CPU seconds
    clients = {name: Client(server.address, timeout=600, **kwargs) for name, kwargs in variants.items()}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{raw_port}") as raw:
            stream = raw.unary_stream(RAW, request_serializer=None, response_deserializer=None)

            def bare() -> float:
                t = time.perf_counter()
                got, _ = receive(stream(json.dumps({"total": nbytes, "chunk_bytes": chunk_bytes}).encode()), view)
                assert got == nbytes
                return time.perf_counter() - t

            def fetch(client: Client) -> tuple[float, np.ndarray]:
                t = time.perf_counter()
                (array,) = client.materialize(request(shape, 0)).values()
                return time.perf_counter() - t, array

            bare()
            reference = None
            for name, client in clients.items():  # warm-up: the block cache and each algorithm's digest
                _, array = fetch(client)
                digest = hashlib.sha256(array.view(np.uint8)).digest()
                assert reference is None or digest == reference, f"{name}: different bytes"
                reference = digest
            hits, misses = server.metric("weightgen_cache_hits_total"), server.metric("weightgen_cache_misses_total")
            shared_before = server.metric("weightgen_chunks_shared_total")
            # Interleaved, so that every variant sees the same load on a shared machine.
            for _ in range(repeats):
                seconds, server_cpu, client_cpu = timed(raw_proc.pid, lambda: times["bare wire"].append(bare()))
                cpu["bare wire"].append((server_cpu, client_cpu))
                for name, client in clients.items():
                    _, server_cpu, client_cpu = timed(
                        server.proc.pid, lambda name=name, client=client: times[name].append(fetch(client)[0])
                    )
                    cpu[name].append((server_cpu, client_cpu))
            assert server.metric("weightgen_cache_misses_total") == misses, "a timed fetch generated"
            served = server.metric("weightgen_cache_hits_total") - hits
            shared = server.metric("weightgen_chunks_shared_total") - shared_before
            assert served or shared, "the timed fetches found nothing in the caches"
        results = {name: min(seconds) for name, seconds in times.items()}
        medians = {name: float(np.median(seconds)) for name, seconds in times.items()}
    finally:
        for client in clients.values():
            client.close()
        stop_servers(server, raw_proc)
    wire_gbps = gbps(nbytes, results["bare wire"])
    wire_median = gbps(nbytes, medians["bare wire"])
    extra = f" --server-args '{' '.join(server_args)}'" if server_args else ""
    print(f"Command: .venv/bin/python bench/e2e_fetch.py --cached --mib {mib} --repeats {repeats}{extra}")
    print(
        f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_version()}; 1-minute load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"Tensor: random_normal float32 {list(shape)} ({nbytes / 1e9:.3f} GB) from the server's caches "
        f"(chunk cache {chunk_cache / 2**20:.0f} MiB: {'messages' if chunk_cache >= 2 * nbytes else 'blocks'}); "
        f"chunk {label(chunk_bytes)}; {repeats} interleaved runs of each; the timed fetches took {served:.0f} kernel "
        f"calls from the block cache and {shared:.0f} ready-made messages from the chunk cache"
    )
    print()
    print("| fetch | best GB/s | best / bare wire | median GB/s | median / bare wire | CPU s/GiB server | client |")
    print("|---|---|---|---|---|---|---|")
    gib = nbytes / 2**30
    for name, seconds in results.items():
        best, median = gbps(nbytes, seconds), gbps(nbytes, medians[name])
        server_cpu, client_cpu = (float(np.median(column)) / gib for column in zip(*cpu[name], strict=True))
        print(
            f"| {name} | {best:.3f} | {best / wire_gbps:.2f}x | {median:.3f} | {median / wire_median:.2f}x "
            f"| {server_cpu:.2f} | {client_cpu:.2f} |"
        )
    ratio = gbps(nbytes, results["Client() default: xxh3_128, verified"]) / wire_gbps
    print()
    print(
        f"Goal default Client >= {CACHED_GOAL}x the bare wire: {ratio:.2f}x, "
        f"{'met' if ratio >= CACHED_GOAL else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024, help="tensor size in MiB (float32)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raw-server", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help="the generation-free fetch against the bare wire")
    parser.add_argument(
        "--digest", default="xxh3_128", help="the digest the fast path asks for (default: the Client's)"
    )
    parser.add_argument("--server-args", default="", help="--cached: more server flags, e.g. '--chunk-cache-bytes 0'")
    args = parser.parse_args()
    if args.cached:
        return cached(args.mib if args.mib != 1024 else 96, args.repeats, args.server_args.split())
    if args.in_process:
        return in_process(args.mib, args.repeats, args.cache_dir)
    if args.raw_server:
        return raw_server(args.raw_server)

    nbytes = args.mib * MiB
    shape = shape_for(args.mib)
    workdir = Path(tempfile.mkdtemp(prefix="weightgen-e2e-"))
    cache = workdir / "xla-cache"
    # Every run generates and hashes: --cache-bytes 0, --digest-cache-entries 0 and --chunk-cache-bytes 0
    # (the caches serve herds and repeats of identical requests, which this is not meant to be).
    server = launch(
        workdir / "server",
        *("--devices", "auto", "--warm-precisions", "float32", "--cache-bytes", "0", "--digest-cache-entries", "0"),
        *("--chunk-cache-bytes", "0"),
        cache_dir=cache,
    )
    raw_proc, raw_port = start_raw(workdir)
    rows, notes = [], []
    buffer = np.empty(nbytes, np.uint8)
    view = memoryview(buffer)
    try:
        engine_run = subprocess.run(
            [
                sys.executable,
                __file__,
                "--in-process",
                "--mib",
                str(args.mib),
                "--repeats",
                str(args.repeats),
                "--cache-dir",
                str(cache),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
        )
        engine = json.loads(engine_run.stdout.strip().splitlines()[-1])
        print(f"in-process engine ({engine['devices']} devices): {gbps(nbytes, engine['seconds']):.3f} GB/s")
        with grpc.insecure_channel(server.address) as channel, grpc.insecure_channel(f"127.0.0.1:{raw_port}") as raw:
            materialize = channel.unary_stream(
                MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString, response_deserializer=None
            )
            stream = raw.unary_stream(RAW, request_serializer=None, response_deserializer=None)
            for chunk_bytes in CHUNKS:
                message = request(shape, chunk_bytes, args.digest)

                def e2e(message=message) -> None:
                    got, digest = receive(materialize(message, timeout=600), view)
                    assert got == nbytes, got
                    e2e.digest = digest

                def bare(chunk_bytes=chunk_bytes) -> None:
                    got, _ = receive(stream(json.dumps({"total": nbytes, "chunk_bytes": chunk_bytes}).encode()), view)
                    assert got == nbytes

                fetched = best_of(args.repeats, lambda e2e=e2e: timed(server.proc.pid, e2e))
                hasher = wire.new_digest(args.digest)
                if hasher is not None:
                    hasher.update(buffer)
                    assert hasher.digest() == e2e.digest, "digest mismatch"
                received = hashlib.sha256(buffer).digest()
                assert received.hex() == engine["digest"], "the server's bytes differ from the in-process engine's"
                wire_seconds = best_of(args.repeats, lambda bare=bare: timed(raw_proc.pid, bare))
                client_run, note = try_client(server.address, server.proc.pid, shape, chunk_bytes, args.repeats, nbytes)
                client_seconds = client_run[0] if client_run else None
                if note not in notes:
                    notes.append(note)
                rows.append((chunk_bytes, fetched, client_run, wire_seconds))
                line = f"chunk {chunk_bytes:>8}: e2e {gbps(nbytes, fetched[0]):.3f} GB/s"
                line += f", wire {gbps(nbytes, wire_seconds[0]):.3f}"
                if client_seconds:
                    line += f", client {gbps(nbytes, client_seconds):.3f}"
                print(line, flush=True)
    finally:
        stop_servers(server, raw_proc)

    in_gbps = gbps(nbytes, engine["seconds"])
    print()
    print(
        f"Command: .venv/bin/python bench/e2e_fetch.py --repeats {args.repeats} --mib {args.mib} --digest {args.digest}"
    )
    print(
        f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_version()}; server and in-process engine: {engine['devices']} CPU devices; "
        f"1-minute load average at the end {os.getloadavg()[0]:.1f} (the machine is shared)"
    )
    print(f"Tensor: random_normal float32 {list(shape)} ({nbytes / 1e9:.3f} GB); best of {args.repeats}")
    print(f"In-process engine: {engine['seconds']:.3f} s, {in_gbps:.3f} GB/s")
    print()
    print("| chunk | e2e GB/s | e2e / in-process | Client GB/s | raw wire GB/s | e2e / wire |")
    print("|---|---|---|---|---|---|")
    for chunk_bytes, fetched, client_run, wire_seconds in rows:
        e, w = gbps(nbytes, fetched[0]), gbps(nbytes, wire_seconds[0])
        c = f"{gbps(nbytes, client_run[0]):.3f}" if client_run else "n/a"
        print(f"| {label(chunk_bytes)} | {e:.3f} | {e / in_gbps:.2f}x | {c} | {w:.3f} | {e / w:.2f}x |")
    gib = nbytes / 2**30
    print()
    print(f"CPU seconds per GiB (all threads; the machine has {os.cpu_count()} cores), of the fastest run:")
    print()
    print(
        "| chunk | in-process engine | e2e server | e2e client | e2e total | Client: server | Client: client "
        "| Client total | raw wire server | raw wire client |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    goals = []
    for chunk_bytes, fetched, client_run, wire_seconds in rows:
        _, server_cpu, client_cpu = fetched
        wire_cpu = (wire_seconds[1] + wire_seconds[2]) / gib
        bound = engine["cpu"] / gib + FIRST_FETCH_GOAL * wire_cpu
        if client_run:
            client_total = (client_run[1] + client_run[2]) / gib
            goals.append((chunk_bytes, client_total, bound))
            client_cells = f"{client_run[1] / gib:.2f} | {client_run[2] / gib:.2f} | {client_total:.2f}"
        else:
            client_cells = "n/a | n/a | n/a"
        print(
            f"| {label(chunk_bytes)} | {engine['cpu'] / gib:.2f} | {server_cpu / gib:.2f} | {client_cpu / gib:.2f} "
            f"| {(server_cpu + client_cpu) / gib:.2f} | {client_cells} "
            f"| {wire_seconds[1] / gib:.2f} | {wire_seconds[2] / gib:.2f} |"
        )
    best = max(gbps(nbytes, r[1][0]) for r in rows) / in_gbps
    print()
    print(f"Goal e2e >= {GOAL}x in-process: best {best:.2f}x, {'met' if best >= GOAL else 'NOT met'}")
    for chunk_bytes, client_total, bound in goals:
        print(
            f"Goal (issue 13) first fetch, {label(chunk_bytes)}: the default Client's server + client CPU "
            f"{client_total:.2f} s/GiB <= in-process + {FIRST_FETCH_GOAL}x the bare wire's = {bound:.2f}: "
            f"{'met' if client_total <= bound else 'NOT met'} ({client_total / bound:.2f}x the bound)"
        )
    for note in notes:
        print(f"Client: {note}")


if __name__ == "__main__":
    main()
