"""Health and reflection cannot be stalled or exhausted: a reflection request that asks nothing (or
is not a request at all) is answered at once, reflection streams and health Watch streams are
bounded (RESOURCE_EXHAUSTED naming the limit, counted), an idle reflection stream is closed, and
Check and ordinary reflection work as before. Against a real server over real gRPC."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from serverproc import RunningServer, launch
from service.helpers import metric, rpc_error, wait_for

from weightgen.server import config

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
SERVING = health_pb2.HealthCheckResponse.SERVING
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
STREAMS = 2
WATCHERS = 3
IDLE = 3.0
ANSWER_WITHIN = 2.0  # a reflection answer takes milliseconds; the calls' deadlines are 60 s
LIST = reflection_pb2.ServerReflectionRequest(list_services="")
SERVICES = ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "weightgen.v1.WeightGen"]


@pytest.fixture(scope="module")
def probed(xla_cache, tmp_path_factory) -> RunningServer:
    running = launch(
        tmp_path_factory.mktemp("probes"),
        "--max-reflection-streams",
        str(STREAMS),
        "--max-health-watchers",
        str(WATCHERS),
        "--reflection-idle-seconds",
        str(IDLE),
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


@pytest.fixture
def channel(probed):
    with grpc.insecure_channel(probed.address) as channel:
        yield channel


class Stream:
    """A reflection stream over raw bytes that stays open (not half-closed) until `close()`: what
    an interactive client (grpcurl, a debugger) does between requests."""

    def __init__(self, channel: grpc.Channel, timeout: float = 60):
        self._outbox: queue.Queue = queue.Queue()
        call = channel.stream_stream(REFLECTION, request_serializer=None, response_deserializer=None)
        self.call = call(iter(self._outbox.get, None), timeout=timeout)

    def ask(self, data: bytes) -> tuple[reflection_pb2.ServerReflectionResponse, float]:
        """Send one request; the response and the seconds it took."""
        started = time.monotonic()
        self._outbox.put(data)
        response = reflection_pb2.ServerReflectionResponse.FromString(next(self.call))
        return response, time.monotonic() - started

    def close(self) -> None:
        self._outbox.put(None)


def reflection_streams(server) -> float:
    return metric(server, "weightgen_reflection_streams")


def rejections(server, limit: str) -> float:
    return metric(server, "weightgen_limit_rejections_total", limit=limit)


def list_services(channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(stub.ServerReflectionInfo(iter([LIST]), timeout=60))
    assert len(responses) == 1, responses
    return [s.name for s in responses[0].list_services_response.service]


# -- reflection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"",  # ServerReflectionRequest(): no message_request
        reflection_pb2.ServerReflectionRequest(host="weightgen").SerializeToString(),  # a host, still nothing asked
        b"\x98\x06\x01",  # only a field this version does not know (a newer kind of request)
    ],
    ids=["empty", "host-only", "unknown-field"],
)
def test_a_request_that_asks_nothing_gets_an_error_response_at_once(probed, channel, request_bytes):
    stream = Stream(channel)
    try:
        response, seconds = stream.ask(request_bytes)
        assert seconds < ANSWER_WITHIN, f"an empty request took {seconds:.1f} s to answer"
        assert response.WhichOneof("message_response") == "error_response", response
        assert response.error_response.error_code == INVALID, response
        message = response.error_response.error_message
        assert message.startswith("request: sets none of file_by_filename, file_containing_symbol"), message
        assert response.original_request == reflection_pb2.ServerReflectionRequest.FromString(request_bytes)
        # The same stream answers the next, proper request.
        response, _ = stream.ask(LIST.SerializeToString())
        assert sorted(s.name for s in response.list_services_response.service) == SERVICES
    finally:
        stream.close()
    assert stream.call.code() == grpc.StatusCode.OK
    wait_for(lambda: reflection_streams(probed) == 0, "the stream's slot freed")


def test_bytes_that_are_not_a_request_get_an_error_response(probed, channel):
    stream = Stream(channel)
    try:
        response, seconds = stream.ask(b"\xff\xff\xff")
        assert seconds < ANSWER_WITHIN
        assert response.error_response.error_code == INVALID, response
        message = response.error_response.error_message
        assert message.startswith("request: not a valid grpc.reflection.v1alpha.ServerReflectionRequest: "), message
        response, _ = stream.ask(LIST.SerializeToString())
        assert sorted(s.name for s in response.list_services_response.service) == SERVICES
    finally:
        stream.close()
    assert stream.call.code() == grpc.StatusCode.OK


def test_reflection_answers_as_before(probed, channel):
    assert sorted(list_services(channel)) == SERVICES
    database = ProtoReflectionDescriptorDatabase(channel)  # one stream per request, as grpcurl's list/describe
    pool = descriptor_pool.DescriptorPool(database)
    methods = [m.name for m in pool.FindServiceByName("weightgen.v1.WeightGen").methods]
    assert methods == ["Materialize", "OpenSession", "CloseSession", "ListInitializers"]
    assert {"Check", "Watch"} <= {m.name for m in pool.FindServiceByName("grpc.health.v1.Health").methods}
    # An unknown symbol is the library's NOT_FOUND error response, as before.
    stream = Stream(channel)
    try:
        ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")
        response, _ = stream.ask(ask.SerializeToString())
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], response
        assert response.original_request == ask
    finally:
        stream.close()
    wait_for(lambda: reflection_streams(probed) == 0, "every stream's slot freed")


def test_reflection_streams_are_bounded(probed, channel):
    before = rejections(probed, "reflection_streams")
    held = [Stream(channel) for _ in range(STREAMS)]
    try:
        for stream in held:  # each stream is open and has been served (so it is counted)
            stream.ask(LIST.SerializeToString())
        assert reflection_streams(probed) == STREAMS
        error = rpc_error(lambda: list_services(channel))
        assert error.code() == EXHAUSTED, error
        assert error.details() == (
            f"{STREAMS} reflection streams are in progress, the server's limit is {STREAMS} (--max-reflection-streams)"
        ), error.details()
        assert rejections(probed, "reflection_streams") == before + 1
        # A slot frees as soon as a stream ends.
        held.pop().close()
        wait_for(lambda: reflection_streams(probed) == STREAMS - 1, "one slot freed")
        assert sorted(list_services(channel)) == SERVICES
    finally:
        for stream in held:
            stream.close()
    wait_for(lambda: reflection_streams(probed) == 0, "every slot freed")
    assert rejections(probed, "reflection_streams") == before + 1


def test_an_idle_reflection_stream_is_closed(probed, channel):
    stream = Stream(channel)
    try:
        stream.ask(LIST.SerializeToString())
        started = time.monotonic()
        error = rpc_error(lambda: next(stream.call))  # then nothing: the server ends it
        waited = time.monotonic() - started
    finally:
        stream.close()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert error.details() == f"no reflection request for {IDLE:g} s: idle reflection streams are closed"
    assert waited < 50, "closed by the client's deadline, not the server"
    wait_for(lambda: reflection_streams(probed) == 0, "the idle stream's slot freed")


# -- health ------------------------------------------------------------------------------------


def watchers(server) -> float:
    return metric(server, "weightgen_health_watchers")


def test_health_watch_streams_are_bounded_and_check_still_answers(probed, channel):
    stub = health_pb2_grpc.HealthStub(channel)
    before = rejections(probed, "health_watchers")
    held = []
    try:
        for name in ("", "weightgen.v1.WeightGen", "weightgen.liveness"):
            call = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60)
            assert next(call).status == SERVING
            held.append(call)
        assert watchers(probed) == WATCHERS
        extra = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        error = rpc_error(lambda: next(extra))
        assert error.code() == EXHAUSTED, error
        assert error.details() == (
            f"{WATCHERS} health Watch streams are in progress, the server's limit is {WATCHERS} "
            "(--max-health-watchers); poll with Check instead"
        ), error.details()
        assert rejections(probed, "health_watchers") == before + 1
        # Check is not limited.
        for name in ("", "weightgen.v1.WeightGen", "weightgen.liveness"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status == SERVING
        # A cancelled Watch frees its slot.
        held.pop().cancel()
        wait_for(lambda: watchers(probed) == WATCHERS - 1, "one watcher gone")
        again = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        held.append(again)
        assert next(again).status == SERVING
    finally:
        for call in held:
            call.cancel()
    wait_for(lambda: watchers(probed) == 0, "every watcher gone")
    assert rejections(probed, "health_watchers") == before + 1


def test_many_watchers_at_once_get_the_limit_not_a_hang(probed):
    """Twenty clients racing for three slots: exactly three watch, the rest are refused at once."""
    results: list[object] = []
    lock = threading.Lock()
    calls = []
    with grpc.insecure_channel(probed.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def watch():
            call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
            with lock:
                calls.append(call)
            try:
                result = next(call).status
            except grpc.RpcError as error:
                result = error.code()
            with lock:
                results.append(result)

        workers = [threading.Thread(target=watch) for _ in range(20)]
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=30)
            assert not any(worker.is_alive() for worker in workers), "a Watch neither served nor refused"
            assert sorted(results, key=str).count(SERVING) == WATCHERS, results
            assert results.count(EXHAUSTED) == 20 - WATCHERS, results
        finally:
            for call in calls:
                call.cancel()
    wait_for(lambda: watchers(probed) == 0, "every watcher gone")


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag", ["--max-health-watchers", "--max-reflection-streams", "--reflection-idle-seconds", "--metrics-threads"]
)
def test_limits_must_be_positive(flag):
    with pytest.raises(SystemExit) as raised:
        config.load([flag, "0"], {})
    assert f"{flag} must be positive" in str(raised.value.code)
