"""Nothing heavy runs on the event loop: while whole-tensor builds (orthogonal [4096, 4096]) and huge
validations (one request of 100,000 variables) are in progress, the server still answers every
health Check within the readiness probe's timeout (3 s). Before issue 10's fixes the orthogonal
build, and the planning of a huge request, ran on the loop: probes timed out for tens of seconds
and Kubernetes took a busy replica out of service (or restarted it)."""

from __future__ import annotations

import signal
import statistics
import subprocess
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procstat import cpu_seconds
from service.helpers import assert_serves, init, metric, var

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

PROBE_TIMEOUT = 3.0  # the readiness probe's own timeout (deploy/base/deployment.yaml: timeoutSeconds: 3)
PROBED = "weightgen.v1.WeightGen"  # the service name the readiness probe checks
POLL_EVERY = 0.1
POLL_SECONDS = 15.0
ORTHOGONAL = var("q", [4096, 4096], init(orthogonal={}))  # float32: a 4096 x 4096 QR, ~18 s of CPU here
HUGE_VARIABLES = 100_000
LOAD = 4  # of each kind
SERVING = health_pb2.HealthCheckResponse.SERVING


def huge_request(seed: int) -> pb.MaterializeRequest:
    """One Materialize of 100,000 small variables: tens of seconds of parsing, checking and planning."""
    variables = [var(f"v{i}", [4], init(he_normal={})) for i in range(HUGE_VARIABLES)]
    return pb.MaterializeRequest(seed=seed, variables=variables)


class Load:
    """Streams read slowly on threads until `stop`, then cancelled; ends with what each saw."""

    def __init__(self):
        self.stop = threading.Event()
        self.calls: list = []
        self.chunks: list[int] = []
        self.errors: list[tuple[str, grpc.StatusCode]] = []
        self._threads: list[threading.Thread] = []

    def start(self, label: str, call, pause: float) -> None:
        index = len(self.calls)
        self.calls.append(call)
        self.chunks.append(0)

        def read() -> None:
            try:
                for _ in call:
                    self.chunks[index] += 1
                    if self.stop.wait(pause):
                        return
            except grpc.RpcError as error:
                if not self.stop.is_set():
                    self.errors.append((label, error.code()))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        self._threads.append(thread)

    def end(self) -> None:
        self.stop.set()
        for call in self.calls:
            call.cancel()
        for thread in self._threads:
            thread.join(30)


def shut_down(server, within: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `within` seconds: how fast the
    server exits with builds in flight is tests/security/test_cancel_and_drain.py's subject."""
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(within)
        print(f"server exited with {code} {time.monotonic() - t0:.1f} s after SIGTERM")
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
        print(f"server still running {within:g} s after SIGTERM: killed")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_health_answers_while_builds_and_validations_run(start_server):
    server = start_server("--warm-precisions", "float32", "--grace-seconds", "1")
    pid = server.proc.pid
    huge = [huge_request(seed) for seed in range(1, LOAD + 1)]  # built before the clock starts
    latencies: list[float] = []
    failures: list[str] = []
    statuses: list[int] = []
    done = threading.Event()

    with grpc.insecure_channel(server.address) as probe_channel, grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        assert_serves(stub)
        probe = health_pb2_grpc.HealthStub(probe_channel)
        check = health_pb2.HealthCheckRequest(service=PROBED)
        assert probe.Check(check, timeout=PROBE_TIMEOUT).status == SERVING  # its connection is up

        def poll() -> None:
            started = time.monotonic()
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    statuses.append(probe.Check(check, timeout=PROBE_TIMEOUT).status)
                    latencies.append(time.perf_counter() - t0)
                except grpc.RpcError as error:
                    failures.append(f"at {time.monotonic() - started:.1f} s: {error.code().name} {error.details()}")
                done.wait(max(0.0, POLL_EVERY - (time.perf_counter() - t0)))

        poller = threading.Thread(target=poll, daemon=True)
        load = Load()
        in_progress: list[int] = []  # streams in progress, from /metrics (its own thread), once a second
        cpu_before = cpu_seconds(pid)
        poller.start()
        try:
            for seed in range(1, LOAD + 1):
                request = pb.MaterializeRequest(seed=seed, variables=[ORTHOGONAL])
                load.start("orthogonal", stub.Materialize(request, timeout=300), pause=0.5)
            for request in huge:
                load.start("huge", stub.Materialize(request, timeout=300), pause=0.05)
            del huge
            deadline = time.monotonic() + POLL_SECONDS
            while time.monotonic() < deadline:
                time.sleep(1.0)
                in_progress.append(int(metric(server, "weightgen_active_streams")))
        finally:
            done.set()
            poller.join(PROBE_TIMEOUT + 5)
            cpu = cpu_seconds(pid) - cpu_before
            load.end()
            shut_down(server)

    checks = len(latencies) + len(failures)
    report = (
        f"{checks} health checks in {POLL_SECONDS:g} s under load: {len(failures)} failed; latency "
        f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms, mean {statistics.fmean(latencies) * 1000:.1f} ms"
        if latencies
        else f"{checks} health checks, none answered"
    )
    report += f"; server CPU {cpu:.1f} s; streams in progress each second {in_progress}; chunks read {load.chunks}"
    print(report)
    assert not failures, f"{report}\nfailed checks:\n" + "\n".join(failures[:20])
    assert all(s == SERVING for s in statuses), (report, set(statuses))
    assert checks >= POLL_SECONDS / (POLL_EVERY + PROBE_TIMEOUT), report  # the poller really polled
    assert max(latencies) < PROBE_TIMEOUT, report
    # The load was real: the streams were still in progress and the server was busy computing.
    assert not load.errors, (report, load.errors)
    # All 8 were admitted and still in progress at the end (none refused, none done).
    assert in_progress and in_progress[-1] == 2 * LOAD, (report, in_progress)
    assert cpu > 3.0, report
