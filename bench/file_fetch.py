"""Fetch to a file against the same fetch into memory (issue 13, goal 4).

    .venv/bin/python bench/file_fetch.py [--repeats 5] [--cached-repeats 8]

One weightgen server subprocess (``--devices auto``, warm, block cache ``--cache-bytes`` 3x the model)
and a model of 1 GiB of float32 in four tensors (``random_normal`` and ``he_normal``), fetched three
ways with the client's defaults (largest chunk, XXH3-128 digest, verified):

- memory: ``Client().materialize(request)``, the baseline;
- file: ``Client().materialize_to_file(request, path)`` into a temporary directory under the
  repository's ``build/`` (the page cache; nothing is fsynced);
- CLI: the ``weightgen fetch SPEC.json -o path --no-progress`` command, a whole process (its Python
  start-up and imports included; also measured alone on a one-element spec).

Two phases, each with the three ways interleaved, in a new seeded random order every repeat, so that each sees
the same load on a shared machine:

- generating: every fetch has a seed of its own, so the server generates and hashes every byte
  (nothing is in its block cache or on its digest board);
- cached: every fetch has the same seed, fetched once before the timed runs, so the server serves
  it from its block cache and digest board (no generation; asserted with its cache metrics).

Reported: wall GB/s (1e9 bytes), best and median; file / memory ratios of the best and of the
medians; client CPU seconds per GiB (user + system of this process for memory and file, of the
child for the CLI, from its resource usage) and the server's. Outside the timing, the files of the
last repeat are read back (the project's reader, `weightgen.client.files.iter_tensors`) and
compared tensor by tensor, byte for byte, with an in-memory fetch of the same seed.
Goal (issue 13): file and CLI >= 0.8x memory.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from weightgen.client import Client
from weightgen.client.files import iter_tensors, read_manifest
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serverproc import launch  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
GOAL = 0.8
WEIGHTGEN = str(Path(sys.executable).with_name("weightgen"))
# 1 GiB of float32 in four tensors.
MODEL = [
    ("embed", (16384, 4096), pb.Initializer(random_normal=pb.RandomNormal(stddev=0.02))),
    ("mlp/up", (4096, 16384), pb.Initializer(he_normal=pb.HeNormal())),
    ("mlp/down", (16384, 4096), pb.Initializer(he_normal=pb.HeNormal())),
    ("head", (4096, 16384), pb.Initializer(random_normal=pb.RandomNormal(stddev=0.02))),
]
NBYTES = sum(int(np.prod(shape)) * 4 for _, shape, _ in MODEL)
WAYS = ("memory", "file", "CLI")


def request(seed: int) -> pb.MaterializeRequest:
    variables = [
        pb.VariableSpec(name=name, shape=shape, dtype=pb.DTYPE_FLOAT32, initializer=init) for name, shape, init in MODEL
    ]
    return pb.MaterializeRequest(seed=seed, variables=variables)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(spec: Path, out: Path, address: str) -> tuple[float, int]:
    """Runs ``weightgen fetch``; returns the child's CPU seconds (user + system) and its minor page faults."""
    args = [WEIGHTGEN, "fetch", str(spec), "-o", str(out), "--no-progress", "--server", address]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"weightgen fetch failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


class Bench:
    def __init__(self, address: str, server_pid: int, workdir: Path):
        self.client = Client(address, timeout=600)
        self.address = address
        self.server_pid = server_pid
        self.workdir = workdir
        self.spec_dir = workdir / "specs"
        self.spec_dir.mkdir()

    def spec(self, seed: int) -> Path:
        path = self.spec_dir / f"seed-{seed}.json"
        if not path.exists():
            path.write_text(json_format.MessageToJson(request(seed)))
        return path

    def fetch(self, way: str, seed: int, out: Path) -> tuple[float, float, float, int]:
        """(seconds, client CPU seconds, server CPU seconds, client minor page faults) of one fetch."""
        if out.exists():
            out.unlink()  # outside the timing
        spec = self.spec(seed) if way == "CLI" else None
        message = request(seed)
        server0, client0 = cpu_seconds(self.server_pid), time.process_time()
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        if way == "memory":
            arrays = self.client.materialize(message)
            assert sum(a.nbytes for a in arrays.values()) == NBYTES
        elif way == "file":
            self.client.materialize_to_file(message, out)
        else:
            child_cpu, child_faults = run_cli(spec, out, self.address)
        seconds = time.perf_counter() - t
        client_cpu = child_cpu if way == "CLI" else time.process_time() - client0
        faults = child_faults if way == "CLI" else resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        server_cpu = cpu_seconds(self.server_pid) - server0
        if way == "memory":
            del arrays
        return seconds, client_cpu, server_cpu, faults

    def phase(self, repeats: int, seeds) -> dict[str, list[tuple[float, float, float]]]:
        results: dict[str, list[tuple[float, float, float, int]]] = {way: [] for way in WAYS}
        shuffle = random.Random(13)
        for r in range(repeats):
            # A new order every repeat (seeded): no way always first, or always after the same one (in
            # stock_client.py the variant that always followed an example client's process paid for it).
            for way in shuffle.sample(WAYS, len(WAYS)):
                out = self.workdir / f"{way}.safetensors"
                results[way].append(self.fetch(way, seeds(r, way), out))
        return results

    def check(self, seeds: dict[str, int]) -> str:
        """Byte-for-byte: each file of the last repeat against an in-memory fetch of its seed."""
        lines = []
        for way in ("file", "CLI"):
            path = self.workdir / f"{way}.safetensors"
            arrays = self.client.materialize(request(seeds[way]))
            by_name = {tensor.name: view for tensor, view in iter_tensors(path)}
            assert set(by_name) == set(arrays), (way, sorted(by_name))
            for name, array in arrays.items():
                view = by_name[name]
                assert view.dtype == array.dtype and view.shape == array.shape, (way, name)
                assert np.array_equal(view.view(np.uint8), array.view(np.uint8)), f"{way}: {name} differs"
            manifest = read_manifest(path)
            assert manifest.digest_algorithm == wire.FAST_DIGEST, manifest.digest_algorithm
            lines.append(f"{way}: {len(arrays)} tensors byte-identical to memory (seed {seeds[way]})")
            del arrays, by_name
        return "; ".join(lines)


