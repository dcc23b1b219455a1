"""What a sliced fetch's pieces cost to cut out of their kernel calls, before and after issue 13.

    .venv/bin/python bench/slice_copies.py [--repeats 5]

An `Engine` on a `WorkerPool` with a block cache big enough to hold every call (so no timed run
generates: this is the cutting alone, what every rank of a sharded fetch pays on top of generation),
streams three deliveries of a float32 [8192, 8192] random_normal tensor: whole, a row shard (rows
1000:3048) and a column shard (columns 1000:3048), once with the engine's `_gather` and once with
the one it replaced (kept below as the baseline): concatenate the piece's calls, then gather every
element through an int64 index (two copies of the data and an index twice its size). CPU seconds
per GiB delivered, best of `--repeats`, both in the same run; the bytes of both are compared.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np


def legacy_gather(piece, generated, block):
    """The cut before issue 13: concatenate the calls, gather through an index (the baseline)."""
    if len(generated) == 1 and piece.starts.size == 1:
        b, values = generated[0]
        at = int(piece.starts[0]) - b * block
        return values[at : at + piece.length]
    first_flat = np.asarray([b * block for b, _ in generated], np.int64)
    offsets = np.concatenate([[0], np.cumsum([v.size for _, v in generated])[:-1]]).astype(np.int64)
    buffer = np.concatenate([v for _, v in generated])
    which = np.searchsorted(first_flat, piece.starts, side="right") - 1
    positions = offsets[which] + (piece.starts - first_flat[which])
    index = positions[:, None] + np.arange(piece.length, dtype=np.int64)[None, :]
    return buffer[index.ravel()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from weightgen.server.engine import workers

    workers.configure_host_devices()
    from weightgen.server.engine import Engine, Initializer, VariableSpec, WorkerPool
    from weightgen.server.engine import engine as engine_module

    engine = Engine(WorkerPool(cache_bytes=2 << 30))
    engine.warm(("float32",))
    cases = {
        "whole": (),
        "row shard 1000:3048": ((1000, 3048), (0, 8192)),
        "column shard 1000:3048": ((0, 8192), (1000, 3048)),
    }
    current = engine_module._gather

    def stream(slice_) -> tuple[float, bytes]:
        spec = VariableSpec("w", (8192, 8192), "float32", Initializer("random_normal", {"stddev": 1.0}), slice=slice_)
        prepared = engine.prepare(spec, seed=1)
        cpu = time.process_time()
        parts = [piece.nbytes for piece in engine.stream(prepared)]
        seconds = time.process_time() - cpu
        return seconds, sum(parts)

    def contents(slice_) -> bytes:
        spec = VariableSpec("w", (8192, 8192), "float32", Initializer("random_normal", {"stddev": 1.0}), slice=slice_)
        return b"".join(p.tobytes() for p in engine.stream(engine.prepare(spec, seed=1)))

    print(f"weightgen slice cutting, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"1-minute load average {os.getloadavg()[0]:.1f} (shared machine); best of {args.repeats}, block cache warm"
    )
    print()
    print("| delivery | MiB | before: CPU s/GiB | after: CPU s/GiB | after / before |")
    print("|---|---|---|---|---|")
    for name, slice_ in cases.items():
        engine_module._gather = current
        after_bytes = contents(slice_)  # also fills the block cache
        engine_module._gather = legacy_gather
        assert contents(slice_) == after_bytes, f"{name}: the two cuts differ"
        results = {}
        for label, gather in (("before", legacy_gather), ("after", current)):
            engine_module._gather = gather
            best = min(stream(slice_)[0] for _ in range(args.repeats))
            results[label] = best / (len(after_bytes) / 2**30)
        engine_module._gather = current
        print(
            f"| {name} | {len(after_bytes) / 2**20:.0f} | {results['before']:.3f} | {results['after']:.3f} "
            f"| {results['after'] / results['before']:.2f}x |"
        )


if __name__ == "__main__":
    main()
