"""Peak resident memory while streaming one large float32 tensor: flat, whatever the tensor's size.

    .venv/bin/python bench/peak_memory.py [--sizes 256M,1G]

For each size (elements; default 256M = 1 GiB and 1G = 4 GiB of float32) a fresh subprocess
builds an Engine (one CPU device per core), warms it (``engine.warm()`` plus a 4M-element stream),
records its idle RSS, resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``), then
streams the tensor (random_normal, stddev 1) through ``engine.stream``, feeding each piece to a
SHA-256 and dropping it. A background thread samples VmRSS from /proc/self/status every 50 ms;
VmHWM is read at the end. Peak = the larger of the two; growth = peak - idle. Goal (issue): growth
bounded by the pipeline's lookahead, not proportional to the tensor.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time

from weightgen.server.engine import Engine, Initializer, VariableSpec, WorkerPool, configure_host_devices, kernels

MiB = 1 << 20
SAMPLE_S = 0.05
FLAT_SLACK_MIB = 64


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_high_water_mark() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kib = max(self.peak_kib, status_kib("VmRSS"))
            self.samples += 1
            self._halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def child(n: int) -> None:
    configure_host_devices()
    import gc

    engine = Engine(WorkerPool(cache_bytes=0))  # no block cache: every pass generates
    engine.warm(("float32",))
    normal = Initializer("random_normal", {"stddev": 1.0})
    for _ in engine.stream(engine.prepare(VariableSpec("warm-up", (4 * MiB,), "float32", normal), seed=1)):
        pass
    side = math.isqrt(n)
    shape = (side, n // side) if side * (n // side) == n else (n,)
    prepared = engine.prepare(VariableSpec("big/kernel", shape, "float32", normal), seed=42)
    gc.collect()
    time.sleep(0.2)
    idle = status_kib("VmRSS")
    reset = reset_high_water_mark()
    sampler = Sampler()
    sampler.start()
    digest = hashlib.sha256()
    total = 0
    t = time.perf_counter()
    for values in engine.stream(prepared):
        digest.update(values.data)
        total += values.size
    seconds = time.perf_counter() - t
    sampler.stop()
    assert total == n
    record = {
        "elements": n,
        "shape": shape,
        "idle_kib": idle,
        "sampled_peak_kib": sampler.peak_kib,
        "hwm_kib": status_kib("VmHWM"),
        "hwm_reset": reset,
        "samples": sampler.samples,
        "seconds": seconds,
        "sha256": digest.hexdigest(),
        "lookahead": engine.lookahead,
        "devices": len(engine.pool.devices),
    }
    engine.close()
    print(json.dumps(record))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def cpus_and_load() -> str:
    return f"{os.cpu_count()} CPUs (1-minute load average {os.getloadavg()[0]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256M,1G", help="comma-separated element counts (K, M, G suffixes)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    import jax

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    print(f"weightgen peak memory, {datetime.date.today().isoformat()}")
    print(f"jax {jax.__version__}, python {platform.python_version()}, {cpus_and_load()}")
    records = []
    for n in sizes:
        command = [sys.executable, __file__, "--child", str(n)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
    r0 = records[0]
    piece = kernels.CALL_ELEMENTS * 4 / MiB
    print(
        f"engine: {r0['devices']} CPU devices, lookahead {r0['lookahead']} pieces of up to {piece:.0f} MiB "
        f"(= {r0['lookahead'] * piece:.0f} MiB of values in flight); random_normal float32; "
        f"RSS sampled every {SAMPLE_S * 1000:.0f} ms; VmHWM {'reset after warm-up' if r0['hwm_reset'] else 'NOT reset'}"
    )
    print()
    header = ("tensor", "shape", "GiB", "seconds", "GB/s", "idle MiB", "sampled peak", "VmHWM", "peak - idle MiB")
    widths = (8, 14, 5, 8, 5, 9, 13, 8, 16)
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in records:
        n = r["elements"]
        peak = max(r["sampled_peak_kib"], r["hwm_kib"])
        cells = (
            f"{n // MiB}M",
            "x".join(map(str, r["shape"])),
            f"{4 * n / (1 << 30):.2f}",
            f"{r['seconds']:.1f}",
            f"{4 * n / r['seconds'] / 1e9:.2f}",
            f"{r['idle_kib'] / 1024:.0f}",
            f"{r['sampled_peak_kib'] / 1024:.0f}",
            f"{r['hwm_kib'] / 1024:.0f}",
            f"{(peak - r['idle_kib']) / 1024:.0f}",
        )
        print("  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print()
    growth = [(max(r["sampled_peak_kib"], r["hwm_kib"]) - r["idle_kib"]) / 1024 for r in records]
    ratio = (records[-1]["elements"] / records[0]["elements"]) if len(records) > 1 else 1
    largest = 4 * records[-1]["elements"] / MiB
    flat = growth[-1] <= growth[0] + FLAT_SLACK_MIB and growth[-1] <= 0.05 * largest
    print(
        f"tensor grows {ratio:.0f}x; peak - idle goes from {growth[0]:.0f} to {growth[-1]:.0f} MiB "
        f"({100 * growth[-1] / largest:.1f}% of the largest tensor)"
    )
    print(
        f"goal (flat: growth at the largest size within {FLAT_SLACK_MIB} MiB of the smallest's, "
        f"and under 5% of the tensor): {'met' if flat else 'NOT met'}"
    )
    for r in records:
        print(f"sha256 of the {r['elements'] // MiB}M tensor: {r['sha256']}")


if __name__ == "__main__":
    main()
