"""Faults: clients that cancel or run out of time, a server killed mid-stream and restarted, and a
drain whose grace period runs out. The server must stop generating for a stream nobody reads, give
back its threads and memory, and a resumed fetch must give the very bytes of an unbroken one."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
from faultwire import Faults
from procstat import rss, threads
from serverproc import RunningServer, launch
from service.helpers import assert_serves, init, metric, var, wait_for

from weightgen.client import Client
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

GIB = var("gib", [16384, 16384], init(random_normal={}))  # 1 GiB of float32: never finishes here
CANCELS = 100
AT_ONCE = 4
WARM_UP = 5 * AT_ONCE
THREAD_SLACK = 2 * AT_ONCE
"""Threads the server may add after the warm-up: its stream pool grows on demand (to at most
max_concurrent_streams + 4 threads) when closes and sends of several streams briefly overlap.
Measured: +0 to +3 over 150 cancels. A thread per cancelled stream would be +100."""


@pytest.fixture(scope="module")
def faulty(xla_cache, tmp_path_factory) -> RunningServer:
    """A server of its own, so that thread and memory baselines are not other tests'."""
    running = launch(tmp_path_factory.mktemp("faults"), "--warm-precisions", "float32", cache_dir=xla_cache)
    yield running
    assert running.stop() == 0, running.log()[-4000:]


@pytest.fixture
def faulty_stub(faulty):
    with grpc.insecure_channel(faulty.address) as channel:
        yield weightgen_pb2_grpc.WeightGenStub(channel)


def _cancel_round(stub, seeds: range) -> int:
    """Start a stream of GIB per seed (AT_ONCE at a time), read its first chunk, cancel it; returns
    the bytes received."""
    received = 0
    seeds = list(seeds)
    for at in range(0, len(seeds), AT_ONCE):
        calls = [
            stub.Materialize(pb.MaterializeRequest(seed=seed, variables=[GIB]), timeout=300)
            for seed in seeds[at : at + AT_ONCE]
        ]
        for call in calls:
            received += len(next(call).data)
        for call in calls:
            call.cancel()
    return received


def _settled(server: RunningServer, cancelled: float) -> bool:
    return (
        metric(server, "weightgen_active_streams") == 0
        and metric(server, "weightgen_cancelled_streams_total") == cancelled
    )


def test_a_hundred_cancels_return_to_baseline(faulty, faulty_stub):
    server = faulty
    pid = server.proc.pid
    # Warm-up: the stream and worker thread pools grow to what AT_ONCE concurrent streams need.
    _cancel_round(faulty_stub, range(1, 1 + WARM_UP))
    wait_for(lambda: _settled(server, WARM_UP), "the warm-up streams to end")
    assert_serves(faulty_stub)
    time.sleep(0.5)  # let the closes of the cancelled streams' generators run
    base_threads, base_rss = threads(pid), rss(pid)
    calls_before = metric(server, "weightgen_cache_misses_total") + metric(server, "weightgen_cache_hits_total")
    bytes_before = metric(server, "weightgen_bytes_streamed_total")

    received = _cancel_round(faulty_stub, range(1000, 1000 + CANCELS))

    wait_for(lambda: _settled(server, WARM_UP + CANCELS), "every cancelled stream to end")
    assert metric(server, "weightgen_requests_total", method="Materialize", code="CANCELLED") == WARM_UP + CANCELS
    # Generation stopped with each stream: a few kernel calls of lookahead each, not the 4096 calls of
    # a whole GIB; and no more after the streams ended.
    calls = metric(server, "weightgen_cache_misses_total") + metric(server, "weightgen_cache_hits_total")
    assert calls - calls_before <= 16 * CANCELS, calls - calls_before
    sent = metric(server, "weightgen_bytes_streamed_total") - bytes_before
    assert received <= sent <= 64 * CANCELS << 20, (received, sent)
    time.sleep(0.5)
    assert metric(server, "weightgen_cache_misses_total") + metric(server, "weightgen_cache_hits_total") == calls
    # Threads and memory back to where they were (the block and chunk caches hold at most 128 MiB each).
    assert threads(pid) <= base_threads + THREAD_SLACK, (threads(pid), base_threads)
    held = metric(server, "weightgen_cache_bytes") + metric(server, "weightgen_chunk_cache_bytes")
    assert rss(pid) <= base_rss + (64 << 20) + held, (rss(pid), base_rss)
    assert_serves(faulty_stub)


