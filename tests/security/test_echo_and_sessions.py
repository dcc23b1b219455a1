"""What a client sends comes back bounded (a 60 MB name or session id cannot make a status
undeliverable or a log line huge); sessions are bounded by --max-session-bytes and by the memory
budget, which closing gives back; a draining server opens no session; and a full memory budget
makes a request wait --budget-wait-seconds, then refuses it."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2
from serverproc import RunningServer, launch
from service.helpers import assert_serves, fetch, first_response_error, init, metric, rpc_error, var, wait_for

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

BUDGET = 300_000_000  # bytes; the caches are off, so all of it is for streams, validations and sessions
SESSION_BYTES = 100_000  # --max-session-bytes
WAIT_SECONDS = 2
HUGE_CHARS = 60_000_000  # fits the default 64 MiB request limit
HELD = var("held", [4096, 4096], init(random_normal={}))  # 64 MiB of float32: a held stream never finishes
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def budget_server(xla_cache, tmp_path_factory) -> RunningServer:
    running = launch(
        tmp_path_factory.mktemp("budget"),
        "--memory-budget",
        str(BUDGET),
        "--cache-bytes",
        "0",
        "--chunk-cache-bytes",
        "0",
        "--whole-cache-bytes",
        "0",
        "--session-cache-bytes",
        "0",
        "--max-session-bytes",
        str(SESSION_BYTES),
        "--budget-wait-seconds",
        str(WAIT_SECONDS),
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


@pytest.fixture
def stub(budget_server):
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(budget_server.address, options=options) as channel:
        yield weightgen_pb2_grpc.WeightGenStub(channel)


def reserved(server: RunningServer, use: str) -> float:
    return metric(server, "weightgen_memory_reserved_bytes", use=use)


def rejections(server: RunningServer, limit: str) -> float:
    return metric(server, "weightgen_limit_rejections_total", limit=limit)


def _log_size(server: RunningServer) -> int:
    return server.log_path.stat().st_size


def _refusals_logged(server: RunningServer, code: str) -> int:
    return server.log().count(f'"code": "{code}"')


# -- bounded echo --------------------------------------------------------------------------------


def test_huge_name_is_echoed_bounded(budget_server, stub):
    server = budget_server
    assert_serves(stub)
    invalid_before = metric(server, "weightgen_errors_total", method="Materialize", code="INVALID_ARGUMENT")
    logged, log_before = _refusals_logged(server, "INVALID_ARGUMENT"), _log_size(server)

    name = "n" * HUGE_CHARS
    request = pb.MaterializeRequest(seed=1, variables=[var(name, [4], init(ones={}))])
    assert request.ByteSize() < 64 << 20
    error = first_response_error(stub, request)
    assert error.code() == INVALID, (error.code(), error.details()[:2000])
    details = error.details()
    assert len(details) < 1200, f"{len(details)} characters: {details[:2000]}"
    assert details.startswith("variables[0] ('nnnn"), details
    assert f"({HUGE_CHARS} characters)" in details, details
    assert "): name: " in details, details
    assert metric(server, "weightgen_errors_total", method="Materialize", code="INVALID_ARGUMENT") == invalid_before + 1

    wait_for(lambda: _refusals_logged(server, "INVALID_ARGUMENT") == logged + 1, "the refusal logged")
    grown = _log_size(server) - log_before
    assert grown < 64 << 10, f"the log grew by {grown} bytes for one refused request"
    print(f"a {HUGE_CHARS}-character name: {len(details)}-character status, the log grew by {grown} bytes")
    assert_serves(stub)


def test_huge_session_id_is_echoed_bounded(budget_server, stub):
    server = budget_server
    log_before = _log_size(server)
    session_id = "s" * HUGE_CHARS
    calls = {
        "CloseSession": lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=60),
        "Materialize": lambda: next(
            iter(
                stub.Materialize(
                    pb.MaterializeRequest(session_id=session_id, variables=[var("w", [4], init(ones={}))]), timeout=60
                )
            )
        ),
    }
    for method, call in calls.items():
        before = metric(server, "weightgen_errors_total", method=method, code="NOT_FOUND")
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (method, error.code(), error.details()[:2000])
        details = error.details()
        assert len(details) < 1200, (method, len(details), details[:2000])
        assert details.startswith("session_id: no open session 'ssss"), (method, details)
        assert f"({HUGE_CHARS} characters)" in details, (method, details)
        assert metric(server, "weightgen_errors_total", method=method, code="NOT_FOUND") == before + 1
    wait_for(lambda: server.log().count('"code": "NOT_FOUND"') >= 2, "the refusals logged")
    grown = _log_size(server) - log_before
    assert grown < 64 << 10, f"the log grew by {grown} bytes for two refused requests"
    print(f"a {HUGE_CHARS}-character session_id, twice: the log grew by {grown} bytes")
    assert_serves(stub)


# -- sessions ------------------------------------------------------------------------------------


def _broadcast_default(payload: int) -> pb.Initializer:
    """A broadcast default initializer whose serialized size is exactly `payload` bytes."""
    for n in range(payload, 0, -1):
        base = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[n], data=bytes(range(256)) * (n // 256) + bytes(n % 256))
        message = pb.Initializer(broadcast=pb.Broadcast(base=base))
        if message.ByteSize() == payload:
            return message
    raise AssertionError(f"no broadcast of exactly {payload} bytes")


def _close(stub, sessions) -> None:
    for session in sessions:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30)


def test_session_bytes_limit(budget_server, stub):
    server = budget_server
    open_before = metric(server, "weightgen_open_sessions")
    sessions_reserved = reserved(server, "sessions")
    invalid_before = metric(server, "weightgen_errors_total", method="OpenSession", code="INVALID_ARGUMENT")

    # One byte over the limit, and a base alone four times the limit: refused, no session created.
    for n, payload in enumerate((SESSION_BYTES + 1, 4 * SESSION_BYTES + 10), start=1):
        asked = pb.OpenSessionRequest(default_initializer=_broadcast_default(payload))
        error = rpc_error(lambda: stub.OpenSession(asked, timeout=30))  # noqa: B023 (called at once)
        assert error.code() == INVALID, (error.code(), error.details())
        if n == 1:
            assert error.details() == (
                f"default_initializer: {payload} bytes exceed the server's limit of {SESSION_BYTES} per session "
                "(--max-session-bytes)"
            ), error.details()
        else:  # far over: refused from the request's size, before it is parsed
            assert error.details().startswith("default_initializer: the request's "), error.details()
            assert error.details().endswith(
                f"bytes exceed the server's limit of {SESSION_BYTES} per session (--max-session-bytes)"
            ), error.details()
        errors = metric(server, "weightgen_errors_total", method="OpenSession", code="INVALID_ARGUMENT")
        assert errors == invalid_before + n
        assert metric(server, "weightgen_open_sessions") == open_before
        assert reserved(server, "sessions") == sessions_reserved

    # At the limit: opened, the reply echoes the default, and a variable without initializer uses it.
    at_limit = _broadcast_default(SESSION_BYTES)
    request = pb.OpenSessionRequest(seed=5, default_initializer=at_limit, default_dtype=pb.DTYPE_UINT8)
    session = stub.OpenSession(request, timeout=30)
    try:
        assert session.default_initializer == at_limit
        assert session.default_dtype == pb.DTYPE_UINT8 and session.seed == 5
        assert metric(server, "weightgen_open_sessions") == open_before  # held nowhere: the id carries it
        assert reserved(server, "sessions") == sessions_reserved
        assert len(session.session_id) > SESSION_BYTES  # the defaults travel in the (signed) id
        base = at_limit.broadcast.base
        by_default = var("w", [2, base.shape[0]])  # no initializer, no dtype: the session's
        got = fetch(stub, pb.MaterializeRequest(session_id=session.session_id, variables=[by_default]))
        assert bytes(got[0].data) == base.data * 2
    finally:
        _close(stub, [session])
    assert metric(server, "weightgen_open_sessions") == open_before
    assert reserved(server, "sessions") == sessions_reserved


def test_sessions_hold_nothing_on_the_server(budget_server, stub):
    """A session's defaults travel in its signed id: opening 200 sessions of 100 KB defaults (20 MB,
    more than the budget leaves once streams hold it) reserves nothing, and each still works."""
    server = budget_server
    default = _broadcast_default(SESSION_BYTES)
    request = pb.OpenSessionRequest(default_initializer=default, default_dtype=pb.DTYPE_UINT8)
    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(lambda _: stub.OpenSession(request, timeout=30), range(200)))
    assert reserved(server, "sessions") == 0
    assert metric(server, "weightgen_open_sessions") == 0
    base = default.broadcast.base
    by_default = var("w", [1, base.shape[0]])
    for session in sessions[::40]:
        got = fetch(stub, pb.MaterializeRequest(session_id=session.session_id, variables=[by_default]))
        assert bytes(got[0].data) == base.data
    # With --session-cache-bytes 0 the server keeps no verified id either: each request verifies anew.
    assert metric(server, "weightgen_open_sessions") == 0
    assert_serves(stub)


def test_no_session_while_draining(start_server):
    server = start_server("--grace-seconds", "120", "--warm-precisions", "float32")
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        held = stub.Materialize(pb.MaterializeRequest(seed=1, variables=[HELD]), timeout=300)
        try:
            next(held)
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: server.health() == NOT_SERVING, "health NOT_SERVING")
            error = rpc_error(lambda: stub.OpenSession(pb.OpenSessionRequest(seed=1), timeout=30))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
            assert "draining" in error.details(), error.details()
            assert metric(server, "weightgen_open_sessions") == 0
            assert metric(server, "weightgen_errors_total", method="OpenSession", code="UNAVAILABLE") == 1
            assert server.proc.poll() is None  # still draining: the stream is in flight
        finally:
            held.cancel()
    # The last stream gone, the server exits by itself.
    assert server.proc.wait(60) == 0, server.log()[-4000:]


# -- the memory budget: wait, then refuse ----------------------------------------------------------


def test_full_budget_waits_then_refuses(budget_server, stub):
    server = budget_server
    total = metric(server, "weightgen_memory_budget_bytes")
    assert reserved(server, "streams") == 0 and reserved(server, "sessions") == 0
    waits_before = metric(server, "weightgen_memory_waits_total")
    refused_before = rejections(server, "memory_budget")
    held: list[grpc.Call] = []

    def hold(seed: int) -> None:
        call = stub.Materialize(pb.MaterializeRequest(seed=seed, variables=[HELD]), timeout=300)
        held.append(call)
        first = next(call)
        assert first.data and not first.last

    try:
        hold(1)
        each = reserved(server, "streams")  # what one held stream reserves
        assert each > 0
        fit = int(total // each)
        print(f"one held stream reserves {each:.0f} bytes: {fit} fit the {total:.0f}-byte budget")
        assert fit >= 2, "the budget should hold a few streams"
        for seed in range(2, fit + 1):
            hold(seed)
        assert reserved(server, "streams") == fit * each
        assert total - reserved(server, "streams") < each  # one more does not fit
        assert metric(server, "weightgen_memory_waits_total") == waits_before  # none had to wait
        assert metric(server, "weightgen_active_streams") == fit

        # A further stream waits for the budget, about --budget-wait-seconds, then is refused.
        started = time.monotonic()
        error = first_response_error(stub, pb.MaterializeRequest(seed=99, variables=[HELD]))
        waited = time.monotonic() - started
        assert error.code() == EXHAUSTED, (error.code(), error.details())
        details = error.details()
        assert "--memory-budget" in details and "--budget-wait-seconds" in details, details
        assert f"stayed full for {WAIT_SECONDS} s" in details, details
        assert waited >= WAIT_SECONDS * 0.9, f"refused after {waited:.2f} s, without waiting"
        assert waited < WAIT_SECONDS + 30, f"refused only after {waited:.2f} s"
        print(f"refused after waiting {waited:.2f} s: {details}")
        assert metric(server, "weightgen_memory_waits_total") == waits_before + 1
        assert rejections(server, "memory_budget") == refused_before + 1
        assert reserved(server, "streams") == fit * each  # the refused one gave back what it had
        assert metric(server, "weightgen_active_streams") == fit

        # Once a held stream is cancelled, new requests are served again.
        held.pop().cancel()
        wait_for(lambda: reserved(server, "streams") == (fit - 1) * each, "the cancelled stream's bytes back")
        assert_serves(stub)
        assert rejections(server, "memory_budget") == refused_before + 1
    finally:
        for call in held:
            call.cancel()
    wait_for(lambda: reserved(server, "streams") == 0, "every reservation back")
    wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "no stream left")
