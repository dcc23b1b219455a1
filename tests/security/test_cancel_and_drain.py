"""A cancelled call stops all its work, and a drain honours its grace period.

Huge requests (100,000 variables each: tens of seconds of parsing, checking and planning) that
their clients cancel must leave the server idle at once: before issue 10's fixes validation ran on
to the end for every cancelled request, and SIGTERM waited for it. On SIGTERM the process exits
0 within --grace-seconds plus a margin (the deployment gives 10 s more: terminationGracePeriodSeconds
45 = preStop 5 + grace 30 + 10), whether the requests in validation were cancelled or not."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc
from procstat import cpu_seconds
from service.helpers import assert_serves, good_request, init, metric, var, wait_for

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

GRACE = 5.0
MARGIN = 10.0
HUGE_VARIABLES = 100_000
CANCELLED_AT_ONCE = 12
CANCEL_AFTER = 0.2
IDLE_WINDOW = 3.0
IDLE_CPU = 0.5  # CPU seconds the server may use in IDLE_WINDOW once every call is cancelled


def huge_request() -> pb.MaterializeRequest:
    variables = [var(f"v{i}", [4], init(he_normal={})) for i in range(HUGE_VARIABLES)]
    return pb.MaterializeRequest(seed=1, variables=variables)


HUGE = huge_request()


def start_and_cancel(stub, count: int) -> list:
    """`count` huge requests at once, each cancelled CANCEL_AFTER seconds after it started."""
    calls = []
    for seed in range(1, count + 1):
        request = pb.MaterializeRequest()
        request.CopyFrom(HUGE)
        request.seed = seed
        calls.append((time.monotonic(), stub.Materialize(request, timeout=120)))
    for started, call in calls:
        time.sleep(max(0.0, started + CANCEL_AFTER - time.monotonic()))
        call.cancel()
    return [call for _, call in calls]


def outcome(call) -> grpc.StatusCode:
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def exit_seconds(server, within: float) -> tuple[float, int | None]:
    """Seconds from SIGTERM to the process's exit and its code; (within, None) if it was still
    running then (it is killed: a failing case must not hang the run)."""
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(within)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
        return within, None
    return time.monotonic() - t0, code


def test_cancelled_validations_stop_and_sigterm_exits_within_grace(start_server):
    server = start_server("--grace-seconds", str(GRACE), "--warm-precisions", "float32")
    pid = server.proc.pid
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        assert_serves(stub)
        cancelled = metric(server, "weightgen_requests_total", method="Materialize", code="CANCELLED")
        time.sleep(0.5)
        t0 = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW)
        idle = cpu_seconds(pid) - t0

        calls = start_and_cancel(stub, CANCELLED_AT_ONCE)
        assert [outcome(call) for call in calls] == [grpc.StatusCode.CANCELLED] * CANCELLED_AT_ONCE
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "the cancelled streams to end", 30)
        ended = metric(server, "weightgen_requests_total", method="Materialize", code="CANCELLED") - cancelled
        t0 = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW)
        after_cancel = cpu_seconds(pid) - t0

        t0 = time.perf_counter()
        got = list(stub.Materialize(good_request("canary"), timeout=30))
        canary = time.perf_counter() - t0
        assert len(got) == 1 and len(got[0].data) == 8 * 4 * 4 and got[0].last

        # Again, and SIGTERM right after the cancels.
        calls = start_and_cancel(stub, CANCELLED_AT_ONCE)
        seconds, code = exit_seconds(server, GRACE + MARGIN)
        codes = [outcome(call) for call in calls]

    report = (
        f"server CPU in {IDLE_WINDOW:g} s: idle {idle:.2f} s, after {CANCELLED_AT_ONCE} cancelled huge requests "
        f"{after_cancel:.2f} s ({ended:g} ended CANCELLED on the server); canary fetch {canary * 1000:.0f} ms; "
        f"SIGTERM after {CANCELLED_AT_ONCE} cancels: exit {code} after {seconds:.2f} s"
    )
    print(report)
    assert after_cancel < IDLE_CPU, report
    assert code == 0 and seconds < GRACE + MARGIN, f"{report}\n{server.log()[-3000:]}"
    assert codes == [grpc.StatusCode.CANCELLED] * CANCELLED_AT_ONCE, codes
    assert '"stopped"' in server.log()


def test_sigterm_during_validation_exits_within_grace(start_server):
    """Requests that nobody cancels, still in validation at SIGTERM: the drain waits for them for
    the grace period, then cancels them (UNAVAILABLE, the cue to retry elsewhere), and exits 0."""
    server = start_server("--grace-seconds", str(GRACE), "--warm-precisions", "float32")
    results: list[tuple[int, grpc.StatusCode]] = []
    first_chunks: list[int] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        assert_serves(stub)

        def fetch(seed: int) -> None:
            request = pb.MaterializeRequest()
            request.CopyFrom(HUGE)
            request.seed = seed
            code = grpc.StatusCode.OK
            try:
                for _ in stub.Materialize(request, timeout=120):
                    first_chunks.append(seed)
            except grpc.RpcError as error:
                code = error.code()
            results.append((seed, code))

        threads = [threading.Thread(target=fetch, args=(seed,), daemon=True) for seed in range(1, 5)]
        for thread in threads:
            thread.start()
        wait_for(lambda: metric(server, "weightgen_active_streams") == 4, "4 requests admitted", 30)
        # The premise: none of them has got past validation (no chunk yet; planning 100,000 variables
        # takes seconds, and two wait for a validation slot).
        assert not first_chunks, first_chunks
        seconds, code = exit_seconds(server, GRACE + MARGIN)
        for thread in threads:
            thread.join(30)

    report = f"SIGTERM with 4 huge requests in validation: exit {code} after {seconds:.2f} s"
    print(report)
    assert code == 0 and seconds < GRACE + MARGIN, f"{report}\n{server.log()[-3000:]}"
    assert seconds >= GRACE - 0.5, f"{report}: the drain did not wait for the requests in progress"
    assert sorted(results) == [(seed, grpc.StatusCode.UNAVAILABLE) for seed in range(1, 5)], results
    assert not first_chunks, first_chunks


ORTHOGONAL = var("q", [4096, 4096], init(orthogonal={}))  # a whole-tensor build: ~18 s of QR alone here


def test_cancelled_whole_tensor_builds_end_and_sigterm_exits_within_grace(start_server):
    """Whole-tensor builds (4 orthogonal [4096, 4096]) cancelled while they run: the draws of
    normals stop at once, a QR already inside LAPACK cannot be interrupted and finishes (at most
    --max-structured-builds of them, SECURITY.md), then the server is idle; and SIGTERM is not held
    up by them."""
    server = start_server("--grace-seconds", str(GRACE), "--warm-precisions", "float32")
    pid = server.proc.pid
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        assert_serves(stub)
        calls = [
            stub.Materialize(pb.MaterializeRequest(seed=seed, variables=[ORTHOGONAL]), timeout=120)
            for seed in range(1, 5)
        ]
        time.sleep(2.0)  # the builds are under way (none has sent a chunk: a build takes far longer)
        builds = metric(server, "weightgen_whole_building")
        for call in calls:
            call.cancel()
        codes = [outcome(call) for call in calls]
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "the cancelled streams to end", 30)
        cancelled_at = time.monotonic()
        # The builds in LAPACK end by themselves, and no new one starts for the cancelled calls.
        wait_for(lambda: metric(server, "weightgen_whole_building") == 0, "the running builds to end", 60)
        drained = time.monotonic() - cancelled_at
        started = metric(server, "weightgen_whole_builds_total")
        t0 = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW)
        after_builds = cpu_seconds(pid) - t0
        assert metric(server, "weightgen_whole_builds_total") == started, "a build started after the cancels"
        # Again, and SIGTERM at once while the builds run: the process does not wait for them.
        calls = [
            stub.Materialize(pb.MaterializeRequest(seed=seed, variables=[ORTHOGONAL]), timeout=120)
            for seed in range(5, 9)
        ]
        time.sleep(2.0)
        busy = metric(server, "weightgen_whole_building")
        seconds, code = exit_seconds(server, GRACE + MARGIN)
        for call in calls:
            call.cancel()

    report = (
        f"{builds:g} builds running when cancelled; they ended {drained:.2f} s later; server CPU then "
        f"{after_builds:.2f} s in {IDLE_WINDOW:g} s; SIGTERM with {busy:g} builds running: exit {code} after "
        f"{seconds:.2f} s"
    )
    print(report)
    assert codes == [grpc.StatusCode.CANCELLED] * 4, codes
    assert 1 <= builds <= 2, f"{report}: builds running when cancelled (--max-structured-builds is 2)"
    assert busy >= 1, f"{report}: the premise (builds running at SIGTERM) does not hold"
    assert after_builds < IDLE_CPU, report
    assert code == 0 and seconds < GRACE + MARGIN, f"{report}\n{server.log()[-3000:]}"
