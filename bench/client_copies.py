"""The client's cost of filling preallocated torch CPU tensors: through numpy and a copy, or in place.

    .venv/bin/python bench/client_copies.py [--mib 512] [--repeats 3]

A float32 model of `--mib` MiB in 4 tensors of equal size (random_normal), served by a weightgen
server subprocess from its block cache (one warm-up fetch first, so no timed fetch generates and
the server's CPU competes as little as possible with the client's on a small machine), fetched by
a fresh client subprocess per run into torch CPU tensors allocated and touched (zeroed) before the
clock starts, two ways:

- (a) copy: ``arrays = client.materialize(variables)`` and then ``tensor.copy_(torch.from_numpy(
  array))`` for each: what `materialize_module` did for real tensors before issue 13;
- (b) into: ``client.materialize_into(variables, tensors)``: the received bytes go from each gRPC
  message straight into the tensors' memory.

Both use the Client's defaults (largest chunk, XXH3-128 digest verified). Per run: the client's CPU
seconds (user + system, every thread: `time.process_time` around the fetch and copy) per GiB, and
its peak RSS above what it held before the fetch (Linux: VmHWM after resetting it through
/proc/self/clear_refs). The runs alternate (a, b, a, b, ...); each figure is the best of
`--repeats`, and the ratios are against (a) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serverproc import launch  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
SEED = 1234
TENSORS = 4


def shapes(mib: int) -> list[tuple[int, int]]:
    rows = mib * MiB // 4 // TENSORS // 4096
    return [(rows, 4096)] * TENSORS


def variables(mib: int) -> list:
    from weightgen.client import Variable

    return [Variable(f"layer{i}.weight", shape, "random_normal") for i, shape in enumerate(shapes(mib))]


def _status(field: str) -> int:
    """A VmXXX line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(address: str, way: str, mib: int) -> None:
    """One fetch in this fresh process; prints {cpu, wall, peak, nbytes} as JSON."""
    import numpy as np
    import torch

    from weightgen.client import Client

    specs = variables(mib)
    tensors = {v.name: torch.zeros(tuple(v.shape), dtype=torch.float32) for v in specs}  # touched: resident
    with Client(address, timeout=600) as client:
        client.materialize(specs[:1], seed=SEED)  # the channel up, imports done, outside the count
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        rss = _status("VmRSS")
        cpu, wall = time.process_time(), time.perf_counter()
        if way == "copy":
            arrays = client.materialize(specs, seed=SEED)
            with torch.no_grad():
                for name, array in arrays.items():
                    tensors[name].copy_(torch.from_numpy(array))
            del arrays
        else:
            client.materialize_into(specs, tensors, seed=SEED)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak = _status("VmHWM") - rss
        check = client.materialize(specs[-1:], seed=SEED)[specs[-1].name]
    assert np.array_equal(tensors[specs[-1].name].numpy(), check), "the tensors do not hold the fetched values"
    nbytes = sum(t.nbytes for t in tensors.values())
    print(json.dumps({"cpu": cpu, "wall": wall, "peak": peak, "nbytes": nbytes}))


def run(address: str, way: str, mib: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", way, "--address", address, "--mib", str(mib)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=("copy", "into"), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.address, args.worker, args.mib)
        return

    import jax
    import numpy as np
    import torch

    from weightgen.client import Client

    load = os.getloadavg()[0]
    nbytes = args.mib * MiB
    workdir = Path(tempfile.mkdtemp(prefix="weightgen-client-copies-"))
    server = launch(
        workdir,
        *("--devices", "auto", "--warm-precisions", "float32", "--cache-bytes", str(2 * nbytes)),
        cache_dir=workdir / "xla-cache",
    )
    results: dict[str, list[dict]] = {"copy": [], "into": []}
    try:
        with Client(server.address, timeout=600) as client:
            client.materialize(variables(args.mib), seed=SEED)  # warm-up: the block cache holds the model
        for _ in range(args.repeats):
            for way, runs in results.items():
                runs.append(run(server.address, way, args.mib))
    finally:
        server.stop()

    print(
        f"jax {jax.__version__}, torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"1-minute load average {load:.2f} at the start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"Command: .venv/bin/python bench/client_copies.py --mib {args.mib} --repeats {args.repeats}")
    print(f"Model: {TENSORS} x float32 {list(shapes(args.mib)[0])} = {nbytes / GiB:.3f} GiB, from the block cache")
    print(f"{'way':<6} {'CPU s/GiB':>10} {'vs copy':>8} {'peak RSS MiB':>13} {'vs copy':>8} {'wall s':>7}")
    best = {way: min(runs, key=lambda r: r["cpu"]) for way, runs in results.items()}
    peaks = {way: min(r["peak"] for r in runs) for way, runs in results.items()}
    for way, runs in results.items():
        cpu = best[way]["cpu"] / (best[way]["nbytes"] / GiB)
        base = best["copy"]["cpu"] / (best["copy"]["nbytes"] / GiB)
        wall = min(r["wall"] for r in runs)
        print(
            f"{way:<6} {cpu:>10.3f} {cpu / base:>7.2f}x {peaks[way] / MiB:>13.0f} "
            f"{peaks[way] / max(peaks['copy'], 1):>7.2f}x {wall:>7.2f}"
        )
    print("every run (CPU s, peak MiB):")
    for way, runs in results.items():
        print(f"  {way}: " + ", ".join(f"{r['cpu']:.2f} s / {r['peak'] / MiB:.0f}" for r in runs))


if __name__ == "__main__":
    main()
