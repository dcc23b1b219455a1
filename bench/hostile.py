"""Hostile clients against the server before and after the hardening work (issue 10).

    .venv/bin/python bench/hostile.py                          # both servers, every part (about 4 minutes)
    .venv/bin/python bench/hostile.py --only after             # the AFTER server alone (this checkout)
    .venv/bin/python bench/hostile.py --python-before /work/wt-before/.venv/bin/python --only both
    .venv/bin/python bench/hostile.py --parts rss --mixes a,b  # some of the RSS mixes only
    .venv/bin/python bench/hostile.py --only after --parts rss --mixes a2 --after-args '--memory-budget 2684354560'

BEFORE is the server of another checkout, started with that checkout's interpreter
(`--python-before`, default /work/wt-before/.venv/bin/python, commit 91cb20a); AFTER is this
checkout's (`--python-after`, default this interpreter). Both are started by tests/serverproc.py
`launch` with the same flags: `--devices 1 --warm-precisions float32`, one XLA compilation cache
directory shared by every run, and otherwise their own defaults (mix (e) adds `--auth-token-file`,
which both know). Every figure comes from a fresh server. `--after-args` adds flags to the AFTER
server only, for experiments (e.g. `--after-args '--memory-budget 2684354560'`, a 4 GiB pod's
budget); the default adds none.

Part 1, health-check latency while heavy requests start. A thread in this process calls
grpc.health.v1.Health/Check every 50 ms (each with the readiness probe's 3 s timeout; a check that
takes longer delays the next) on its own connection, for 20 s (`--health-seconds`). At t = 2 s a
separate client process (so that its Python does not delay this one's checks) starts at once 4
`orthogonal` float32 [4096, 4096] requests (seeds 1 to 4: four distinct QRs) and 4
"huge-validation" requests (100,000 variables each: shape [4], he_normal, names v0 to v99999),
each on its own connection, and reads each TO COMPLETION; whatever is still running when the
checks end (t = 20 s) is cancelled by the client then. Reported: p50 / p99 / max latency over all
checks and over those started from t = 2 s, the checks that failed or took over 3 s, how each heavy
request ended, and after / before for p99 and max.

Part 2, server RSS under the worst mixes. For each mix and server: a fresh server, a 4 MiB warm-up
fetch, idle = the median VmRSS over the next second, then VmHWM is reset (`echo 5 >
/proc/<pid>/clear_refs`) and VmRSS is sampled every 50 ms while the mix runs; growth = max(sampled
peak, VmHWM at the end) - idle. Mixes:

    a  8 streams of identity complex128 [4096, 4096] (256 MiB each, the same tensor), first chunk
       read, then left unread for 10 s, then cancelled by the client
    a2 the same with 8 distinct gains (8 different tensors: nothing to share)
    b  one broadcast of a 60 MiB uint8 base widened to complex128 [62914560] (960 MiB; the request
       is 60 MiB, the client's grpc.max_send_message_length raised), first chunk read, left unread
       10 s, cancelled
    c  4 concurrent streams with chunk_bytes = 1 of a float32 random_normal [2048, 2048] (16 MiB,
       seeds 1 to 4), each read as fast as this client can for 10 s from its first chunk, then
       cancelled
    d  64 streams (8 channels x 8) of a float32 random_normal [4096, 4096] (64 MiB, 64 distinct
       seeds), never read, held 10 s, then cancelled
    e  4 concurrent unauthenticated 60 MiB requests (mix b's) against a server started with
       --auth-token-file (the warm-up fetch carries the token)

Each request's end is reported as the status it ended with: the server's status when the call
ended by itself, "CANCELLED(client)" when this client cancelled it after the hold. Benchmarks
print figures; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import os
import platform
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from weightgen.v1 import weightgen_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from procstat import peak_rss, rss  # noqa: E402
from serverproc import launch  # noqa: E402

MiB = 1 << 20
MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
HEALTH = "/grpc.health.v1.Health/Check"
PROBE_TIMEOUT = 3.0
COMMON_FLAGS = ("--devices", "1", "--warm-precisions", "float32")
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own TCP connection
BIG_CHANNEL = [
    *OWN_CONNECTION,
    ("grpc.max_send_message_length", 128 * MiB),
    ("grpc.max_receive_message_length", 64 * MiB),
]
MIXES = ("a", "a2", "b", "c", "d", "e")


# -- requests ----------------------------------------------------------------------------------


def orthogonal_request(seed: int) -> bytes:
    init = pb.Initializer(orthogonal=pb.Orthogonal())
    return pb.MaterializeRequest(
        seed=seed, variables=[pb.VariableSpec(name="q", shape=[4096, 4096], dtype=pb.DTYPE_FLOAT32, initializer=init)]
    ).SerializeToString()


def huge_validation_request(seed: int, count: int = 100_000) -> bytes:
    init = pb.Initializer(he_normal=pb.HeNormal())
    request = pb.MaterializeRequest(seed=seed)
    for i in range(count):
        request.variables.add(name=f"v{i}", shape=[4], initializer=init)
    return request.SerializeToString()


def normal_request(seed: int, shape: list[int], chunk_bytes: int = 0, name: str = "w") -> bytes:
    init = pb.Initializer(random_normal=pb.RandomNormal(stddev=1.0))
    return pb.MaterializeRequest(
        seed=seed, chunk_bytes=chunk_bytes, variables=[pb.VariableSpec(name=name, shape=shape, initializer=init)]
    ).SerializeToString()


def identity_request(gain: float) -> bytes:
    init = pb.Initializer(identity=pb.Identity(gain=gain))
    return pb.MaterializeRequest(
        seed=1, variables=[pb.VariableSpec(name="eye", shape=[4096, 4096], dtype=pb.DTYPE_COMPLEX128, initializer=init)]
    ).SerializeToString()


@functools.cache
def broadcast_request() -> bytes:
    n = 60 * MiB  # 62914560
    base = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[n], data=bytes(range(256)) * (n // 256))
    init = pb.Initializer(broadcast=pb.Broadcast(base=base))
    return pb.MaterializeRequest(
        seed=1, variables=[pb.VariableSpec(name="wide", shape=[n], dtype=pb.DTYPE_COMPLEX128, initializer=init)]
    ).SerializeToString()


def materialize_stub(channel: grpc.Channel):
    return channel.unary_stream(MATERIALIZE, request_serializer=None, response_deserializer=None)


# -- process status ------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """VmRSS of `pid` every `interval` seconds, as (monotonic time, bytes)."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.samples.append((time.monotonic(), rss(self.pid)))
            except (OSError, AssertionError):
                return  # the process is gone
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}; nproc "
        f"{os.cpu_count()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def checkout(python: str) -> str:
    """The commit (and whether server/ has uncommitted changes) of the checkout `python` serves."""
    try:
        out = subprocess.run(
            [python, "-c", "import weightgen.server.service as s; print(s.__file__)"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        repo = Path(out.stdout.strip()).parents[1]
        git = ["git", "-C", str(repo)]
        head = subprocess.run([*git, "log", "-1", "--format=%h %ci"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "server", "proto"], capture_output=True, text=True, check=True
        )
        return f"{repo} at {head.stdout.strip()}" + (" + uncommitted server changes" if dirty.stdout.strip() else "")
    except (subprocess.SubprocessError, OSError, IndexError) as e:
        return f"unknown ({e})"


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


# -- servers -------------------------------------------------------------------------------------


class Servers:
    """Starts fresh servers, remembers each distinct command line for the report."""

    def __init__(self, workdir: Path, pythons: dict[str, str], extra: dict[str, list[str]]):
        self.workdir = workdir
        self.cache_dir = workdir / "xla-cache"
        self.pythons = pythons
        self.extra = extra
        self.commands: dict[str, list[str]] = collections.defaultdict(list)

    def start(self, which: str, *extra: str):
        server = launch(
            self.workdir / which,
            *COMMON_FLAGS,
            *self.extra.get(which, ()),
            *extra,
            cache_dir=self.cache_dir,
            python=self.pythons[which],
        )
        argv = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        argv = ["<port-file>" if a.endswith(".json") and "ports-" in a else a for a in argv]
        line = shlex.join(argv)
        if line not in self.commands[which]:
            self.commands[which].append(line)
        return server

    @staticmethod
    def stop(server) -> str:
        """SIGTERM, then SIGKILL after 10 s; the exit as text."""
        if server.proc.poll() is not None:
            return f"had exited ({server.proc.returncode})"
        server.proc.send_signal(signal.SIGTERM)
        try:
            return f"exit {server.proc.wait(10)}"
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
            return "SIGKILL (no exit 10 s after SIGTERM)"


# -- part 1: health checks under heavy requests ---------------------------------------------------


def load_process(address: str) -> None:
    """The heavy client of part 1 (run as `hostile.py --load ADDRESS`): builds its requests, says
    'ready', waits for 'go' on stdin, runs them all at once, prints one JSON line of results."""
    requests = [("orthogonal", orthogonal_request(seed)) for seed in range(1, 5)]
    requests += [("huge-validation", huge_validation_request(seed)) for seed in range(1, 5)]
    channels = [grpc.insecure_channel(address, options=OWN_CONNECTION) for _ in requests]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    go = time.monotonic()
    results: list[dict] = [{} for _ in requests]
    calls = [materialize_stub(c)(raw, timeout=120) for c, (_, raw) in zip(channels, requests, strict=True)]
    stopped = threading.Event()

    def one(i: int) -> None:
        kind, raw = requests[i]
        first = None
        messages = nbytes = 0
        code = "OK"
        try:
            for message in calls[i]:
                if first is None:
                    first = time.monotonic() - go
                messages += 1
                nbytes += len(message)
        except grpc.RpcError as e:
            code = "CANCELLED(client)" if stopped.is_set() and e.code() is grpc.StatusCode.CANCELLED else e.code().name
        results[i] = {
            "kind": kind,
            "code": code,
            "first_s": first,
            "end_s": time.monotonic() - go,
            "messages": messages,
            "bytes": nbytes,
            "request_bytes": len(raw),
        }

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    sys.stdin.readline()  # "stop": the end of the window; cancel what is still running
    stopped.set()
    for call in calls:
        call.cancel()
    for t in threads:
        t.join()
    print(json.dumps(results), flush=True)


def health_run(servers: Servers, which: str, window: float, start_at: float = 2.0) -> dict:
    from grpc_health.v1 import health_pb2

    server = servers.start(which)
    loader = subprocess.Popen(
        [sys.executable, __file__, "--load", server.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert loader.stdout.readline().strip() == "ready", "the load process did not start"
        checks: list[tuple[float, float, str]] = []  # (start since t0, seconds, outcome)
        with grpc.insecure_channel(server.address, options=OWN_CONNECTION) as channel:
            check = channel.unary_unary(
                HEALTH,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)  # connected before the clock starts
            t0 = time.monotonic()
            go = threading.Timer(start_at, lambda: (loader.stdin.write("go\n"), loader.stdin.flush()))
            go.start()
            while (started := time.monotonic()) - t0 < window:
                try:
                    reply = check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
                    outcome = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as e:
                    outcome = e.code().name
                checks.append((started - t0, time.monotonic() - started, outcome))
                time.sleep(max(0.0, started + 0.05 - time.monotonic()))
            go.join()
            loader.stdin.write("stop\n")
            loader.stdin.flush()
            load = json.loads(loader.stdout.readline())
        exit_text = servers.stop(server)
    finally:
        if loader.poll() is None:
            loader.kill()
        loader.wait()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    return {"checks": checks, "load": load, "exit": exit_text, "start_at": start_at, "window": window}


def health_summary(run: dict) -> dict:
    latencies = [s for _, s, _ in run["checks"]]
    during = [s for t, s, _ in run["checks"] if t >= run["start_at"]]
    bad = [o for _, s, o in run["checks"] if o != "SERVING" or s > PROBE_TIMEOUT]
    return {
        "n": len(latencies),
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "max": max(latencies),
        "during_p50": quantile(during, 0.5),
        "during_p99": quantile(during, 0.99),
        "bad": len(bad),
        "bad_kinds": dict(collections.Counter(bad)),
        "seconds": max(t + s for t, s, _ in run["checks"]),
    }


def print_health(runs: dict[str, dict]) -> None:
    window = next(iter(runs.values()))["window"]
    print(
        f"Part 1: Health/Check every 50 ms (timeout 3 s) for {window:g} s; 8 heavy requests start at t = 2 s, "
        f"read to completion or cancelled by the client at t = {window:g} s"
    )
    print()
    print("| server | checks | p50 ms | p99 ms | max ms | p50 / p99 ms from t=2 s | failed or > 3 s | heavy requests |")
    print("|---|---|---|---|---|---|---|---|")
    summaries = {}
    for which, run in runs.items():
        s = summaries[which] = health_summary(run)
        ended = collections.Counter(f"{r['kind']} {r['code']}" for r in run["load"])
        print(
            f"| {which} | {s['n']} | {s['p50'] * 1e3:.1f} | {s['p99'] * 1e3:.1f} | "
            f"{s['max'] * 1e3:.1f} | {s['during_p50'] * 1e3:.1f} / {s['during_p99'] * 1e3:.1f} | "
            f"{s['bad']}{' ' + str(s['bad_kinds']) if s['bad'] else ''} | "
            + ", ".join(f"{n} x {k}" for k, n in sorted(ended.items()))
            + " |"
        )
    if "before" in summaries and "after" in summaries:
        b, a = summaries["before"], summaries["after"]
        print()
        print(f"after / before: p99 {a['p99'] / b['p99']:.2f}x, max {a['max'] / b['max']:.2f}x")
    print()
    print("Heavy requests (seconds from their start: first message, end; status; messages; MiB received):")
    for which, run in runs.items():
        for r in run["load"]:
            first = f"{r['first_s']:.2f}" if r["first_s"] is not None else "-"
            print(
                f"  {which:6} {r['kind']:15} first {first:>6} s  end {r['end_s']:6.2f} s  {r['code']:18} "
                f"{r['messages']:7d} msgs {r['bytes'] / MiB:7.1f} MiB  (request {r['request_bytes'] / MiB:.1f} MiB)"
            )
        print(f"  {which:6} server: {run['exit']}")
    print()
    print("Slowest checks (t = start since the run began, s):")
    for which, run in runs.items():
        worst = sorted(run["checks"], key=lambda c: -c[1])[:5]
        print(f"  {which:6} " + ", ".join(f"{s * 1e3:.0f} ms at t={t:.1f} ({o})" for t, s, o in worst))


# -- part 2: RSS under hostile mixes --------------------------------------------------------------


class Stream:
    """One Materialize call on a sync channel, with what happened to it."""

    def __init__(self, channel: grpc.Channel, raw: bytes, metadata=None, timeout: float = 120.0):
        self.call = materialize_stub(channel)(raw, timeout=timeout, metadata=metadata)
        self.opened = time.monotonic()
        self.first_s: float | None = None
        self.messages = 0
        self.nbytes = 0
        self.code: str | None = None  # set when the call ended by itself (as seen by a read)
        self.cancelled_by_client = False

    def read_first(self) -> None:
        try:
            message = next(self.call)
            self.first_s = time.monotonic() - self.opened
            self.messages, self.nbytes = 1, len(message)
        except StopIteration:
            self.code = "OK"
        except grpc.RpcError as e:
            self.code = e.code().name

    def read_for(self, seconds: float) -> None:
        """Read as fast as possible until `seconds` have passed since the first message (the reading
        stops at the next message after that; a stream that stalls is cut by `finish`)."""
        try:
            for message in self.call:
                now = time.monotonic()
                if self.first_s is None:
                    self.first_s = now - self.opened
                self.messages += 1
                self.nbytes += len(message)
                if now - self.opened - self.first_s >= seconds:
                    return
            self.code = "OK"
        except grpc.RpcError as e:
            if not self.cancelled_by_client:
                self.code = e.code().name

    def finish(self) -> None:
        """Cancel the call unless it ended by itself."""
        if self.code is None:
            if self.call.done():
                self.code = self.call.code().name
            else:
                self.cancelled_by_client = True
                self.call.cancel()

    @property
    def outcome(self) -> str:
        read = "" if self.first_s is None else "first chunk, then " if self.messages == 1 else "read, then "
        return read + ("CANCELLED(client)" if self.cancelled_by_client else self.code or "?")


def threads_do(fn, items, cap: float) -> None:
    threads = [threading.Thread(target=fn, args=(item,), daemon=True) for item in items]
    for t in threads:
        t.start()
    deadline = time.monotonic() + cap
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def mix_first_then_hold(address: str, requests: list[bytes], hold: float, options=None) -> list[Stream]:
    channels = [grpc.insecure_channel(address, options=options or []) for _ in requests]
    try:
        streams = [Stream(c, raw) for c, raw in zip(channels, requests, strict=True)]
        threads_do(Stream.read_first, streams, cap=60.0)  # a first chunk slower than 60 s counts as held
        time.sleep(hold)
        for s in streams:
            s.finish()
        return streams
    finally:
        time.sleep(0.2)
        for c in channels:
            c.close()


def mix_a(address: str, hold: float, _: str) -> list[Stream]:
    return mix_first_then_hold(address, [identity_request(1.0)] * 8, hold)


def mix_a2(address: str, hold: float, _: str) -> list[Stream]:
    return mix_first_then_hold(address, [identity_request(1.0 + i) for i in range(8)], hold)


def mix_b(address: str, hold: float, _: str) -> list[Stream]:
    return mix_first_then_hold(address, [broadcast_request()], hold, options=BIG_CHANNEL)


def mix_c(address: str, hold: float, _: str) -> list[Stream]:
    channels = [grpc.insecure_channel(address) for _ in range(4)]
    try:
        streams = [Stream(c, normal_request(seed, [2048, 2048], chunk_bytes=1)) for seed, c in enumerate(channels, 1)]
        threads_do(lambda s: s.read_for(hold), streams, cap=hold + 30)
        for s in streams:
            s.finish()
        return streams
    finally:
        time.sleep(0.2)
        for c in channels:
            c.close()


def mix_d(address: str, hold: float, _: str) -> list[Stream]:
    channels = [grpc.insecure_channel(address) for _ in range(8)]
    try:
        streams = [Stream(channels[i % 8], normal_request(100 + i, [4096, 4096])) for i in range(64)]
        time.sleep(hold)
        for s in streams:
            s.finish()
        return streams
    finally:
        time.sleep(0.2)
        for c in channels:
            c.close()


def mix_e(address: str, hold: float, _: str) -> list[Stream]:
    channels = [grpc.insecure_channel(address, options=BIG_CHANNEL) for _ in range(4)]
    try:
        streams = [Stream(c, broadcast_request(), timeout=60) for c in channels]
        threads_do(Stream.read_first, streams, cap=60.0)
        time.sleep(1.0)
        for s in streams:
            s.finish()
        return streams
    finally:
        time.sleep(0.2)
        for c in channels:
            c.close()


MIX_FUNCTIONS = {"a": mix_a, "a2": mix_a2, "b": mix_b, "c": mix_c, "d": mix_d, "e": mix_e}
MIX_TITLES = {
    "a": "a: 8 x identity complex128 [4096,4096] (same tensor), first chunk, unread",
    "a2": "a2: 8 x identity complex128 [4096,4096], 8 gains, first chunk, unread",
    "b": "b: broadcast 60 MiB uint8 -> complex128 [62914560], first chunk, unread",
    "c": "c: 4 x chunk_bytes=1 of float32 16 MiB, read 10 s from the first chunk",
    "d": "d: 64 never-read streams of float32 64 MiB",
    "e": "e: 4 x unauthenticated 60 MiB requests (--auth-token-file)",
}


def rss_run(servers: Servers, which: str, mix: str, hold: float, token_file: Path) -> dict:
    extra = ("--auth-token-file", str(token_file)) if mix == "e" else ()
    metadata = (("authorization", "Bearer " + token_file.read_text().strip()),) if mix == "e" else None
    server = servers.start(which, *extra)
    pid = server.proc.pid
    sampler = Sampler(pid)
    try:
        with grpc.insecure_channel(server.address) as channel:
            warm = normal_request(1, [1024, 1024], name="warm")
            for _ in materialize_stub(channel)(warm, timeout=60, metadata=metadata):
                pass
        sampler.start()
        time.sleep(1.0)
        idle = int(statistics.median(b for _, b in sampler.samples))
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        began = time.monotonic()
        streams = MIX_FUNCTIONS[mix](server.address, hold, which)
        ended = time.monotonic()
        hwm = peak_rss(pid) if server.proc.poll() is None else 0
        time.sleep(2.0)
        after = rss(pid) if server.proc.poll() is None else 0
    finally:
        sampler.stop()
        exit_text = Servers.stop(server)
    during = [b for t, b in sampler.samples if began <= t <= ended + 0.1] or [0]
    peak = max(*during, hwm)
    outcomes = collections.Counter(s.outcome for s in streams)
    firsts = [s.first_s for s in streams if s.first_s is not None]
    return {
        "idle": idle,
        "sampled": max(during),
        "hwm": hwm,
        "growth": peak - idle,
        "after": after,
        "seconds": ended - began,
        "outcomes": ", ".join(f"{n} x {o}" for o, n in sorted(outcomes.items())),
        "first_max": max(firsts) if firsts else None,
        "messages": sum(s.messages for s in streams),
        "exit": exit_text,
    }


def print_rss(results: dict[str, dict[str, dict]]) -> None:
    print("Part 2: server RSS growth = max(sampled VmRSS peak, VmHWM) - idle after a warm-up; a fresh server per mix")
    print()
    print("| mix | before growth MiB | after growth MiB | after / before | before: requests ended | after: ended |")
    print("|---|---|---|---|---|---|")
    for mix, by_server in results.items():
        b, a = by_server.get("before"), by_server.get("after")
        ratio = f"{a['growth'] / b['growth']:.2f}x" if a and b and b["growth"] > 0 else "-"
        print(
            f"| {MIX_TITLES[mix]} | {b['growth'] / MiB:.0f} | " if b else f"| {MIX_TITLES[mix]} | - | ",
            end="",
        )
        print(
            (f"{a['growth'] / MiB:.0f} | " if a else "- | ")
            + f"{ratio} | {b['outcomes'] if b else '-'} | {a['outcomes'] if a else '-'} |"
        )
    print()
    columns = (
        "mix",
        "server",
        "idle MiB",
        "sampled peak MiB",
        "VmHWM MiB",
        "growth MiB",
        "RSS 2 s later MiB",
        "mix s",
        "slowest first chunk s",
        "messages read",
        "server stop",
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for mix, by_server in results.items():
        for which, r in by_server.items():
            first = f"{r['first_max']:.2f}" if r["first_max"] is not None else "-"
            print(
                f"| {mix} | {which} | {r['idle'] / MiB:.0f} | {r['sampled'] / MiB:.0f} | {r['hwm'] / MiB:.0f} | "
                f"{r['growth'] / MiB:.0f} | {r['after'] / MiB:.0f} | {r['seconds']:.1f} | {first} | "
                f"{r['messages']} | {r['exit']} |"
            )


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-before", default="/work/wt-before/.venv/bin/python")
    parser.add_argument("--python-after", default=sys.executable)
    parser.add_argument("--only", choices=("before", "after", "both"), default="both")
    parser.add_argument(
        "--after-args", default="", help="extra flags for the AFTER server only (experiments; default none)"
    )
    parser.add_argument("--parts", default="health,rss", help="health, rss or both (comma-separated)")
    parser.add_argument("--mixes", default=",".join(MIXES), help=f"RSS mixes to run, of {','.join(MIXES)}")
    parser.add_argument("--health-seconds", type=float, default=20.0, help="part 1's window")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the RSS mixes hold their streams")
    parser.add_argument("--load", metavar="ADDRESS", help=argparse.SUPPRESS)  # part 1's client process
    args = parser.parse_args()
    if args.load:
        load_process(args.load)
        return
    which_servers = ("before", "after") if args.only == "both" else (args.only,)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    unknown = set(mixes) - set(MIXES)
    if unknown:
        parser.error(f"unknown mixes {sorted(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="weightgen-hostile-"))
    token_file = workdir / "tokens"
    token_file.write_text(secrets.token_hex(16) + "\n")
    servers = Servers(
        workdir, {"before": args.python_before, "after": args.python_after}, {"after": shlex.split(args.after_args)}
    )
    command = shlex.join([".venv/bin/python", "bench/hostile.py", *sys.argv[1:]])
    print("weightgen hostile clients (issue 10)")
    print(f"Command: {command}")
    print(f"Start: {machine_line()}")
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}, grpcio {grpc.__version__}")
    for which in which_servers:
        print(f"{which}: {servers.pythons[which]}, serving {checkout(servers.pythons[which])}")
    started = time.monotonic()
    if "health" in parts:
        runs = {}
        for which in which_servers:
            runs[which] = health_run(servers, which, args.health_seconds)
            print(f"  [{which} health run done, {machine_line()}]", flush=True)
        print()
        print_health(runs)
        print()
    if "rss" in parts:
        results: dict[str, dict[str, dict]] = {}
        for mix in mixes:
            results[mix] = {}
            for which in which_servers:
                results[mix][which] = rss_run(servers, which, mix, args.hold, token_file)
                print(
                    f"  [mix {mix} {which}: growth {results[mix][which]['growth'] / MiB:.0f} MiB; {machine_line()}]",
                    flush=True,
                )
        print()
        print_rss(results)
        print()
    print(f"End: {machine_line()}; {time.monotonic() - started:.0f} s in all")
    for which in which_servers:
        print(f"{which} at the end: {checkout(servers.pythons[which])}")
    print("Server commands (each run a fresh process):")
    for which, lines in servers.commands.items():
        for line in lines:
            print(f"  {which}: {line}")
    print(f"Part 1 heavy client: {sys.executable} bench/hostile.py --load <address>")


if __name__ == "__main__":
    main()
