"""Clients that hold streams cannot squat on the server: a stream whose client reads nothing for
--stream-idle-seconds is ended with DEADLINE_EXCEEDED (freeing its slot and its memory), 64 such
streams neither starve a well-behaved client nor grow the server's memory without bound, and one
client address may hold at most --max-streams-per-peer streams."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from procstat import rss
from serverproc import RunningServer, launch
from service.helpers import assert_serves, fetch, first_response_error, init, metric, var, wait_for

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

IDLE_SECONDS = 10  # long enough to open every held stream and run the canary before the first is ended
HELD_STREAMS = 64
CHANNELS = 4
HELD = var("squat", [4096, 4096], init(random_normal={}))  # 64 MiB of float32: never finished by a squatter
RSS_BOUND = 2 << 30
MODEL = [  # the canary's small model: a two-layer MLP with a layer norm
    var("dense1/kernel", [64, 128], init(he_normal={})),
    var("dense1/bias", [128], init(zeros={})),
    var("norm/scale", [128], init(ones={})),
    var("dense2/kernel", [128, 10], init(glorot_uniform={})),
    var("dense2/bias", [10], init(zeros={})),
]


@pytest.fixture(scope="module")
def idle_server(xla_cache, tmp_path_factory) -> RunningServer:
    running = launch(
        tmp_path_factory.mktemp("idle"),
        "--stream-idle-seconds",
        str(IDLE_SECONDS),
        "--max-streams-per-peer",
        "200",
        "--max-concurrent-streams",
        "256",
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


@pytest.fixture(scope="module")
def peer_server(xla_cache, tmp_path_factory) -> RunningServer:
    running = launch(
        tmp_path_factory.mktemp("peers"),
        "--max-streams-per-peer",
        "2",
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


def _model(stub) -> dict[str, bytes]:
    got = fetch(stub, pb.MaterializeRequest(seed=11, variables=MODEL))  # byte counts and digests checked
    return {MODEL[i].name: bytes(r.data) for i, r in got.items()}


class PeakRss:
    """The largest RSS of a process while the block runs (sampled every 20 ms on a thread)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.peak = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_idle_streams_cannot_squat(idle_server):
    server = idle_server
    channels = [grpc.insecure_channel(server.address) for _ in range(CHANNELS)]
    canary_channel = grpc.insecure_channel(server.address)
    held: list[grpc.Call] = []
    try:
        canary = weightgen_pb2_grpc.WeightGenStub(canary_channel)
        expected = _model(canary)  # also warms what the first request allocates once
        floats = {name: np.frombuffer(data, np.float32) for name, data in expected.items()}
        assert not floats["dense1/bias"].any() and (floats["norm/scale"] == 1).all()
        assert floats["dense1/kernel"].std() > 0.05
        before = {
            "ended": metric(server, "weightgen_idle_streams_ended_total"),
            "cancelled": metric(server, "weightgen_cancelled_streams_total"),
        }
        idle_rss = rss(server.proc.pid)

        with PeakRss(server.proc.pid) as peak:
            started = time.monotonic()
            stubs = [weightgen_pb2_grpc.WeightGenStub(c) for c in channels]
            for n in range(HELD_STREAMS):
                request = pb.MaterializeRequest(seed=n + 1, variables=[HELD])
                held.append(stubs[n % CHANNELS].Materialize(request, timeout=IDLE_SECONDS + 120))
            first_bytes = []
            for call in held:  # each squatter reads one chunk, then nothing
                first = next(call)
                assert first.variable_index == 0 and first.offset == 0 and first.data and not first.last, first
                first_bytes.append(len(first.data))
            opened = time.monotonic() - started

            # While every squatter holds its stream, a well-behaved client is served, bytes intact.
            active = metric(server, "weightgen_active_streams")
            assert active >= HELD_STREAMS, f"{active} streams active ({opened:.1f} s to open {HELD_STREAMS})"
            assert metric(server, "weightgen_idle_streams_ended_total") == before["ended"], (
                f"a squatter was ended before every one was open ({opened:.1f} s to open them)"
            )
            assert _model(canary) == expected
            assert metric(server, "weightgen_active_streams") >= HELD_STREAMS
            assert metric(server, "weightgen_idle_streams_ended_total") == before["ended"], "canary was too slow"
            print(f"{HELD_STREAMS} squatters opened in {opened:.1f} s; canary served")

            # After the idle timeout the server ends every squatter, without the client reading.
            wait_for(
                lambda: metric(server, "weightgen_idle_streams_ended_total") == before["ended"] + HELD_STREAMS,
                f"{HELD_STREAMS} idle streams ended",
                timeout=IDLE_SECONDS + 60,
                interval=0.2,
            )
        growth = peak.peak - idle_rss
        print(f"server RSS: idle {idle_rss >> 20} MiB, peak growth {growth >> 20} MiB with {HELD_STREAMS} squatters")
        assert growth < RSS_BOUND, (
            f"server RSS grew by {growth >> 20} MiB holding {HELD_STREAMS} idle streams (idle {idle_rss >> 20} MiB)"
        )
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no active stream")
        assert metric(server, "weightgen_memory_reserved_bytes", use="streams") == 0
        assert metric(server, "weightgen_stream_peers") == 0
        print(f"server RSS once they were ended: {(rss(server.proc.pid) - idle_rss) >> 20} MiB over idle")

        # Each squatter, when it reads again, gets what was queued, then DEADLINE_EXCEEDED from the server.
        for n, call in enumerate(held):
            received = first_bytes[n]
            try:
                for chunk in call:
                    received += len(chunk.data)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (n, error.code(), error.details())
                assert "--stream-idle-seconds" in error.details(), (n, error.details())
                assert f"read nothing for {IDLE_SECONDS} s" in error.details(), (n, error.details())
            else:
                raise AssertionError(f"squatter {n} was sent the whole tensor ({received} bytes)")
            assert received < HELD.shape[0] * HELD.shape[1] * 4, (n, received)
        held.clear()

        assert metric(server, "weightgen_idle_streams_ended_total") == before["ended"] + HELD_STREAMS
        assert metric(server, "weightgen_cancelled_streams_total") == before["cancelled"]
        assert metric(server, "weightgen_requests_total", method="Materialize", code="DEADLINE_EXCEEDED") == (
            HELD_STREAMS
        )
        assert metric(server, "weightgen_active_streams") == 0
        assert _model(canary) == expected
    finally:
        for call in held:
            call.cancel()
        for channel in [*channels, canary_channel]:
            channel.close()


