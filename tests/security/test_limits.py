"""Every configured limit: RESOURCE_EXHAUSTED with a message that names the limit, counted in
`weightgen_limit_rejections_total{limit=...}`, refused before anything is allocated, and the server
serves on afterwards."""

from __future__ import annotations

import grpc
import pytest
from procstat import rss
from serverproc import RunningServer, launch
from service.helpers import assert_serves, fetch, first_response_error, init, metric, var, wait_for

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ELEMENTS = 1 << 24  # 64 MiB of float32: a held stream fits, so the stream limit can be reached
REQUEST_BYTES = 1 << 20
HELD = var("held", [4096, 4096], init(random_normal={}))  # exactly ELEMENTS, 64 MiB


@pytest.fixture(scope="module")
def limited(xla_cache, tmp_path_factory) -> RunningServer:
    running = launch(
        tmp_path_factory.mktemp("limits"),
        "--max-elements-per-variable",
        str(ELEMENTS),
        "--max-bytes-per-request",
        str(ELEMENTS * 4),
        "--max-variables-per-request",
        "2",
        "--max-concurrent-streams",
        "2",
        "--max-sessions",
        "2",
        "--max-request-bytes",
        str(REQUEST_BYTES),
        "--cache-bytes",
        "0",
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


@pytest.fixture
def limited_stub(limited):
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(limited.address, options=options) as channel:
        yield weightgen_pb2_grpc.WeightGenStub(channel)


def rejections(server: RunningServer, limit: str) -> float:
    return metric(server, "weightgen_limit_rejections_total", limit=limit)


def test_elements_per_variable(limited, limited_stub):
    before = rejections(limited, "elements_per_variable")
    ok = var("ok", [ELEMENTS], init(zeros={}), dtype=pb.DTYPE_INT8)
    big = var("big", [ELEMENTS + 1], init(zeros={}), dtype=pb.DTYPE_INT8)
    error = first_response_error(limited_stub, pb.MaterializeRequest(seed=1, variables=[ok, big]))
    assert error.code() == EXHAUSTED, error
    details = error.details()
    assert details.startswith("variables[1] ('big'): shape: "), details
    assert f"{ELEMENTS + 1} elements exceed the server's limit of {ELEMENTS}" in details, details
    assert "--max-elements-per-variable" in details, details
    assert rejections(limited, "elements_per_variable") == before + 1
    assert_serves(limited_stub)


def test_bytes_per_request(limited, limited_stub):
    before = rejections(limited, "bytes_per_request")
    half = ELEMENTS // 2
    # Each variable is within its own limit; together they are 4 bytes over the request's.
    variables = [var("a", [half], init(ones={})), var("b", [half + 1], init(ones={}))]
    error = first_response_error(limited_stub, pb.MaterializeRequest(seed=1, variables=variables))
    assert error.code() == EXHAUSTED, error
    details = error.details()
    assert details.startswith(f"variables: the batch delivers {ELEMENTS * 4 + 4} bytes"), details
    assert f"limit of {ELEMENTS * 4} per request (--max-bytes-per-request)" in details, details
    assert rejections(limited, "bytes_per_request") == before + 1
    assert_serves(limited_stub)


def test_variables_per_request(limited, limited_stub):
    before = rejections(limited, "variables_per_request")
    variables = [var(n, [2], init(ones={})) for n in "abc"]
    error = first_response_error(limited_stub, pb.MaterializeRequest(seed=1, variables=variables))
    assert error.code() == EXHAUSTED, error
    details = error.details()
    assert details.startswith("variables: 3 variables exceed the server's limit of 2 per request"), details
    assert "--max-variables-per-request" in details, details
    assert rejections(limited, "variables_per_request") == before + 1
    assert_serves(limited_stub)


def test_concurrent_streams(limited, limited_stub):
    before = rejections(limited, "concurrent_streams")
    cancelled = metric(limited, "weightgen_cancelled_streams_total")
    held = []
    try:
        for seed in (1, 2):  # two streams in flight whose reader reads nothing after the first chunk
            call = limited_stub.Materialize(pb.MaterializeRequest(seed=seed, variables=[HELD]), timeout=120)
            next(call)
            held.append(call)
        assert metric(limited, "weightgen_active_streams") == 2
        small = pb.MaterializeRequest(seed=1, variables=[var("x", [2], init(ones={}))])
        error = first_response_error(limited_stub, small)
        assert error.code() == EXHAUSTED, error
        details = error.details()
        assert details == "2 streams are in progress, the server's limit is 2 (--max-concurrent-streams)", details
        assert rejections(limited, "concurrent_streams") == before + 1
        assert metric(limited, "weightgen_errors_total", method="Materialize", code="RESOURCE_EXHAUSTED") >= 1

        # A slot frees as soon as a held stream is cancelled.
        held.pop().cancel()
        wait_for(lambda: metric(limited, "weightgen_active_streams") == 1, "one stream left")
        assert_serves(limited_stub)
    finally:
        for call in held:
            call.cancel()
    wait_for(lambda: metric(limited, "weightgen_active_streams") == 0, "no stream left")
    assert metric(limited, "weightgen_cancelled_streams_total") == cancelled + 2
    assert rejections(limited, "concurrent_streams") == before + 1


def test_sessions(limited, limited_stub):
    """Sessions are signed ids that hold nothing on a server, so opening is not limited; what
    --max-sessions bounds is the position counters this server keeps for sequential sessions whose
    clients do not carry their position (sequence_start)."""
    before = rejections(limited, "sessions")
    opened = [
        limited_stub.OpenSession(pb.OpenSessionRequest(seed=n + 1, rng_mode=pb.RNG_MODE_SEQUENTIAL), timeout=30)
        for n in range(3)
    ]
    w = var("w", [3, 3], init(he={}))  # random: it takes a position
    for session in opened[:2]:  # two counters: the limit
        assert fetch(limited_stub, pb.MaterializeRequest(session_id=session.session_id, variables=[w]))[0].info.seed
    third = pb.MaterializeRequest(session_id=opened[2].session_id, variables=[w])
    error = first_response_error(limited_stub, third)
    assert error.code() == EXHAUSTED, error
    assert error.details() == (
        "2 sequential sessions count their positions on this server, the limit is 2 (--max-sessions); "
        "send sequence_start to need none"
    ), error.details()
    assert rejections(limited, "sessions") == before + 1
    # Carrying its position, the same session needs no counter; closing a counted one frees its counter.
    third.sequence_start = 0
    assert fetch(limited_stub, third)[0].info.sequence_index == 0
    assert (
        limited_stub.CloseSession(pb.CloseSessionRequest(session_id=opened[0].session_id), timeout=30).sequence_length
        == 1
    )
    third.ClearField("sequence_start")
    assert fetch(limited_stub, third)[0].info.sequence_index == 0
    assert rejections(limited, "sessions") == before + 1


def _broadcast(nbytes: int) -> pb.MaterializeRequest:
    base = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[nbytes], data=bytes(nbytes))
    variable = var("b", [2, nbytes], pb.Initializer(broadcast=pb.Broadcast(base=base)), dtype=pb.DTYPE_UINT8)
    return pb.MaterializeRequest(seed=1, variables=[variable])