def cli_start_cost(bench: Bench) -> tuple[float, float]:
    """(best seconds, its CPU seconds) of ``weightgen fetch`` of one float32 element: the CLI's fixed cost."""
    tiny = pb.MaterializeRequest(
        seed=1, variables=[pb.VariableSpec(name="x", shape=[1], initializer=pb.Initializer(zeros=pb.Zeros()))]
    )
    spec = bench.workdir / "tiny.json"
    spec.write_text(json_format.MessageToJson(tiny))
    out = bench.workdir / "tiny.safetensors"
    runs = []
    for _ in range(3):
        if out.exists():
            out.unlink()
        t = time.perf_counter()
        cpu, _ = run_cli(spec, out, bench.address)
        runs.append((time.perf_counter() - t, cpu))
    return min(runs)


def report(title: str, results, gib: float) -> dict[str, float]:
    best = {way: min(r[0] for r in rows) for way, rows in results.items()}
    median = {way: float(np.median([r[0] for r in rows])) for way, rows in results.items()}
    print(f"### {title}")
    print()
    print("| fetch | best GB/s | best / mem | median GB/s | median / mem | CPU s/GiB client | server | faults/GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for way, rows in results.items():
        b, m = NBYTES / best[way] / 1e9, NBYTES / median[way] / 1e9
        client_cpu = float(np.median([r[1] for r in rows])) / gib
        server_cpu = float(np.median([r[2] for r in rows])) / gib
        faults = float(np.median([r[3] for r in rows])) / gib
        print(
            f"| {way} | {b:.3f} | {best['memory'] / best[way]:.2f}x | {m:.3f} | {median['memory'] / median[way]:.2f}x "
            f"| {client_cpu:.2f} | {server_cpu:.2f} | {faults:,.0f} |"
        )
    print()
    return {way: min(best["memory"] / best[way], median["memory"] / median[way]) for way in ("file", "CLI")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the generating phase")
    parser.add_argument("--cached-repeats", type=int, default=8, help="interleaved repeats of the cached phase")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    (ROOT / "build").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="file-fetch-", dir=ROOT / "build"))
    server = launch(
        workdir / "server",
        *("--devices", "auto", "--warm-precisions", "float32", "--cache-bytes", str(3 * NBYTES)),
        cache_dir=workdir / "xla-cache",
    )
    gib = NBYTES / GiB
    bench = Bench(server.address, server.proc.pid, workdir)
    try:
        print(
            f"Command: .venv/bin/python bench/file_fetch.py --repeats {args.repeats} "
            f"--cached-repeats {args.cached_repeats}"
        )
        print(
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}; 1-minute load average at the start "
            f"{load_start:.1f}"
        )
        print(
            f"Model: {len(MODEL)} float32 tensors, {NBYTES / 1e9:.3f} GB; chunk {wire.MAX_CHUNK_BYTES // 1024} KiB, "
            f"xxh3_128 verified; files in {workdir} ({shutil.disk_usage(workdir).free / 1e9:.0f} GB free), no fsync"
        )
        start_seconds, start_cpu = cli_start_cost(bench)
        print(
            f"CLI fixed cost (weightgen fetch of one element, best of 3): {start_seconds:.2f} s, {start_cpu:.2f} CPU s"
        )
        print()
        flush = sys.stdout.flush

        # Generating: a seed per fetch (1000 + 10 * repeat + way), so nothing comes from a cache.
        def fresh(r: int, way: str) -> int:
            return 1000 + 10 * r + WAYS.index(way)

        misses0 = server.metric("weightgen_cache_misses_total")
        generating = bench.phase(args.repeats, fresh)
        assert server.metric("weightgen_cache_misses_total") > misses0, "the generating phase did not generate"
        check_generating = bench.check({way: fresh(args.repeats - 1, way) for way in ("file", "CLI")})
        ratios_gen = report(f"Generating (a new seed per fetch), {args.repeats} interleaved repeats", generating, gib)
        flush()

        # Cached: one seed, fetched once before the timed runs.
        cached_seed = 7
        bench.client.materialize(request(cached_seed))
        misses = server.metric("weightgen_cache_misses_total")
        cached = bench.phase(args.cached_repeats, lambda r, way: cached_seed)
        assert server.metric("weightgen_cache_misses_total") == misses, "a cached fetch generated"
        check_cached = bench.check({"file": cached_seed, "CLI": cached_seed})
        ratios_cached = report(
            f"Cached (the same seed, from the block cache), {args.cached_repeats} interleaved repeats", cached, gib
        )
        print(f"Bytes (outside the timing): generating: {check_generating}")
        print(f"Bytes (outside the timing): cached: {check_cached}")
        print(f"1-minute load average at the end {os.getloadavg()[0]:.1f}")
        print()
        for phase, ratios in (("generating", ratios_gen), ("cached", ratios_cached)):
            for way, ratio in ratios.items():
                verdict = "met" if ratio >= GOAL else "NOT met"
                print(f"Goal {way} >= {GOAL}x memory ({phase}; lower of best, median): {ratio:.2f}x, {verdict}")
    finally:
        bench.client.close()
        code = server.stop()
        if code != 0:
            print(server.log()[-4000:], file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
