"""Load and soak: N concurrent clients sending random valid and invalid requests for T minutes
against one server on loopback.

    .venv/bin/python bench/soak.py [--clients 8] [--minutes 1] [--procs 4] [--sample-seconds 30]
    make soak        # --clients 32 --minutes 5, then the property test with 2,000 examples

A weightgen server subprocess (`--devices auto`, otherwise its defaults, so the soak also hits its
block cache and limits) and `--clients` client threads spread over `--procs` processes (the GIL),
each in a loop until the time is up (every call has a deadline, so the run stops by itself):

- valid requests (OK expected): 1 to 3 variables of random dtypes (float32, float64, float16,
  bfloat16, complex64, int8, bool), random initializers (random, fan-based, structured up to 512 x
  512, constants) and sizes from 1 KiB to `--max-mib` (log-uniform), sometimes a slice, a resume
  offset or a chunk size; every stream is checked (info first, contiguous offsets, digest of the
  bytes); sometimes inside a by-name or sequential session (OpenSession, Materialize, CloseSession);
- cancelled streams (CANCELLED expected): a large stream cancelled after its first chunk;
- invalid requests (their exact code expected): the static cases of the bad-input corpus
  (tests/security/test_corpus.py), about a fifth of all requests (`--invalid-fraction`).

Any other answer is an unexpected error, listed at the end. Reported: requests and bytes, errors by
code (expected / unexpected), p50/p99 time to first byte of valid streams, and the server's RSS,
threads, active streams and open sessions every `--sample-seconds`. Goal (issue): 0 unexpected
errors and RSS flat.

"Flat" here: no growth late in the run. The server's RSS first climbs while its block cache fills
(128 MiB by default) and glibc keeps freed buffers (the server raises M_TRIM_THRESHOLD to 256 MiB
for throughput, DESIGN.md section 5), then levels off; a leak keeps climbing. So the verdict compares
the highest RSS of the last third of the run with that of the middle third (at most FLAT_MIB more);
the growth since the first sample under load is printed too.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import math
import multiprocessing as mp
import os
import platform
import random
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "security")]

MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
DEADLINE = 120.0  # seconds, every call
KINDS = [
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "he_normal",
    "glorot_uniform",
    "lecun_uniform",
    "kaiming_uniform",
    "variance_scaling",
    "zeros",
    "ones",
    "constant",
    "orthogonal",
    "identity",
]
FLAT_MIB = 64  # highest RSS of the last third of the run over that of the middle third


# -- the client side (worker processes) -----------------------------------------------------------


class Client:
    """One client thread's requests and the statistics of their answers."""

    def __init__(self, channel, rnd: random.Random, max_bytes: int, invalid_fraction: float, cases):
        import grpc

        from weightgen.v1 import weightgen_pb2 as pb
        from weightgen.v1 import weightgen_pb2_grpc

        self.grpc, self.pb = grpc, pb
        self.rnd = rnd
        self.max_bytes = max_bytes
        self.invalid_fraction = invalid_fraction
        self.cases = cases
        self.channel = channel
        self.stub = weightgen_pb2_grpc.WeightGenStub(channel)
        self.materialize = channel.unary_stream(
            MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString, response_deserializer=None
        )
        self.counts: collections.Counter = collections.Counter()  # (kind, code, verdict) -> n
        self.bytes = 0
        self.ttfb: list[float] = []
        self.unexpected: list[str] = []
        self.names = 0

    # requests

    def _variable(self, budget: int):
        pb, rnd = self.pb, self.rnd
        dtype, itemsize = rnd.choice(
            [
                (pb.DTYPE_FLOAT32, 4),
                (pb.DTYPE_FLOAT32, 4),
                (pb.DTYPE_FLOAT64, 8),
                (pb.DTYPE_FLOAT16, 2),
                (pb.DTYPE_BFLOAT16, 2),
                (pb.DTYPE_COMPLEX64, 8),
                (pb.DTYPE_INT8, 1),
                (pb.DTYPE_BOOL, 1),
            ]
        )
        size = int(math.exp(rnd.uniform(math.log(1 << 10), math.log(max(budget, 1 << 11)))))
        elements = max(1, size // itemsize)
        kind = rnd.choice(KINDS)
        if kind in ("orthogonal", "identity"):
            side = rnd.randint(1, min(512, int(math.sqrt(elements)) + 1))
            shape = [side, rnd.randint(1, 512)]
        elif rnd.random() < 0.3:
            shape = [elements]
        else:
            cols = rnd.choice([1, 3, 64, 256, 1000, 4096])
            shape = [max(1, elements // cols), cols]
        initializer = pb.Initializer()
        body = getattr(initializer, kind)
        body.SetInParent()
        if kind == "constant":
            body.value = float(rnd.randint(-3, 3))
        elif kind == "random_uniform":
            body.min, body.max = -rnd.random(), rnd.random()
        elif kind == "random_normal":
            body.stddev = rnd.uniform(0, 2)
        self.names += 1
        variable = pb.VariableSpec(name=f"soak/{kind}/{self.names}", shape=shape, dtype=dtype, initializer=initializer)
        if len(shape) == 2 and rnd.random() < 0.15:
            rows = sorted(rnd.randint(0, shape[0]) for _ in range(2))
            variable.slice.extend([pb.Range(start=rows[0], stop=rows[1]), pb.Range(start=0, stop=shape[1])])
        if rnd.random() < 0.05:
            out = variable.slice[0].stop - variable.slice[0].start if variable.slice else shape[0]
            delivered = out * math.prod(shape[1:]) * itemsize
            variable.resume_offset = rnd.randint(0, delivered)
        return variable

    def _request(self, budget: int):
        count = self.rnd.choice([1, 1, 1, 2, 3])
        variables = [self._variable(budget // count) for _ in range(count)]
        chunk = self.rnd.choice([0, 0, 0, 64 << 10, 1 << 20, (4 << 20) - (4 << 10)])
        return self.pb.MaterializeRequest(variables=variables, chunk_bytes=chunk)

    # answers

    def _note(self, kind: str, code: str, expected: bool, detail: str = "") -> None:
        self.counts[(kind, code, "expected" if expected else "unexpected")] += 1
        if not expected and len(self.unexpected) < 50:
            self.unexpected.append(f"{kind}: {code}: {detail[:300]}")

    def _stream(self, request, kind: str) -> None:
        """A valid Materialize, every chunk checked."""
        from weightgen.v1 import wire

        t0 = time.perf_counter()
        state: dict[int, list] = {}
        try:
            for raw in self.materialize(request, timeout=DEADLINE):
                if not state:
                    self.ttfb.append(time.perf_counter() - t0)
                chunk = wire.decode_chunk(raw)
                spec = request.variables[chunk.variable_index]
                got = state.setdefault(chunk.variable_index, [spec.resume_offset, hashlib.sha256(), False])
                assert got[0] == chunk.offset, f"offset {chunk.offset}, expected {got[0]}"
                assert not got[2], "a chunk after the last"
                got[0] += chunk.data.nbytes
                got[1].update(chunk.data)
                self.bytes += chunk.data.nbytes
                if chunk.last:
                    got[2] = True
                    assert spec.resume_offset or chunk.digest == got[1].digest(), "digest mismatch"
            assert sorted(state) == list(range(len(request.variables))), "variables missing"
            assert all(g[2] for g in state.values()), "a variable without its last chunk"
        except self.grpc.RpcError as error:
            self._note(kind, error.code().name, False, error.details() or "")
            return
        except AssertionError as error:
            self._note(kind, "BAD_STREAM", False, str(error))
            return
        self._note(kind, "OK", True)

    def valid(self) -> None:
        self._stream(self._request(self.max_bytes), "valid")

    def session(self) -> None:
        pb = self.pb
        mode = self.rnd.choice([pb.RNG_MODE_BY_NAME, pb.RNG_MODE_SEQUENTIAL])
        try:
            session = self.stub.OpenSession(
                pb.OpenSessionRequest(seed=self.rnd.getrandbits(63), rng_mode=mode, ttl_seconds=120), timeout=DEADLINE
            )
        except self.grpc.RpcError as error:
            self._note("session", error.code().name, False, error.details() or "")
            return
        self._note("session", "OK", True)
        for _ in range(self.rnd.randint(1, 3)):
            request = self._request(self.max_bytes // 4)
            request.session_id = session.session_id
            self._stream(request, "valid in session")
        try:
            self.stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=DEADLINE)
            self._note("session", "OK", True)
        except self.grpc.RpcError as error:
            self._note("session", error.code().name, False, error.details() or "")

    def cancel(self) -> None:
        pb = self.pb
        variable = pb.VariableSpec(
            name=f"soak/cancel/{self.rnd.getrandbits(32)}",
            shape=[4096, 4096],
            initializer=pb.Initializer(random_normal=pb.RandomNormal()),
        )
        call = self.materialize(pb.MaterializeRequest(variables=[variable]), timeout=DEADLINE)
        try:
            next(call)
            call.cancel()
            for _ in call:
                pass
        except self.grpc.RpcError as error:
            code = error.code()
            self._note("cancelled", code.name, code == self.grpc.StatusCode.CANCELLED, error.details() or "")
            return
        self._note("cancelled", "OK", False, "the cancelled stream completed")

    def invalid(self) -> None:
        case = self.rnd.choice(self.cases)
        serialize = (lambda r: r) if isinstance(case.request, bytes) else (lambda r: r.SerializeToString())
        method = f"/weightgen.v1.WeightGen/{case.rpc}"
        try:
            if case.rpc == "Materialize":
                stream = self.channel.unary_stream(method, request_serializer=serialize, response_deserializer=None)
                next(iter(stream(case.request, timeout=DEADLINE)))
            else:
                unary = self.channel.unary_unary(method, request_serializer=serialize, response_deserializer=None)
                unary(case.request, timeout=DEADLINE)
        except self.grpc.RpcError as error:
            code = error.code()
            ok = code == case.code and (error.details() or "").startswith(case.where)
            self._note("invalid", code.name, ok, f"{case.id}: {error.details()}")
            return
        self._note("invalid", "OK", False, f"{case.id}: accepted")

    def run(self, until: float) -> None:
        while time.monotonic() < until:
            r = self.rnd.random()
            if r < self.invalid_fraction:
                self.invalid()
            elif r < self.invalid_fraction + 0.05:
                self.cancel()
            elif r < self.invalid_fraction + 0.15:
                self.session()
            else:
                self.valid()


def worker(address: str, threads: int, seconds: float, seed: int, max_bytes: int, invalid: float, out, go) -> None:
    import grpc
    import test_corpus

    cases = [c for c in test_corpus.CASES if not callable(c.request)]
    options = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", -1)]
    channel = grpc.insecure_channel(address, options=options)
    grpc.channel_ready_future(channel).result(timeout=60)
    clients = [Client(channel, random.Random(seed * 1000 + i), max_bytes, invalid, cases) for i in range(threads)]
    go.wait()
    until = time.monotonic() + seconds
    pool = [threading.Thread(target=c.run, args=(until,)) for c in clients]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    counts: collections.Counter = collections.Counter()
    for c in clients:
        counts.update(c.counts)
    out.put(
        {
            "counts": dict(counts),
            "bytes": sum(c.bytes for c in clients),
            "ttfb": [x for c in clients for x in c.ttfb],
            "unexpected": [u for c in clients for u in c.unexpected],
        }
    )
    channel.close()


# -- the server side (this process) ---------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--procs", type=int, default=0, help="client processes (default: min(clients, 4))")
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--max-mib", type=float, default=16.0, help="largest valid request")
    parser.add_argument("--invalid-fraction", type=float, default=0.2)
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-args", default="", help="extra server flags, e.g. '--cache-bytes 0'")
    args = parser.parse_args()

    import jax
    from serverproc import launch

    procs = args.procs or min(args.clients, 4)
    per_proc = [args.clients // procs + (i < args.clients % procs) for i in range(procs)]
    seconds = args.minutes * 60
    load = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"weightgen soak, {started:%Y-%m-%d %H:%M} UTC")
    print(
        f"python {platform.python_version()}, jax {jax.__version__}, {os.cpu_count()} CPUs, 1-minute load average "
        f"{load:.1f} at the start (the machine is shared)"
    )
    print(
        f"{args.clients} clients in {procs} processes for {args.minutes:g} min; valid requests up to {args.max_mib:g} "
        f"MiB; {args.invalid_fraction:.0%} invalid (corpus), 5% cancelled, 10% sessions; server --devices "
        f"{args.devices} --max-streams-per-peer 256 {args.server_args}".rstrip()
    )
    with tempfile.TemporaryDirectory() as tmp:
        # Every client here comes from 127.0.0.1; in a cluster each would have its own address, so the
        # per-address stream limit (32 by default) is raised to what the clients can have in flight.
        flags = ["--devices", args.devices, "--max-streams-per-peer", "256", *shlex.split(args.server_args)]
        server = launch(Path(tmp) / "server", *flags, cache_dir=Path(tmp) / "xla")
        pid = server.proc.pid
        ctx = mp.get_context("spawn")
        out, go = ctx.Queue(), ctx.Event()
        workers = [
            ctx.Process(
                target=worker,
                args=(
                    server.address,
                    n,
                    seconds,
                    args.seed * 100 + i,
                    int(args.max_mib * 2**20),
                    args.invalid_fraction,
                    out,
                    go,
                ),
            )
            for i, n in enumerate(per_proc)
        ]
        for w in workers:
            w.start()
        time.sleep(2.0)  # the workers import and connect; they wait for `go`
        samples = []

        def sample(t: float) -> None:
            status = proc_status(pid)
            row = (
                t,
                status["VmRSS"] / 1024,
                status["Threads"],
                server.metric("weightgen_active_streams"),
                server.metric("weightgen_open_sessions"),
                server.metric("weightgen_bytes_streamed_total") / 1e9,
            )
            samples.append(row)
            print(
                f"| {row[0]:7.0f} | {row[1]:8.1f} | {row[2]:7d} | {row[3]:6.0f} | {row[4]:8.0f} | {row[5]:9.2f} |",
                flush=True,
            )

        print()
        print("| t (s) | RSS MiB | threads | active streams | sessions | GB streamed |")
        print("|---|---|---|---|---|---|")
        t0 = time.monotonic()
        sample(0)
        go.set()
        next_sample = args.sample_seconds
        results = []
        while len(results) < len(workers):
            now = time.monotonic() - t0
            if now >= next_sample:
                sample(now)
                next_sample += args.sample_seconds
            try:
                results.append(out.get(timeout=min(1.0, max(0.05, next_sample - now))))
            except Exception:  # queue.Empty
                if now > seconds + DEADLINE + 120:
                    break
        elapsed = time.monotonic() - t0
        sample(elapsed)
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.terminate()
        healthy = server.health() == 1
        code = server.stop()
        log = server.log()

    counts: collections.Counter = collections.Counter()
    for r in results:
        counts.update(r["counts"])
    ttfb = [x for r in results for x in r["ttfb"]]
    unexpected = [u for r in results for u in r["unexpected"]]
    total = sum(counts.values())
    nbytes = sum(r["bytes"] for r in results)
    rss = [s[1] for s in samples]
    growth = rss[-1] - rss[1] if len(rss) > 2 else rss[-1] - rss[0]
    middle = [s[1] for s in samples if elapsed / 3 <= s[0] < 2 * elapsed / 3] or rss
    last = [s[1] for s in samples if s[0] >= 2 * elapsed / 3] or rss
    late = max(last) - max(middle)
    bad = sum(n for (_, _, verdict), n in counts.items() if verdict == "unexpected")
    tracebacks = log.count("Traceback")

    print()
    print(
        f"requests: {total} in {elapsed:.0f} s ({total / elapsed:.1f}/s) from {len(results)}/{len(workers)} processes"
    )
    print(f"tensor bytes received: {nbytes / 1e9:.2f} GB ({nbytes / elapsed / 1e6:.0f} MB/s)")
    print(
        f"time to first byte of valid streams: p50 {percentile(ttfb, 0.5) * 1e3:.1f} ms, "
        f"p99 {percentile(ttfb, 0.99) * 1e3:.1f} ms ({len(ttfb)} streams)"
    )
    print()
    print("| kind | code | expected | unexpected |")
    print("|---|---|---|---|")
    keys = sorted({(k, c) for k, c, _ in counts})
    for kind, code_name in keys:
        print(
            f"| {kind} | {code_name} | {counts.get((kind, code_name, 'expected'), 0)} "
            f"| {counts.get((kind, code_name, 'unexpected'), 0)} |"
        )
    print()
    print(
        f"server RSS: {rss[0]:.0f} MiB idle, {rss[1] if len(rss) > 1 else rss[0]:.0f} MiB at the first sample under "
        f"load, {max(rss):.0f} MiB peak, {rss[-1]:.0f} MiB at the end (growth after the first sample {growth:+.0f} MiB)"
    )
    print(
        f"server: health at the end {'SERVING' if healthy else 'NOT SERVING'}, exit code {code} on SIGTERM, "
        f"{tracebacks} tracebacks in its log"
    )
    print(
        f"late growth: highest RSS of the last third {max(last):.0f} MiB, of the middle third {max(middle):.0f} MiB "
        f"({late:+.0f} MiB)"
    )
    flat = late <= FLAT_MIB
    print(
        f"goal: 0 unexpected errors: {'met' if not bad else f'NOT met ({bad})'}; RSS flat (late growth <= "
        f"{FLAT_MIB} MiB): {'met' if flat else 'NOT met'}"
    )
    for u in unexpected[:20]:
        print("  unexpected:", u)
    return 0 if not bad and flat and healthy and code == 0 and not tracebacks else 1


if __name__ == "__main__":
    sys.exit(main())
