"""Generation throughput of the engine against a monolithic JAX call and numpy.

    .venv/bin/python bench/engine_throughput.py [--repeats N]

Engine: `Engine` on a `WorkerPool` over one CPU device per core (`configure_host_devices()`; block
cache off, so every repeat generates), warm, timing ``for values in engine.stream(prepared)`` to
host numpy arrays; each piece is consumed (a running sum of sizes) and dropped, nothing is
concatenated. JAX: ``jax.random.normal`` /
``jax.random.uniform`` on the whole shape, jitted and warm, ``np.asarray`` of the result included
(device to host), run in subprocesses with stock XLA flags (one CPU device, what a user of JAX gets),
so that running out of memory or time is reported instead of crashing this script; its speed varies
from one process to the next, so it is the best over three processes. numpy:
``np.random.default_rng(0).standard_normal(n, dtype=np.float32)`` / ``.random(n, dtype=np.float32)``
(PCG64, one thread). GB/s counts output bytes (1e9); every figure is the best of several repeats,
all measured in this run. Goal (issue): engine >= 1.5x the JAX call and >= 1.0x numpy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

from weightgen.server.engine import Engine, Initializer, VariableSpec, WorkerPool, configure_host_devices

M = 1 << 20
SIZES = (16 * M, 256 * M)
INITIALIZERS = {
    "normal": Initializer("random_normal", {"stddev": 1.0}),
    "uniform": Initializer("random_uniform", {}),
}
INFORMATIONAL = ("float64", "bfloat16", "complex64")
JAX_TIMEOUT_S = 300
JAX_PROCESSES = 3  # the JAX call's speed varies from process to process here (0.13 vs 0.2 s at 16M): best of 3
GOAL_VS_JAX, GOAL_VS_NUMPY = 1.5, 1.0


def best_of(repeats: int, fn) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# -- the JAX baseline, in its own process -----------------------------------------------------


def jax_child(family: str, n: int, repeats: int) -> None:
    """Prints {"seconds": best} or {"error": ...} for one monolithic jax.random call."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", False)  # JAX's default; importing the engine (above) enabled it
    draw = jax.random.normal if family == "normal" else jax.random.uniform
    fn = jax.jit(lambda key: draw(key, (n,), jnp.float32))
    key = jax.random.PRNGKey(0)
    try:
        values = np.asarray(fn(key))  # compile and warm
        del values

        def once() -> None:
            values = np.asarray(fn(key))
            assert values.size == n

        print(json.dumps({"seconds": best_of(repeats, once)}))
    except Exception as e:  # out of device memory and the like: report, do not crash
        print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}))


def jax_baseline(family: str, n: int, repeats: int, env: dict[str, str]) -> tuple[float | None, str]:
    """(best seconds, "") or (None, why) for the monolithic JAX call, over `JAX_PROCESSES` subprocesses."""
    results = [jax_process(family, n, repeats, env) for _ in range(JAX_PROCESSES)]
    times = [seconds for seconds, _ in results if seconds is not None]
    if times:
        return min(times), ""
    return None, results[0][1]


def jax_process(family: str, n: int, repeats: int, env: dict[str, str]) -> tuple[float | None, str]:
    """(seconds, "") or (None, why) for the monolithic JAX call, measured in one subprocess."""
    command = [sys.executable, __file__, "--jax-child", family, str(n), str(repeats)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JAX_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, f"took longer than {JAX_TIMEOUT_S} s"
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit {done.returncode}"
        tail = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
        return None, why + (f": {tail[0][:120]}" if tail else "")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        return None, result["error"]
    return result["seconds"], ""


# -- the engine and numpy -----------------------------------------------------------------------


def engine_seconds(engine: Engine, initializer: Initializer, dtype: str, n: int, repeats: int) -> float:
    prepared = engine.prepare(VariableSpec("bench/weight", (n,), dtype, initializer), seed=42)

    def once() -> None:
        total = 0
        for values in engine.stream(prepared):
            total += values.size
        assert total == n, (total, n)

    return best_of(repeats, once)


def numpy_seconds(family: str, n: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    if family == "normal":
        return best_of(repeats, lambda: rng.standard_normal(n, dtype=np.float32))
    return best_of(repeats, lambda: rng.random(n, dtype=np.float32))


def gbps(n_bytes: int, seconds: float | None) -> float:
    return n_bytes / seconds / 1e9 if seconds else math.nan


def size_name(n: int) -> str:
    return f"{n // M}M"


def cpus_and_load() -> str:
    return f"{os.cpu_count()} CPUs (1-minute load average {os.getloadavg()[0]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=0, help="repeats per figure (default: 5 at 16M, 3 at 256M)")
    parser.add_argument("--jax-child", nargs=3, metavar=("FAMILY", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jax_child:
        family, n, repeats = args.jax_child
        jax_child(family, int(n), int(repeats))
        return

    machine = cpus_and_load()  # before this script adds its own load
    stock_env = dict(os.environ)  # the JAX baseline runs with the flags a user would have
    configure_host_devices()  # before anything initialises JAX's backends
    import jax

    engine = Engine(WorkerPool(cache_bytes=0))  # no block cache: every pass generates
    t = time.perf_counter()
    programs = engine.warm()
    warm_s = time.perf_counter() - t
    print(f"weightgen engine throughput, {datetime.date.today().isoformat()}")
    print(
        f"jax {jax.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
        f"{machine}; engine: {len(engine.pool.devices)} {jax.devices()[0].platform} devices, "
        f"lookahead {engine.lookahead}; warm-up compiled {programs} programs in {warm_s:.1f} s"
    )
    print("engine/JAX and engine/numpy are ratios of GB/s (higher = engine faster); best of N repeats each")
    print()
    header = ("case", "engine GB/s", "JAX GB/s", "numpy GB/s", "engine/JAX", "engine/numpy", "goal")
    widths = (22, 12, 10, 11, 11, 13, 5)
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    notes = []
    for n in SIZES:
        repeats = args.repeats or (5 if n <= 16 * M else 3)
        for family, initializer in INITIALIZERS.items():
            n_bytes = 4 * n
            e = gbps(n_bytes, engine_seconds(engine, initializer, "float32", n, repeats))
            p = gbps(n_bytes, numpy_seconds(family, n, repeats))
            seconds, why = jax_baseline(family, n, repeats, stock_env)
            j = gbps(n_bytes, seconds)
            case = f"float32 {family} {size_name(n)}"
            if why:
                notes.append(f"{case}: the monolithic JAX call failed: {why}")
            met = (math.isnan(j) or e / j >= GOAL_VS_JAX) and e / p >= GOAL_VS_NUMPY
            cells = (
                case,
                f"{e:.3f}",
                f"{j:.3f}" if not why else "n/a",
                f"{p:.3f}",
                f"{e / j:.2f}x" if not why else "n/a",
                f"{e / p:.2f}x",
                "met" if met else "NOT",
            )
            print("  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)), flush=True)
    for note in notes:
        print(note)
    print()
    print("informational: engine only, random_normal stddev 1, 16M elements")
    print(f"{'dtype':>22}  {'GB/s':>12}  {'Melem/s':>10}")
    n = 16 * M
    for dtype in INFORMATIONAL:
        seconds = engine_seconds(engine, INITIALIZERS["normal"], dtype, n, args.repeats or 5)
        itemsize = {"float64": 8, "bfloat16": 2, "complex64": 8}[dtype]
        print(
            f"{dtype + ' normal 16M':>22}  {gbps(n * itemsize, seconds):>12.3f}  {n / seconds / 1e6:>10.1f}", flush=True
        )
    engine.close()


if __name__ == "__main__":
    main()