def test_deadline_exceeded_on_both_sides(faulty, faulty_stub):
    server = faulty
    cancelled = metric(server, "weightgen_cancelled_streams_total")
    call = faulty_stub.Materialize(pb.MaterializeRequest(seed=5, variables=[GIB]), timeout=1.0)
    with pytest.raises(grpc.RpcError) as caught:
        for _ in call:
            time.sleep(0.2)  # a reader far slower than 1 GiB a second
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    # The server saw the deadline as the end of the stream: counted, and the stream freed.
    wait_for(lambda: _settled(server, cancelled + 1), "the expired stream to end")
    # A deadline that passes before the first chunk: the same on both sides.
    call = faulty_stub.Materialize(pb.MaterializeRequest(seed=6, variables=[GIB]), timeout=0.001)
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no stream left")
    assert_serves(faulty_stub)


KILLED = var("killed", [8192, 4096], init(truncated_normal={"stddev": 0.5}))  # 128 MiB
KILLED_BYTES = 8192 * 4096 * 4
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]


def test_sigkill_mid_stream_then_restart_resumes_identically(start_server):
    server = start_server("--warm-precisions", "float32")
    port = server.port
    at_chunk, paused, killed = 8, threading.Event(), threading.Event()
    seen: list[tuple[int, int, int]] = []  # (attempt, offset, size) of every chunk the client kept

    def hook(attempt, chunk):
        seen.append((attempt, chunk.offset, chunk.data.nbytes))
        if attempt == 0 and len(seen) == at_chunk:
            paused.set()  # hold the stream here until the server is dead
            killed.wait(120)
        return chunk

    progress: list[int] = []
    result: dict = {}

    def fetch() -> None:
        try:
            with Client(
                server.address,
                chunk_bytes=1 << 20,
                retries=100,
                timeout=300,
                options=FAST_RECONNECT,
                interceptors=[Faults(hook)],
            ) as c:
                c.backoff = 0.05
                result["arrays"] = c.materialize([KILLED], seed=77, progress=lambda got, total: progress.append(got))
        except BaseException as error:
            result["error"] = error

    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()
    assert paused.wait(120), "the fetch did not start"
    server.stop(signal.SIGKILL)
    assert server.proc.returncode == -signal.SIGKILL
    killed.set()
    restarted = start_server("--warm-precisions", "float32", "--port", str(port))
    assert restarted.port == port
    fetcher.join(300)
    assert not fetcher.is_alive(), "the fetch did not finish"
    assert "error" not in result, result.get("error")
    resumed = result["arrays"]["killed"]

    # Bit for bit what an unbroken fetch gives.
    with Client(restarted.address, chunk_bytes=1 << 20) as c:
        reference = c.materialize([KILLED], seed=77)["killed"]
    assert resumed.dtype == reference.dtype == np.float32 and resumed.shape == reference.shape == (8192, 4096)
    assert resumed.view(np.uint32).tobytes() == reference.view(np.uint32).tobytes()
    # Nothing downloaded twice: the resumed attempt started at the first byte the client lacked.
    before = sum(size for attempt, _, size in seen if attempt == 0)
    assert at_chunk << 20 <= before < KILLED_BYTES
    resumed_chunks = [(offset, size) for attempt, offset, size in seen if attempt > 0]
    assert resumed_chunks[0][0] == before, (resumed_chunks[0], before)
    assert sum(size for *_, size in seen) == progress[-1] == KILLED_BYTES
    streamed = (KILLED_BYTES - before) + KILLED_BYTES  # the resumed rest, then the reference
    wait_for(lambda: restarted.metric("weightgen_bytes_streamed_total") == streamed, "the restarted server's count")


def test_sigterm_cancels_what_the_grace_period_does_not_cover(start_server):
    """A stream whose client stops reading holds the drain only for the grace period: then it is
    cancelled and the server exits 0."""
    server = start_server("--grace-seconds", "1", "--warm-precisions", "float32")
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        call = stub.Materialize(pb.MaterializeRequest(seed=3, variables=[GIB]), timeout=300)
        next(call)  # then read nothing: the stream cannot finish
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(120) == 0, server.log()[-4000:]
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call:
                pass
    # UNAVAILABLE ("Cancelling all calls"): the client's cue to resume elsewhere, as a Client does.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    assert '"draining"' in server.log() and '"stopped"' in server.log()
