"""Run torch_ranks.py at several world sizes against one weightgen server and check that every
world size assembles the same model, bit for bit.

    python examples/distributed/run_world_sizes.py                      # starts a server: 1, 2, 4 ranks
    python examples/distributed/run_world_sizes.py --server HOST:PORT --world-sizes 2,4 --small

Without ``--server`` it starts ``python -m weightgen.server`` on a free loopback port (the server
extra must be installed) and stops it at the end. Each run is ``torchrun --standalone
--nproc-per-node N torch_ranks.py`` (gloo, CPU); its rank 0 checks the assembled model against a
single-process fetch and writes a summary, and this script compares the digests across runs.
Exit status 0 when every run matched and every digest is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def local_server(workdir: Path) -> Iterator[str]:
    """A weightgen server on a free loopback port, SERVING, stopped on exit."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port_file = workdir / "ports.json"
    log = (workdir / "server.log").open("w")
    command = [sys.executable, "-m", "weightgen.server", "--host", "127.0.0.1", "--port", "0"]
    command += ["--metrics-port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (port_file.exists() and port_file.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {workdir / 'server.log'}")
            time.sleep(0.1)
        address = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                with contextlib.suppress(grpc.RpcError):
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not become ready; see {workdir / 'server.log'}")
                time.sleep(0.2)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run(address: str, world: int, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    command += [str(HERE / "torch_ranks.py"), "--server", address, "--digest-out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    print(f"--- world size {world} ---")
    print("\n".join(line for line in result.stdout.splitlines() if line.strip()))
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"world size {world} failed (exit {result.returncode})")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--world-sizes", default="1,2,4")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--small", action="store_true", help="a tiny GPT-2-like model")
    parser.add_argument("--plan", default="tp", choices=["tp", "fsdp"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", type=Path, help="write the summaries here")
    args = parser.parse_args()
    worlds = [int(w) for w in args.world_sizes.split(",")]
    extra = ["--seed", str(args.seed), "--plan", args.plan, "--dtype", args.dtype] + (["--small"] if args.small else [])

    with tempfile.TemporaryDirectory(prefix="weightgen-worlds-") as tmp:
        work = Path(tmp)
        server = contextlib.nullcontext(args.server) if args.server else local_server(work)
        with server as address:
            summaries = [run(address, w, work / f"world{w}.json", extra) for w in worlds]

    print(f"\n{'world':>5} {'fetched bytes':>15} {'x model':>8} {'seconds':>8}  digest")
    for s in summaries:
        ratio = s["fetched_bytes"] / s["model_bytes"]
        print(f"{s['world']:>5} {s['fetched_bytes']:>15,} {ratio:>8.3f} {s['seconds']:>8.2f}  {s['digest'][:16]}")
    digests = {s["digest"] for s in summaries}
    same = len(digests) == 1 and all(s["identical"] for s in summaries)
    print(f"every world size gives the same model: {same}")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1))
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
