"""Fleet failover: what a client's 1 GiB fetch loses to a replica kill and to a rolling restart,
against the same fetch undisturbed, in one run (issue 11).

    .venv/bin/python bench/fleet.py [--mib 1024] [--repeats 5]

Three replicas (`python -m weightgen.server --devices 1 --warm-precisions float32`, one shared
`--session-keys-file`, one XLA compilation cache in a temporary directory) on loopback ports, and
one `weightgen.client.Client` on the balanced target ``ipv4:127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3``
(round_robin; default retry budget, `retry_seconds` 120). Every fetch is the same float32
`random_normal` tensor (`[--mib * 256, 1024]`, seed 11) with `Client.materialize`, timed from the
call to its return (the numpy array complete and every digest verified). Scenarios, run in turn
within each of `--repeats` rounds (each round in a rotated order, 3 s of rest before each fetch)
so that the machine's load drifts over all of them alike; each grace period has its own fleet of
three, started before the first round:

- undisturbed: nothing happens during the fetch;
- kill: at 25 % of the bytes, the replica serving the stream (weightgen_active_streams) is
  SIGKILLed and started again on its port at once, as a crashed pod would be; the client resumes
  on another replica from the first byte it lacks;
- rolling (grace G s): at 10 % of the bytes a rolling restart begins: SIGTERM the replica serving
  the stream (the worst case), wait for it to exit, start it on its port, wait for SERVING, then the
  next replica, and so on for all three. With the deployment's grace (`--grace-seconds`, 30 s,
  deploy/base/config.env) the stream finishes on its draining replica; with a short grace
  (`--short-grace`, 2 s) the drain cuts it and the client resumes elsewhere.

For each fetch: wall seconds, the longest wait between two chunks the client received (the
stall a failover costs), the bytes the client received on the wire (every chunk, all
attempts: must be exactly the tensor's size, nothing refetched), its calls (1 + resumes), and the
SHA-256 of the result, which must be the undisturbed fetch's. Ratios are medians over the rounds
against the undisturbed median of the same run. The chunk tap is the tests' fault interceptor
(tests/faultwire.py, given to the Client as `interceptors=`), used read-only.

Then two measurements that explain the figures: the time to the first chunk of a call resumed
at 0, 1/4 and 3/4 of the tensor on one replica (a resumed stream regenerates and hashes the bytes
before its offset, so that its last chunk carries the whole tensor's digest), and the latency of
40 small fetches through the balanced Client while a replica drains (a held stream keeps it
draining for the grace period), with the Client's round_robin and with round_robin that
health-checks replicas (`healthCheckConfig`, grpc.health.v1 Watch: a draining replica is
NOT_SERVING).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SEED = 11
SETTLE_SECONDS = 3.0
"""A pause before every fetch, outside the timing: replicas just restarted by the previous scenario
settle (their start-up's threads and compilation-cache reads) before the next fetch is timed."""


class Tap:
    """Every chunk that reached the client, by attempt (a faultwire.Faults hook, returning each unchanged)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.attempts = 0
        self.last: float | None = None
        self.stall = 0.0  # the longest wait between two chunks

    def __call__(self, attempt, chunk):
        now = time.perf_counter()
        if self.last is not None:
            self.stall = max(self.stall, now - self.last)
        self.last = now
        self.bytes += chunk.data.nbytes
        self.attempts = max(self.attempts, attempt + 1)
        return chunk


def serving(fleet, timeout: float = 30.0) -> int:
    """The replica with a stream in progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = fleet.active()
        if max(active) >= 1:
            return active.index(max(active))
        time.sleep(0.01)
    raise RuntimeError("no replica is serving the stream")


def fetch(fleet, variable, trigger_at: float | None, action) -> dict:
    """One timed fetch; `action(fleet)` runs in a thread once `trigger_at` of the bytes arrived."""
    from faultwire import Faults

    from weightgen.client import Client

    fired = threading.Event()
    done = threading.Event()
    outcome: dict = {}

    def on_progress(got: int, total: int) -> None:
        if trigger_at is not None and not fired.is_set() and got >= trigger_at * total:
            fired.set()

    def disturb() -> None:
        if not fired.wait(600):
            return
        try:
            outcome.update(action(fleet, done) or {})
        except BaseException as error:  # reported with the result
            outcome["action_error"] = error

    disturber = threading.Thread(target=disturb, daemon=True) if action else None
    if disturber:
        disturber.start()
    tap = Tap()
    progress: list[int] = []
    with Client(fleet.target, interceptors=[Faults(tap)]) as client:
        assert client.balanced
        client.list_initializers()  # connected to every replica before the clock starts
        started = time.perf_counter()
        try:
            arrays = client.materialize(
                [variable], seed=SEED, progress=lambda got, total: (progress.append(got), on_progress(got, total))
            )
        finally:
            done.set()
            fired.set()  # an action that never triggered does nothing
        wall = time.perf_counter() - started
    array = next(iter(arrays.values()))
    sha = hashlib.sha256(array.view("uint8")).hexdigest()
    del arrays, array
    if disturber:
        disturber.join(600)
    if "action_error" in outcome:
        raise outcome["action_error"]
    return {
        "wall": wall,
        "wire": tap.bytes,
        "received": progress[-1],
        "calls": tap.attempts,
        "stall": tap.stall,
        "sha": sha,
        **outcome,
    }


def kill(fleet, done) -> dict:
    victim = serving(fleet)
    fleet.stop(victim, signal.SIGKILL)
    fleet.start(victim)  # at once, as a crashed pod is restarted; concurrent with the fetch
    return {"note": f"killed replica {victim}"}


def rolling(fleet, done) -> dict:
    first = serving(fleet)
    order = [first] + [i for i in range(len(fleet.replicas)) if i != first]
    began_during = 0
    for i in order:
        began_during += not done.is_set()
        code = fleet.stop(i, signal.SIGTERM, timeout=120)
        if code != 0:
            raise RuntimeError(f"replica {i} exited {code} on SIGTERM:\n{fleet.logs(i)[-3000:]}")
        fleet.start(i)
    return {"note": f"{began_during}/{len(order)} drains began during the fetch"}


def resume_ttfb(server, variable, nbytes: int, repeats: int = 3) -> dict[float, float]:
    """Median seconds to the first chunk of a call for `variable` resumed at 0, 1/4 and 3/4 of its
    bytes, on one replica: what a resumed call pays before its first byte."""
    from weightgen.client import Client

    out = {}
    with Client(server.address) as client:
        client.list_initializers()
        for fraction in (0.0, 0.25, 0.75):
            spec = variable.to_proto()
            spec.resume_offset = int(nbytes * fraction) // 4 * 4
            request = client.request([spec], seed=SEED)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                chunks = client.iter_chunks(request)
                next(chunks)
                times.append(time.perf_counter() - started)
                chunks.close()
            out[fraction] = statistics.median(times)
    return out


HEALTH_CHECKED = (
    '{"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": "weightgen.v1.WeightGen"}}'
)
"""round_robin that skips replicas whose health (grpc.health.v1 Watch) is not SERVING."""


def during_a_drain(fleet, calls: int = 40) -> dict[str, list[float]]:
    """Latencies of `calls` small fetches through the balanced Client while replica 0 drains (a
    stream it serves holds the drain for the grace period), with the Client's default round_robin
    and with health-checked round_robin; then replica 0 is started again."""
    import grpc

    from weightgen.client import Client, Variable
    from weightgen.v1 import weightgen_pb2 as pb
    from weightgen.v1 import weightgen_pb2_grpc

    def latencies(**kwargs) -> list[float]:
        out = []
        with Client(fleet.target, **kwargs) as client:
            client.list_initializers()
            time.sleep(0.5)  # every subchannel connected (and health-checked)
            for i in range(calls):
                started = time.perf_counter()
                client.materialize([Variable("small", (64,), "he")], seed=i + 1)
                out.append(time.perf_counter() - started)
        return out

    result = {"no drain": latencies()}
    with grpc.insecure_channel(fleet.replicas[0].address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        held = stub.Materialize(
            pb.MaterializeRequest(seed=1, variables=[Variable("held", (16384, 16384), "random_normal").to_proto()]),
            timeout=120,
        )
        next(held)  # then unread: replica 0's drain lasts the grace period
        fleet.replicas[0].proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        result["draining, Client default"] = latencies()
        result["draining, health-checked round_robin"] = latencies(options=[("grpc.service_config", HEALTH_CHECKED)])
        held.cancel()
    fleet.stop(0, signal.SIGTERM, timeout=120)
    fleet.start(0)
    return result


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="the tensor's size [%(default)s MiB]")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every scenario [%(default)s]")
    parser.add_argument("--grace-seconds", type=float, default=30.0, help="the deployment's grace [%(default)s]")
    parser.add_argument("--short-grace", type=float, default=2.0, help="a grace that cuts the stream [%(default)s]")
    args = parser.parse_args()

    import jax
    from fleet.conftest import Fleet

    from weightgen.client import Variable

    load_start = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc)
    nbytes = args.mib << 20
    variable = Variable("fleet", (args.mib * 256, 1024), "random_normal")
    scenarios = [
        ("undisturbed", None, None, args.grace_seconds),
        ("kill", 0.25, kill, args.grace_seconds),
        (f"rolling (grace {args.grace_seconds:g} s)", 0.10, rolling, args.grace_seconds),
        (f"rolling (grace {args.short_grace:g} s)", 0.10, rolling, args.short_grace),
    ]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in scenarios}
    with tempfile.TemporaryDirectory() as tmp:
        fleets: dict[float, Fleet] = {}
        try:
            for grace in dict.fromkeys(g for *_, g in scenarios):  # one fleet per grace period, all up now
                root = Path(tmp) / f"grace-{grace:g}"
                root.mkdir()
                fleets[grace] = fleet = Fleet(root, Path(tmp) / "xla")
                fleet.grace = grace
                fleet.start(0)
                fleet.start_all()
            for round_ in range(args.repeats):
                # Each round in another order, so that no scenario always follows the same one.
                shift = round_ % len(scenarios)
                for name, at, action, grace in scenarios[shift:] + scenarios[:shift]:
                    time.sleep(SETTLE_SECONDS)
                    run = fetch(fleets[grace], variable, at, action)
                    runs[name].append(run)
                    print(
                        f"  {name}: {run['wall']:.2f} s, {run['calls']} call(s), longest stall {run['stall']:.2f} s; "
                        f"{run.get('note', '')}",
                        flush=True,
                    )
            any_fleet = fleets[args.grace_seconds]
            ttfb = resume_ttfb(any_fleet.replicas[1], variable, nbytes)
            drain = during_a_drain(any_fleet)
        finally:
            for fleet in fleets.values():
                fleet.stop_all(signal.SIGKILL)
    load_end = os.getloadavg()

    reference = runs["undisturbed"][0]["sha"]
    for name, rs in runs.items():
        for r in rs:
            assert r["sha"] == reference, f"{name}: the bytes differ from the undisturbed fetch's"
            assert r["wire"] == r["received"] == nbytes, f"{name}: {r['wire']} bytes on the wire for {nbytes}"
    base = statistics.median(r["wall"] for r in runs["undisturbed"])

    print()
    print(f"weightgen fleet bench, {date:%Y-%m-%d %H:%M} UTC, commit {git_head()} (+ working tree)")
    print(
        f"python {platform.python_version()}, jax {jax.__version__}, nproc {os.cpu_count()}, load average "
        f"{' '.join(f'{x:.2f}' for x in load_start)} at the start, {' '.join(f'{x:.2f}' for x in load_end)} "
        "at the end (the machine is shared)"
    )
    print(
        f"3 replicas (--devices 1), one balanced Client (round_robin); tensor random_normal float32 "
        f"{list(variable.shape)} = {nbytes / 2**20:.0f} MiB; {args.repeats} rounds"
    )
    print()
    columns = ["scenario", "wall s (median)", "wall s (each)", "/ undisturbed", "lost s", "calls", "longest stall s"]
    print("| " + " | ".join([*columns, "bytes received", "same bytes"]) + " |")
    print("|---|---:|---|---:|---:|---|---|---:|---|")
    for name, rs in runs.items():
        median = statistics.median(r["wall"] for r in rs)
        each = ", ".join(f"{r['wall']:.2f}" for r in rs)
        calls = ", ".join(str(r["calls"]) for r in rs)
        stalls = ", ".join(f"{r['stall']:.2f}" for r in rs)
        received = {r["received"] for r in rs}
        print(
            f"| {name} | {median:.2f} | {each} | {median / base:.2f}x | {median - base:+.2f} | {calls} | {stalls} "
            f"| {'/'.join(str(x) for x in received)} | yes |"
        )
    notes = {name: sorted({r["note"] for r in rs if "note" in r}) for name, rs in runs.items()}
    for name, ns in notes.items():
        if ns:
            print(f"{name}: {'; '.join(ns)}")

    print()
    print(
        "Seconds to the first chunk of a call resumed on one replica (median of 3): "
        + ", ".join(f"at {fraction:.0%} of the bytes {seconds:.3f}" for fraction, seconds in ttfb.items())
    )
    print()
    print(f"{len(drain['no drain'])} small fetches (64 float32) through the balanced Client, replica 0 draining:")
    print("| round_robin | median ms | p90 ms | max ms | calls > 60 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, measured in drain.items():
        times = sorted(measured)
        p90 = times[int(0.9 * (len(times) - 1))]
        slow = sum(t > 0.06 for t in times)
        print(f"| {name} | {times[len(times) // 2] * 1e3:.0f} | {p90 * 1e3:.0f} | {times[-1] * 1e3:.0f} | {slow} |")


if __name__ == "__main__":
    main()
