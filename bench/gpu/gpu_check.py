"""The GPU check: raw bits identical to the CPU's, float values within a measured ULP distance,
and the engine's speed on the GPU. Run through bench/gpu_check.sh on a machine with a GPU.

    python bench/gpu/gpu_check.py compare [--reference bench/gpu/cpu_reference.npz]
    python bench/gpu/gpu_check.py write-reference        # on the CPU, to refresh the shipped file

The reference holds, for a fixed key and blocks, the raw threefry words of every precision and the
values of every (family, precision) program with coefficients for uniform, normal and truncated
normal, all computed on the CPU. `compare` recomputes them on the default JAX backend.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from weightgen.server.engine import kernels, rng, sampling

REFERENCE = Path(__file__).with_name("cpu_reference.npz")
KEY = rng.variable_key(20261129, "gpu_check/weights")
BLOCK0, N_BLOCKS = 1000, 32  # 8192 elements of each case

CASES = {
    "uniform": ("uniform", lambda p: sampling.uniform(-1.0, 1.0, p)),
    "normal": ("normal", lambda p: sampling.normal(0.0, 1.0, precision=p)),
    "truncated_normal": ("normal", lambda p: sampling.normal(0.0, 1.0, -2.0, 2.0, p)),
}


def compute(device: jax.Device) -> dict[str, np.ndarray]:
    out = {}
    for precision, (_, bits, _) in sampling.PRECISIONS.items():
        args = jax.device_put((np.asarray(KEY, np.uint32), np.uint32(BLOCK0), np.uint32(0)), device)
        words = jax.jit(rng.block_words, static_argnums=(3, 4))(*args, N_BLOCKS, bits)
        out[f"bits/{precision}"] = np.asarray(words)
        for name, (family, make) in CASES.items():
            affine = make(precision)
            values = kernels.run(device, family, precision, KEY, BLOCK0, N_BLOCKS, 0, affine.coefficients)
            out[f"{name}/{precision}"] = values
    return out


def ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in units in the last place (ordered integer views; NaN-free inputs)."""
    signed = np.int32 if a.dtype == np.float32 else np.int64
    ia, ib = a.view(signed).astype(np.int64), b.view(signed).astype(np.int64)
    # Map the sign-magnitude float order onto integers so that adjacent floats differ by 1.
    ia = np.where(ia < 0, np.iinfo(signed).min - ia, ia)
    ib = np.where(ib < 0, np.iinfo(signed).min - ib, ib)
    return int(np.max(np.abs(ia - ib))) if a.size else 0


def compare(reference: Path) -> dict:
    device = jax.devices()[0]
    expected = dict(np.load(reference))
    actual = compute(device)
    report = {"platform": device.platform, "device": str(device), "jax": jax.__version__, "cases": {}}
    ok = True
    for name, want in expected.items():
        got = actual[name]
        if name.startswith("bits/"):
            same = bool(np.array_equal(got, want))
            ok &= same
            report["cases"][name] = {"identical": same}
        else:
            report["cases"][name] = {
                "identical": bool(np.array_equal(got.view(np.uint8), want.view(np.uint8))),
                "max_ulp": ulp_distance(got, want),
                "max_abs": float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))),
            }
    report["raw_bits_identical"] = ok
    return report


def throughput(seconds: float = 2.0) -> dict[str, float]:
    """GB/s of each (family, precision) program at the engine's call size on the default device."""
    device = jax.devices()[0]
    results = {}
    for precision in sampling.PRECISIONS:
        for name, (family, make) in CASES.items():
            coefficients = make(precision).coefficients
            n = kernels.MAX_CALL_BLOCKS
            kernels.run(device, family, precision, KEY, 0, n, 0, coefficients)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                kernels.run(device, family, precision, KEY, calls * n, n, 0, coefficients)
                calls += 1
            itemsize = 4 if precision == "float32" else 8
            elapsed = time.perf_counter() - start
            results[f"{name}/{precision}"] = calls * n * rng.BLOCK_ELEMENTS * itemsize / elapsed / 1e9
    return results


def fetch(gib: float = 1.0, chunk_bytes: int = 1 << 20) -> dict:
    """End to end over loopback: a server subprocess on this machine's devices, one float32
    tensor of `gib` GiB fetched into a numpy buffer with the hand-written chunk decoder."""
    import grpc

    from weightgen.v1 import weightgen_pb2 as pb
    from weightgen.v1 import wire

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "ports.json"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "weightgen.server",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--port-file",
                str(port_file),
                "--log-format",
                "text",
            ],
        )
        try:
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None:
                    raise RuntimeError("server exited")
                time.sleep(0.1)
            port = json.loads(port_file.read_text())["port"]
            n = int(gib * (1 << 30)) // 4
            side = int(n**0.5)
            request = pb.MaterializeRequest(
                seed=1,
                chunk_bytes=chunk_bytes,
                variables=[
                    pb.VariableSpec(
                        name="big",
                        shape=[side, n // side],
                        initializer=pb.Initializer(random_normal=pb.RandomNormal(stddev=1)),
                    )
                ],
            )
            options = [("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES + (64 << 10))]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                grpc.channel_ready_future(channel).result(timeout=120)
                call = channel.unary_stream(
                    "/weightgen.v1.WeightGen/Materialize",
                    request_serializer=pb.MaterializeRequest.SerializeToString,
                    response_deserializer=None,
                )
                results = []
                for _ in range(3):
                    out = None
                    start = time.perf_counter()
                    while True:
                        try:
                            for message in call(request, timeout=600):
                                chunk = wire.decode_chunk(message)
                                if chunk.info is not None:
                                    out = np.empty(chunk.info.byte_size, np.uint8)
                                out[chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
                            break
                        except grpc.RpcError as e:  # still warming up
                            if e.code() is not grpc.StatusCode.UNAVAILABLE:
                                raise
                            time.sleep(0.5)
                            start = time.perf_counter()
                    results.append(out.nbytes / (time.perf_counter() - start) / 1e9)
            return {"bytes": int(out.nbytes), "chunk_bytes": chunk_bytes, "gb_per_s_best": max(results)}
        finally:
            server.terminate()
            server.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("compare", "write-reference", "throughput", "fetch"))
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    args = parser.parse_args(argv)
    if args.command == "write-reference":
        cpu = jax.devices("cpu")[0]
        np.savez_compressed(args.reference, **compute(cpu))
        print(f"wrote {args.reference} from {cpu}")
        return 0
    if args.command == "fetch":
        print(json.dumps(fetch(), indent=2))
        return 0
    if args.command == "throughput":
        print(json.dumps({"device": str(jax.devices()[0]), "gb_per_s": throughput()}, indent=2))
        return 0
    report = compare(args.reference)
    print(json.dumps(report, indent=2))
    return 0 if report["raw_bits_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
