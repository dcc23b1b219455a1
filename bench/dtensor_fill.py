"""DTensor fill: a Llama-style model (158M parameters, float32) parallelised with FSDP2 and tensor
parallelism on a 2x2 CPU mesh (torchrun, gloo), filled by weightgen shard by shard, against one
full fetch of the plain model, in one run.

    .venv/bin/python bench/dtensor_fill.py [--repeats 2] [--mesh 2x2]

A weightgen server subprocess (``--devices auto``, warm) serves both. "full x1": this process
builds the plain model on ``meta`` and calls ``materialize_module`` (the time of that call).
"dtensor 2x2": ``torchrun --nproc-per-node 4 examples/distributed/llama_dtensor.py --size bench
--no-check``, each rank parallelising the model and filling its local shards; the time is the
slowest rank's ``materialize_module`` call (ranks released together by a barrier; process start,
model construction and parallelisation are outside it, as they are for the full fetch). Bytes
are the growth of the server's ``weightgen_bytes_streamed_total``. Every run has its own seed,
so the server's block cache never serves one from another. Figures are medians of `--repeats`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples" / "distributed"))
import llama_dtensor  # noqa: E402
from serverproc import launch  # noqa: E402

from weightgen.client import Client  # noqa: E402

METRIC = "weightgen_bytes_streamed_total"


def full_fetch(address: str, seed: int) -> float:
    import torch

    from weightgen.client.torch import materialize_module

    c = llama_dtensor.SIZES["bench"]
    with torch.device("meta"):
        model = llama_dtensor.Llama(c)
    with Client(address, timeout=300) as client:
        started = time.perf_counter()
        materialize_module(model, client, seed=seed, rules=llama_dtensor.rules(c), preset="torch")
        return time.perf_counter() - started


def dtensor_fill(address: str, metrics: str, mesh: str, seed: int, workdir: Path) -> dict:
    dp, tp = (int(n) for n in mesh.split("x"))
    out = workdir / f"fill-{seed}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={dp * tp}"]
    command += [str(ROOT / "examples" / "distributed" / "llama_dtensor.py"), "--server", address, "--size", "bench"]
    command += ["--no-check", "--meshes", mesh, "--seed", str(seed), "--metrics", metrics, "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-6000:])
    return json.loads(out.read_text())["meshes"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mesh", default="2x2")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = launch(workdir, "--devices", "auto")
        try:
            metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
            full_fetch(server.address, seed=1)  # warm-up: compilation, first connections
            fulls, fills, sent, model_bytes, expected = [], [], [], 0, 0
            for repeat in range(args.repeats):
                before = server.metric(METRIC)
                fulls.append(full_fetch(server.address, seed=100 + repeat))
                full_bytes = server.metric(METRIC) - before
                s = dtensor_fill(server.address, metrics, args.mesh, 200 + repeat, workdir)
                fills.append(s["fill_seconds"])
                sent.append(s["server_bytes"])
                model_bytes, expected = s["model_bytes"], s["expected_bytes"]
                print(
                    f"run {repeat}: full {fulls[-1]:.2f} s ({full_bytes:,.0f} B), "
                    f"{args.mesh} fill {fills[-1]:.2f} s ({sent[-1]:,} B)"
                )
        finally:
            server.stop()

    full, fill = statistics.median(fulls), statistics.median(fills)
    now = datetime.datetime.now(datetime.UTC)
    print(f"\n{now:%Y-%m-%d %H:%M} UTC, {platform.node()}, load {os.getloadavg()[0]:.1f}")
    print(f"model: {model_bytes:,} bytes; {args.mesh} mesh expects {expected:,} (x{expected / model_bytes:.4f})")
    print("| scenario | server bytes sent | x model | wall s | x one full fetch |")
    print("|---|---|---|---|---|")
    print(f"| full x1 | {model_bytes:,} | 1.000 | {full:.2f} | 1.00 |")
    bytes_sent = statistics.median(sent)
    ratio = bytes_sent / model_bytes
    print(f"| dtensor {args.mesh} | {bytes_sent:,.0f} | {ratio:.4f} | {fill:.2f} | {fill / full:.2f} |")


if __name__ == "__main__":
    main()
