"""Memory bounds under requests built to inflate the server (issue 10), measured as the server's
resident memory (VmRSS, sampled every 20 ms) above an idle baseline taken after a warm-up fetch:

- streams of a whole-tensor initializer left unread after their first chunk share one build
  (the whole-tensor cache) instead of holding a full tensor each;
- a small-dtype broadcast base widened into a large dtype is converted piece by piece, never whole;
- tiny chunks (one gRPC message per byte) are refused up front;
- a request without a valid bearer token is refused before it is received and parsed.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import grpc
import numpy as np
from procstat import rss
from service.helpers import assert_serves, first_response_error, init, metric, rpc_error, var, wait_for

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc, wire

MIB = 1 << 20
GIB = 1 << 30
UNLIMITED_SEND = [("grpc.max_send_message_length", -1)]


class Peak:
    """The server's largest RSS while the block runs, sampled on a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.baseline = rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):  # the process has gone
                return
            self._stop.wait(0.02)

    def now(self) -> int:
        """Growth above the baseline now, in bytes (and counted in the peak)."""
        current = rss(self.pid)
        self.peak = max(self.peak, current)
        return current - self.baseline

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@contextmanager
def measured(pid: int):
    peak = Peak(pid)
    peak._thread.start()
    try:
        yield peak
    finally:
        peak._stop.set()
        peak._thread.join(5)


def settle(server, stub) -> None:
    """Warm up (the first request's one-time allocations), then give the allocator a moment."""
    for _ in range(3):
        assert_serves(stub)
    wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no stream in progress")
    time.sleep(0.5)


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:+.0f} MiB"


# -- (a) whole-tensor streams left unread ------------------------------------------------------

IDENTITY = var("eye", [4096, 4096], init(identity={}), dtype=pb.DTYPE_COMPLEX128)  # 256 MiB built
IDENTITY_BYTES = 4096 * 4096 * 16
HELD_STREAMS = 8


def test_unread_whole_tensor_streams_share_one_build(start_server):
    server = start_server("--warm-precisions", "float32")
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        settle(server, stub)
        calls = []
        try:
            with measured(server.proc.pid) as memory:
                for seed in range(1, HELD_STREAMS + 1):
                    request = pb.MaterializeRequest(seed=seed, variables=[IDENTITY])
                    calls.append(stub.Materialize(request, timeout=120))
                firsts = [next(call) for call in calls]  # then left unread
                wait_for(lambda: metric(server, "weightgen_active_streams") == HELD_STREAMS, "8 held streams")
                time.sleep(1.0)
                held = memory.now()
        finally:
            for call in calls:
                call.cancel()
        report = (
            f"{HELD_STREAMS} unread identity complex128 [4096, 4096] streams: RSS peak {mib(memory.growth)}, "
            f"held {mib(held)} above the idle baseline ({memory.baseline / MIB:.0f} MiB)"
        )
        print(report)
        for first in firsts:
            assert first.info.byte_size == IDENTITY_BYTES and first.offset == 0 and not first.last, first.info
            assert len(first.data) == wire.DEFAULT_CHUNK_BYTES
            # The first rows of the identity.
            rows = np.frombuffer(first.data, np.complex128).reshape(-1, 4096)
            assert np.array_equal(rows, np.eye(*rows.shape, dtype=np.complex128))
        assert memory.growth < 1.2 * GIB, report
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "the held streams to end")
        assert_serves(stub)


# -- (b) a widening broadcast left unread -----------------------------------------------------

BASE_ELEMENTS = 60 * MIB  # a uint8 base of 60 MiB, under the default 64 MiB request limit
BASE = (np.arange(BASE_ELEMENTS, dtype=np.uint32) % 251).astype(np.uint8)


def broadcast_request(dtype: int = pb.DTYPE_COMPLEX128) -> pb.MaterializeRequest:
    base = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[BASE_ELEMENTS], data=BASE.tobytes())
    widened = var("wide", [BASE_ELEMENTS], pb.Initializer(broadcast=pb.Broadcast(base=base)), dtype=dtype)
    return pb.MaterializeRequest(seed=1, variables=[widened])


