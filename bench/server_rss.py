"""Server peak RSS while it streams one 4 GiB float32 tensor to a slow client.

    .venv/bin/python bench/server_rss.py [--gib 4] [--rate-mbps 40] [--chunk-bytes 1048576]

A weightgen server subprocess (``--devices auto``: one CPU device per core, warm, XLA compilation
cache in a temporary directory) streams random_normal float32 [32768, 32768] (4 GiB) to this
process, which reads at a throttled rate (`--rate-mbps`, default 40 MB/s, so the run takes about
two minutes): after each chunk it sleeps until its running total is back on the schedule. The
server's VmRSS (/proc/<pid>/status) is sampled every 100 ms; idle RSS is the median of the samples
over the second before the request, after a warm-up request (4 MiB, or `--warm-gib` GiB at full
speed, to see what stays after a first large stream). VmHWM is reset after the idle measurement
(``echo 5 > /proc/<pid>/clear_refs``) and read when the stream ends, so peak = max(sampled peak,
VmHWM) misses nothing between samples. The client keeps nothing but a running SHA-256, checked
against the stream's digest at the end. Goal (issue): peak <= idle + 256 MiB.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serverproc import launch  # noqa: E402

MiB = 1 << 20
GOAL = 256 * MiB
MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10
    raise RuntimeError(f"no {key}")


def rss(pid: int) -> int:
    return status(pid, "VmRSS")


def vm_hwm(pid: int) -> int:
    return status(pid, "VmHWM")


class Sampler(threading.Thread):
    """VmRSS of `pid` every `interval` seconds, as (monotonic time, bytes)."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), rss(self.pid)))
            self.done.wait(self.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=int, default=4, help="tensor size in GiB (float32)")
    parser.add_argument("--rate-mbps", type=float, default=40.0, help="client read rate, MB/s (1e6 bytes)")
    parser.add_argument("--chunk-bytes", type=int, default=wire.DEFAULT_CHUNK_BYTES)
    parser.add_argument("--server-args", default="", help="extra server flags, e.g. '--cache-bytes 0'")
    parser.add_argument(
        "--warm-gib", type=float, default=0, help="first stream this many GiB at full speed (default: 4 MiB)"
    )
    args = parser.parse_args()
    elements = args.gib << 28
    shape = [elements // 32768, 32768]
    nbytes = elements * 4
    workdir = Path(tempfile.mkdtemp(prefix="weightgen-rss-"))
    server = launch(
        workdir / "server",
        "--devices",
        "auto",
        "--warm-precisions",
        "float32",
        *args.server_args.split(),
        cache_dir=workdir / "xla-cache",
    )
    pid = server.proc.pid
    sampler = Sampler(pid)
    try:
        with grpc.insecure_channel(server.address) as channel:
            materialize = channel.unary_stream(
                MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString, response_deserializer=None
            )
            normal = pb.Initializer(random_normal=pb.RandomNormal(stddev=1.0))
            rows = max(1, int(args.warm_gib * 2**30) // (4 * 32768)) if args.warm_gib else 32
            warm = pb.MaterializeRequest(
                seed=1, variables=[pb.VariableSpec(name="warm", shape=[rows, 32768], initializer=normal)]
            )

            for _ in materialize(warm, timeout=600):
                pass
            sampler.start()
            time.sleep(1.0)
            idle = int(statistics.median(b for _, b in sampler.samples))
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM: the kernel's exact peak from here
            request = pb.MaterializeRequest(
                seed=7,
                variables=[pb.VariableSpec(name="huge", shape=shape, initializer=normal)],
                chunk_bytes=args.chunk_bytes,
            )
            digest, received, expected = hashlib.sha256(), 0, b""
            rate = args.rate_mbps * 1e6
            started = time.monotonic()
            for raw in materialize(request, timeout=3600):
                chunk = wire.decode_chunk(raw)
                digest.update(chunk.data)
                received += len(chunk.data)
                if chunk.last:
                    expected = chunk.digest
                behind = started + received / rate - time.monotonic()
                if behind > 0:
                    time.sleep(behind)
            seconds = time.monotonic() - started
            hwm = vm_hwm(pid)
            time.sleep(0.5)
    finally:
        sampler.done.set()
        if sampler.is_alive():
            sampler.join()
        code = server.stop()
    assert received == nbytes, (received, nbytes)
    assert digest.digest() == expected, "digest mismatch"
    during = [b for t, b in sampler.samples if started <= t <= started + seconds]
    sampled = max(during)
    peak = max(sampled, hwm)
    growth = peak - idle
    print(
        f"Command: .venv/bin/python bench/server_rss.py --gib {args.gib} --rate-mbps {args.rate_mbps:g} "
        f"--chunk-bytes {args.chunk_bytes} --warm-gib {args.warm_gib:g}"
        + (f" --server-args '{args.server_args}'" if args.server_args else "")
    )
    print(
        f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; server: --devices auto {args.server_args}; exit code {code}; "
        f"1-minute load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(f"Tensor: random_normal float32 {shape} ({nbytes / 2**30:.0f} GiB), chunk {args.chunk_bytes} bytes")
    print(
        f"Client: {received / seconds / 1e6:.1f} MB/s over {seconds:.1f} s; digest verified; "
        f"{len(during)} RSS samples during the stream"
    )
    print()
    print("| idle RSS | sampled peak | VmHWM | peak - idle | goal | met |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {idle / MiB:.0f} MiB | {sampled / MiB:.0f} MiB | {hwm / MiB:.0f} MiB | {growth / MiB:.0f} MiB "
        f"| <= {GOAL // MiB} MiB | "
        f"{'yes' if growth <= GOAL else 'NO'} |"
    )
    quarter = max(1, len(during) // 4)
    print()
    print(
        "RSS by quarter of the stream (MiB, max): "
        + ", ".join(f"{max(during[i : i + quarter]) / MiB:.0f}" for i in range(0, len(during), quarter))
    )


if __name__ == "__main__":
    main()