def test_streams_per_peer(peer_server):
    server = peer_server
    small = pb.MaterializeRequest(seed=1, variables=[var("x", [2], init(ones={}))])
    held: list[grpc.Call] = []
    with grpc.insecure_channel(server.address) as channel, grpc.insecure_channel(server.address) as other:
        stub, other_stub = (weightgen_pb2_grpc.WeightGenStub(c) for c in (channel, other))
        try:
            before = metric(server, "weightgen_limit_rejections_total", limit="streams_per_peer")
            # Two held streams from 127.0.0.1, on two connections: the limit is per address, not per connection.
            for seed, s in ((1, stub), (2, other_stub)):
                call = s.Materialize(pb.MaterializeRequest(seed=seed, variables=[HELD]), timeout=120)
                next(call)
                held.append(call)
            assert metric(server, "weightgen_active_streams") == 2
            assert metric(server, "weightgen_stream_peers") == 1

            # A third, on either connection (or a new one), is refused.
            for n, s in enumerate((stub, other_stub), start=1):
                error = first_response_error(s, small)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                details = error.details()
                assert details == (
                    "2 streams from this client's address are in progress, the server's limit is 2 per address "
                    "(--max-streams-per-peer)"
                ), details
                assert metric(server, "weightgen_limit_rejections_total", limit="streams_per_peer") == before + n
            assert metric(server, "weightgen_limit_rejections_total", limit="concurrent_streams") == 0
            assert metric(server, "weightgen_active_streams") == 2

            # Cancelling one frees its place: a new stream is served.
            held.pop().cancel()
            wait_for(lambda: metric(server, "weightgen_active_streams") == 1, "one stream left")
            assert_serves(stub)
            assert metric(server, "weightgen_limit_rejections_total", limit="streams_per_peer") == before + 2
        finally:
            for call in held:
                call.cancel()
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no stream left")
        wait_for(lambda: metric(server, "weightgen_stream_peers") == 0, "no peer left")
        # Both places free again: two new streams at once are served.
        calls = [stub.Materialize(pb.MaterializeRequest(seed=s, variables=[HELD]), timeout=120) for s in (3, 4)]
        try:
            for call in calls:
                next(call)
            assert metric(server, "weightgen_active_streams") == 2
        finally:
            for call in calls:
                call.cancel()
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no stream left")