def test_widening_broadcast_is_converted_piece_by_piece(start_server):
    server = start_server("--warm-precisions", "float32")
    request = broadcast_request()
    assert request.ByteSize() < 64 * MIB
    with grpc.insecure_channel(server.address, options=UNLIMITED_SEND) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        settle(server, stub)
        call = None
        try:
            with measured(server.proc.pid) as memory:
                call = stub.Materialize(request, timeout=120)
                first = next(call)  # then left unread
                time.sleep(1.0)
                held = memory.now()
        finally:
            if call is not None:
                call.cancel()
        report = (
            f"uint8 base of 60 MiB widened to complex128 (960 MiB), one chunk read: RSS peak "
            f"{mib(memory.growth)}, held {mib(held)} above the idle baseline ({memory.baseline / MIB:.0f} MiB)"
        )
        print(report)
        assert first.info.byte_size == BASE_ELEMENTS * 16 and first.offset == 0 and not first.last
        values = np.frombuffer(first.data, np.complex128)
        assert np.array_equal(values, BASE[: values.size].astype(np.complex128))
        assert memory.growth < 600 * MIB, report
        wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "the stream to end")
        assert_serves(stub)


# -- (c) tiny chunks ---------------------------------------------------------------------------


def test_tiny_chunks_are_refused(stub):
    """chunk_bytes below the minimum (64 KiB, SECURITY.md) is INVALID_ARGUMENT naming the field and
    the minimum; the minimum itself is served."""
    assert wire.MIN_CHUNK_BYTES == 64 << 10
    variable = var("w", [64 << 10], init(ones={}), dtype=pb.DTYPE_UINT8)
    for chunk_bytes in (1, wire.MIN_CHUNK_BYTES - 1):
        error = first_response_error(stub, pb.MaterializeRequest(seed=1, chunk_bytes=chunk_bytes, variables=[variable]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        details = error.details()
        assert details.startswith(f"chunk_bytes: {chunk_bytes} "), details
        assert str(wire.MIN_CHUNK_BYTES) in details, details
    request = pb.MaterializeRequest(seed=1, chunk_bytes=wire.MIN_CHUNK_BYTES, variables=[variable])
    chunks = list(stub.Materialize(request, timeout=30))
    assert [len(c.data) for c in chunks] == [wire.MIN_CHUNK_BYTES] and chunks[0].last


# -- (d) unauthenticated requests --------------------------------------------------------------

TOKEN = "memory-test-token"
UNAUTHENTICATED_CALLS = 4


def test_unauthenticated_requests_are_not_received(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = start_server("--warm-precisions", "float32", "--auth-token-file", str(tokens))
    request = broadcast_request(pb.DTYPE_UINT8)  # a 60 MiB request message
    authorized = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(server.address, options=UNLIMITED_SEND) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        for _ in range(3):
            assert (
                len(
                    list(
                        stub.Materialize(
                            pb.MaterializeRequest(seed=1, variables=[var("w", [4], init(he={}))]),
                            timeout=30,
                            metadata=authorized,
                        )
                    )
                )
                == 1
            )
        time.sleep(0.5)
        denied = metric(server, "weightgen_requests_total", method="Materialize", code="UNAUTHENTICATED")
        errors: list[grpc.RpcError] = []

        def call() -> None:
            errors.append(rpc_error(lambda: list(stub.Materialize(request, timeout=60))))

        with measured(server.proc.pid) as memory:
            threads = [threading.Thread(target=call, daemon=True) for _ in range(UNAUTHENTICATED_CALLS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            time.sleep(0.5)
            after = memory.now()
        report = (
            f"{UNAUTHENTICATED_CALLS} concurrent unauthenticated 60 MiB requests: RSS peak {mib(memory.growth)}, "
            f"after {mib(after)} above the idle baseline ({memory.baseline / MIB:.0f} MiB)"
        )
        print(report)
        assert len(errors) == UNAUTHENTICATED_CALLS, errors
        for error in errors:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            assert "bearer token" in error.details(), error.details()
        assert memory.growth < 256 * MIB, report
        assert (
            metric(server, "weightgen_requests_total", method="Materialize", code="UNAUTHENTICATED")
            == denied + UNAUTHENTICATED_CALLS
        )
        # The server serves an authorized client as before.
        got = list(stub.Materialize(request, timeout=60, metadata=authorized))
        assert sum(len(c.data) for c in got) == BASE_ELEMENTS