def test_request_bytes_configured(limited, limited_stub):
    """gRPC's receive limit (--max-request-bytes) refuses a request message (a broadcast base) past it."""
    got = fetch(limited_stub, _broadcast(REQUEST_BYTES // 2))
    assert len(got[0].data) == REQUEST_BYTES
    error = first_response_error(limited_stub, _broadcast(REQUEST_BYTES + 1))
    assert error.code() == EXHAUSTED, error
    assert "larger than max" in error.details() and str(REQUEST_BYTES) in error.details(), error.details()
    assert_serves(limited_stub)


def test_request_bytes_default(server):
    """The default receive limit is 64 MiB: a larger broadcast base is refused before the service sees it."""
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        error = first_response_error(stub, _broadcast(64 << 20))  # the base alone is the limit: with framing, over
        assert error.code() == EXHAUSTED, error
        assert "larger than max" in error.details() and str(64 << 20) in error.details(), error.details()
        assert_serves(stub)


HUGE = [
    # (shape, dtype, code): past what weightgen/2 allows at all, and past the default per-variable limit
    ([10**15], pb.DTYPE_FLOAT32, grpc.StatusCode.INVALID_ARGUMENT),
    ([10**8, 10**7], pb.DTYPE_FLOAT64, grpc.StatusCode.INVALID_ARGUMENT),
    ([2**35], pb.DTYPE_COMPLEX128, EXHAUSTED),
]


def test_huge_requests_cost_nothing(server, stub):
    """Sizes are checked before anything is allocated: 50 requests for 10^15 elements (and friends)
    are answered at once with an error, and the server's memory does not move."""

    def ask() -> None:
        for shape, dtype, code in HUGE:
            request = pb.MaterializeRequest(seed=1, variables=[var("huge", shape, init(random_normal={}), dtype=dtype)])
            error = first_response_error(stub, request)
            assert error.code() == code, error
            assert "shape" in error.details(), error.details()
        # Under every per-variable limit, together 9 * 2^37 bytes: past the default bytes per request.
        many = [var(f"v{i}", [2**34], init(random_normal={}), dtype=pb.DTYPE_FLOAT64) for i in range(9)]
        error = first_response_error(stub, pb.MaterializeRequest(seed=1, variables=many))
        assert error.code() == EXHAUSTED and "--max-bytes-per-request" in error.details(), error

    for _ in range(5):  # warm-up: whatever the first requests allocate once (channels, log buffers)
        ask()
    before = rejections(server, "bytes_per_request"), rejections(server, "elements_per_variable")
    baseline = rss(server.proc.pid)
    peak = baseline
    for _ in range(50):
        ask()
        peak = max(peak, rss(server.proc.pid))
    assert peak - baseline < 8 << 20, f"server RSS grew by {(peak - baseline) / 2**20:.1f} MiB"
    assert rejections(server, "bytes_per_request") == before[0] + 50
    assert rejections(server, "elements_per_variable") == before[1] + 50
    assert_serves(stub)
