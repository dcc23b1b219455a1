"""A slow reader holds back generation (bounded server memory); a cancelled stream stops; the
concurrent-stream limit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from serverproc import launch

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

from .helpers import assert_serves, first_response_error, init, metric, var, wait_for

HUGE = var("huge", [16384, 16384], init(random_normal={}))  # 1 GiB of float32
HEADROOM = 256 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def one_stream_server(xla_cache, tmp_path_factory):
    running = launch(
        tmp_path_factory.mktemp("one-stream"),
        "--max-concurrent-streams",
        "1",
        # The block and chunk caches (128 MiB each by default, for herds) are bounded by their own size;
        # off here, so that the bound checked is that of the streaming pipeline under a slow reader.
        "--cache-bytes",
        "0",
        "--chunk-cache-bytes",
        "0",
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


def test_slow_reader_bounded_memory_then_cancel(one_stream_server):
    server = one_stream_server
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        assert_serves(stub)
        idle = rss(server.proc.pid)
        before = {
            "cancelled": metric(server, "weightgen_cancelled_streams_total"),
            "variables": metric(server, "weightgen_variables_streamed_total"),
            "bytes": metric(server, "weightgen_bytes_streamed_total"),
        }
        peak, stop = [idle], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss(server.proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        call = stub.Materialize(pb.MaterializeRequest(seed=1, variables=[HUGE], chunk_bytes=1 << 20), timeout=600)
        received = 0
        try:
            for n, chunk in enumerate(call):
                received += len(chunk.data)
                if n == 0:
                    assert metric(server, "weightgen_active_streams") == 1
                    # The limit: a second stream while this one is in flight is refused.
                    error = first_response_error(
                        stub, pb.MaterializeRequest(seed=1, variables=[var("x", [2], init(ones={}))])
                    )
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                    assert "limit is 1" in error.details(), error.details()
                    assert metric(server, "weightgen_limit_rejections_total", limit="concurrent_streams") == 1
                time.sleep(0.02)  # a slow reader: about 50 MB/s, far below what the server makes
                if n == 200:
                    break
        finally:
            stop.set()
            sampler.join()
        call.cancel()
        assert received >= 200 << 20
        assert peak[0] - idle < HEADROOM, f"server RSS grew by {(peak[0] - idle) >> 20} MiB (idle {idle >> 20} MiB)"

        # The cancelled stream stops: counted as cancelled, no longer active, the variable never completed.
        wait_for(lambda: metric(server, "weightgen_cancelled_streams_total") == before["cancelled"] + 1, "cancel")
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no active stream")
        assert metric(server, "weightgen_requests_total", method="Materialize", code="CANCELLED") == 1
        # A client's cancellation is not a server error (it has its own metric, above).
        assert metric(server, "weightgen_errors_total", method="Materialize", code="CANCELLED") == 0
        assert metric(server, "weightgen_errors_total", method="Materialize", code="RESOURCE_EXHAUSTED") == 1
        assert metric(server, "weightgen_variables_streamed_total") == before["variables"]
        sent = metric(server, "weightgen_bytes_streamed_total") - before["bytes"]
        assert received <= sent < 1 << 30, sent
        assert_serves(stub)  # the one stream slot is free again
