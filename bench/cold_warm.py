"""Cold versus warm generation of a model with 200 distinct shapes, and the XLA compilations it takes.

    .venv/bin/python bench/cold_warm.py [--runs N]

The model: 60 dense layers (kernel he_normal or glorot_uniform, bias zeros), 30 convolutions
([k, k, in, out] he_normal, bias zeros), 10 embeddings (truncated_normal) and 10 multi-head
projections ([in, heads, dim] glorot_uniform): 200 variables, 200 distinct shapes, 40.8M float32
elements (163 MB). A pass prepares and streams every variable in order, consuming each piece.

- cold: a fresh process (one CPU device per core) runs its first pass with no warm-up, so the
  first requests compile the block programs they need;
- warm: the same process's later passes (best of three);
- warmed: a fresh process that calls ``engine.warm()`` first (not timed) and then runs one pass;
- cached: like cold (no warm-up), but with JAX's persistent compilation cache in a directory that
  an earlier process (one "warmed" run, untimed) filled: what the server's
  ``compilation_cache_dir`` setting gives a restarted server.

Each fresh-process part runs as a subprocess of this script, `--runs` times (best taken). XLA
compilations are counted with ``jax.monitoring.register_event_duration_secs_listener`` on the event
``/jax/core/compile/backend_compile_duration`` (jax/_src/dispatch.py, BACKEND_COMPILE_EVENT; it is
also recorded when the program comes from the persistent cache, so "cached" counts those), whose
durations also give the seconds spent compiling (tracing and lowering, the steps before a
compilation, are the jaxpr_trace and jaxpr_to_mlir_module events). Process start-up (interpreter, imports, backend
initialisation in ``Engine()``) is in none of the pass times; the report shows it separately.
Goal (issue): cold / warm <= 1.5x, since no compilation is per shape.
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
import tempfile
import time

from weightgen.server.engine import Engine, Initializer, VariableSpec, WorkerPool, configure_host_devices

COMPILE_EVENT = "backend_compile"
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
GOAL = 1.5
WARM_PASSES = 3


def model() -> list[VariableSpec]:
    """200 variables with 200 distinct shapes, about 41M elements."""
    layers: list[tuple[str, tuple[int, ...], Initializer]] = []
    he, glorot, zeros = Initializer("he_normal"), Initializer("glorot_uniform"), Initializer("zeros")
    for i in range(60):
        fan_in, fan_out = 64 + 16 * i, 80 + 16 * i
        layers.append((f"dense_{i}/kernel", (fan_in, fan_out), he if i % 2 else glorot))
        layers.append((f"dense_{i}/bias", (fan_out,), zeros))
    for i in range(30):
        k, c_in, c_out = (1, 3, 5)[i % 3], 16 + 8 * i, 24 + 8 * i
        layers.append((f"conv_{i}/kernel", (k, k, c_in, c_out), he))
        layers.append((f"conv_{i}/bias", (c_out + 3,), zeros))
    for i in range(10):
        table = Initializer("truncated_normal", {"stddev": 0.02})
        layers.append((f"embed_{i}/table", (2000 + 500 * i, 64 + 16 * i), table))
        layers.append((f"attn_{i}/query", (256 + 64 * i, 4 + i, 64), glorot))
    specs = [VariableSpec(name, shape, "float32", init) for name, shape, init in layers]
    assert len({s.shape for s in specs}) == len(specs) == 200
    return specs


# -- one fresh process ---------------------------------------------------------------------------


def child(part: str) -> None:
    """Prints a JSON record of one fresh process: start-up, optional warm-up, and its passes."""
    configure_host_devices()
    import jax

    compiles: list[float] = []  # backend compilations
    tracing: list[float] = []  # tracing to a jaxpr and lowering to MLIR, the steps before one

    def listen(event: str, duration: float, **_: object) -> None:
        if COMPILE_EVENT in event:
            compiles.append(duration)
        elif event in TRACE_EVENTS:
            tracing.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)

    def measured(fn) -> dict[str, float]:
        before, traced = len(compiles), len(tracing)
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        return {
            "seconds": seconds,
            "compiles": len(compiles) - before,
            "compile_s": sum(compiles[before:]),
            "trace_s": sum(tracing[traced:]),
            **result,
        }

    specs = model()
    t = time.perf_counter()
    engine = Engine(WorkerPool(cache_bytes=0))  # initialises JAX's backends; no block cache
    record: dict[str, object] = {"engine_init_s": time.perf_counter() - t}
    record |= {"devices": len(engine.pool.devices), "jax": jax.__version__}

    def one_pass() -> dict[str, float]:
        total = 0
        for spec in specs:
            for values in engine.stream(engine.prepare(spec, seed=42)):
                total += values.size
        return {"elements": total}

    if part == "warmed":
        record["warm"] = measured(lambda: {"programs": engine.warm()})
        record["passes"] = [measured(one_pass)]
    else:
        record["passes"] = [measured(one_pass) for _ in range(1 + WARM_PASSES)]
    engine.close()
    print(json.dumps(record))


def run_child(part: str, env: dict[str, str] | None = None) -> dict:
    command = [sys.executable, __file__, "--child", part]
    t = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"process_s": time.perf_counter() - t}


# -- the report ----------------------------------------------------------------------------------


def cpus_and_load() -> str:
    return f"{os.cpu_count()} CPUs (1-minute load average {os.getloadavg()[0]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh processes per part (best taken)")
    parser.add_argument("--child", choices=("cold", "warmed"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    specs = model()
    elements = sum(math.prod(s.shape) for s in specs)
    kinds = sorted({s.initializer.kind for s in specs})
    machine = cpus_and_load()  # before this script adds its own load
    colds = [run_child("cold") for _ in range(args.runs)]
    warmeds = [run_child("warmed") for _ in range(args.runs)]
    with tempfile.TemporaryDirectory(prefix="weightgen-xla-cache-") as cache:
        env = os.environ | {
            "JAX_COMPILATION_CACHE_DIR": cache,  # as the server's compilation_cache_dir does
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        run_child("warmed", env)  # fills the cache with every program on every device
        cacheds = [run_child("cold", env) for _ in range(args.runs)]

    cold = min((r["passes"][0] for r in colds), key=lambda p: p["seconds"])
    warm = min((p for r in colds for p in r["passes"][1:]), key=lambda p: p["seconds"])
    warmed = min((r["passes"][0] for r in warmeds), key=lambda p: p["seconds"])
    cached = min((r["passes"][0] for r in cacheds), key=lambda p: p["seconds"])
    warm_up = min((r["warm"] for r in warmeds), key=lambda p: p["seconds"])
    init = min(r["engine_init_s"] for r in colds + warmeds)
    process = min(r["process_s"] for r in colds)
    assert all(p["elements"] == elements for r in colds + warmeds + cacheds for p in r["passes"])

    print(f"weightgen cold vs warm, {datetime.date.today().isoformat()}")
    print(
        f"jax {colds[0]['jax']}, python {platform.python_version()}, {machine}, "
        f"{colds[0]['devices']} CPU devices (one per core)"
    )
    print(
        f"model: {len(specs)} variables, {len({s.shape for s in specs})} distinct shapes, "
        f"{elements / 1e6:.1f}M float32 elements ({4 * elements / 1e6:.0f} MB), initializers {', '.join(kinds)}"
    )
    print(
        f"best of {args.runs} fresh processes per part; untimed: Engine() with backend initialisation "
        f"{init:.2f} s (whole cold process, interpreter start to exit, {process:.1f} s wall)"
    )
    print()
    header = ("pass", "seconds", "GB/s", "XLA compilations", "compiling s", "tracing+lowering s")
    widths = (46, 8, 6, 17, 12, 19)
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    rows = (
        ("cold: fresh process, first pass, no warm-up", cold),
        (f"warm: same process, later pass (best of {WARM_PASSES})", warm),
        ("warmed: fresh process, first pass after warm()", warmed),
        ("cached: fresh process, first pass, XLA cache", cached),
    )
    for label, p in rows:
        cells = (label, f"{p['seconds']:.3f}", f"{4 * elements / p['seconds'] / 1e9:.2f}")
        cells += (str(p["compiles"]), f"{p['compile_s']:.2f}", f"{p['trace_s']:.2f}")
        print("  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    cells = ("engine.warm() itself (untimed above)", f"{warm_up['seconds']:.3f}", "", str(warm_up["compiles"]))
    cells += (f"{warm_up['compile_s']:.2f}", f"{warm_up['trace_s']:.2f}")
    print("  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print()
    ratio = cold["seconds"] / warm["seconds"]
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"cold / warm   = {ratio:.2f}x   (goal <= {GOAL}x: {verdict})")
    print(f"warmed / warm = {warmed['seconds'] / warm['seconds']:.2f}x")
    print(f"cached / warm = {cached['seconds'] / warm['seconds']:.2f}x   (cold, with a filled compilation cache)")
    rest = cold["seconds"] - cold["compile_s"] - cold["trace_s"]
    print(f"cold pass less compiling, tracing and lowering = {rest:.3f} s (warm: {warm['seconds']:.3f} s)")
    later = [[p["compiles"] for p in r["passes"][1:]] for r in colds]
    print(
        f"compilations in the later passes of each cold process: {later} (a program compiles once per device, "
        "on the first job of its kind that lands on that device)"
    )
    print(
        f"compilations in the cold pass: {cold['compiles']} for {len(specs)} distinct shapes "
        f"(per-shape compilation would need at least {len({s.shape for s in specs if s.initializer.kind != 'zeros'})})"
    )


if __name__ == "__main__":
    main()
