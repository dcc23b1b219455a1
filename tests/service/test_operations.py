"""Health, reflection and metrics of a running server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .helpers import fetch, init, metric, rpc_error, var

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("name", ["", "weightgen.v1.WeightGen", "weightgen.liveness"])
def test_health_serving_after_warm_up(server, name):
    assert server.health(name) == SERVING
    assert metric(server, "weightgen_ready") == 1


def test_health_of_an_unknown_service(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        error = rpc_error(lambda: stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert "weightgen.v1.WeightGen" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("weightgen.v1.WeightGen")
        assert [m.name for m in service.methods] == ["Materialize", "OpenSession", "CloseSession", "ListInitializers"]
        chunk = pool.FindMessageTypeByName("weightgen.v1.TensorChunk")
        assert [f.name for f in chunk.fields] == [f.name for f in pb.TensorChunk.DESCRIPTOR.fields]


def test_metrics(server, stub):
    variable = var("metered", [123, 45], init(random_normal={}))
    size = 123 * 45 * 4
    ok = dict(method="Materialize", code="OK")
    before = {
        "ok": metric(server, "weightgen_requests_total", **ok),
        "bytes": metric(server, "weightgen_bytes_streamed_total"),
        "elements": metric(server, "weightgen_elements_streamed_total"),
        "variables": metric(server, "weightgen_variables_streamed_total"),
        "generations": metric(server, "weightgen_generation_seconds_count"),
        "sessions": metric(server, "weightgen_open_sessions"),
        "opened": metric(server, "weightgen_requests_total", method="OpenSession", code="OK"),
        "listed": metric(server, "weightgen_requests_total", method="ListInitializers", code="OK"),
    }
    fetch(stub, pb.MaterializeRequest(seed=1, variables=[variable], chunk_bytes=wire.MIN_CHUNK_BYTES))
    assert metric(server, "weightgen_requests_total", **ok) == before["ok"] + 1
    assert metric(server, "weightgen_bytes_streamed_total") == before["bytes"] + size, "tensor bytes, not framing"
    assert metric(server, "weightgen_elements_streamed_total") == before["elements"] + 123 * 45
    assert metric(server, "weightgen_variables_streamed_total") == before["variables"] + 1
    assert metric(server, "weightgen_generation_seconds_count") == before["generations"] + 1
    assert metric(server, "weightgen_generation_seconds_bucket", le="+Inf") == before["generations"] + 1
    assert metric(server, "weightgen_generation_seconds_sum") > 0
    assert metric(server, "weightgen_request_seconds_count", method="Materialize") >= 1
    assert metric(server, "weightgen_active_streams") == 0

    session = stub.OpenSession(pb.OpenSessionRequest(seed=3), timeout=30)
    assert metric(server, "weightgen_open_sessions") == before["sessions"], "opening holds nothing: the id carries it"
    assert metric(server, "weightgen_requests_total", method="OpenSession", code="OK") == before["opened"] + 1
    fetch(stub, pb.MaterializeRequest(session_id=session.session_id, variables=[variable]))
    assert metric(server, "weightgen_open_sessions") == before["sessions"] + 1  # verified once, then cached
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30)
    assert metric(server, "weightgen_open_sessions") == before["sessions"]
    stub.ListInitializers(pb.ListInitializersRequest(), timeout=30)
    assert metric(server, "weightgen_requests_total", method="ListInitializers", code="OK") == before["listed"] + 1


def test_whole_tensors_are_built_once_and_counted(server, stub):
    """Two fetches of one orthogonal tensor, whole and sliced: one build, then a hit (the slice is
    cut from the cached tensor)."""
    whole = var("recurrent", [96, 64], init(orthogonal={}))
    sliced = var(
        "recurrent", [96, 64], init(orthogonal={}), slice=[pb.Range(start=10, stop=20), pb.Range(start=0, stop=64)]
    )
    before = {n: metric(server, f"weightgen_whole_{n}_total") for n in ("builds", "hits")}
    first = fetch(stub, pb.MaterializeRequest(seed=31, variables=[whole]))[0]
    second = fetch(stub, pb.MaterializeRequest(seed=31, variables=[sliced]))[0]
    assert bytes(second.data) == bytes(first.data)[10 * 64 * 4 : 20 * 64 * 4]
    assert metric(server, "weightgen_whole_builds_total") == before["builds"] + 1
    assert metric(server, "weightgen_whole_hits_total") == before["hits"] + 1
    assert metric(server, "weightgen_whole_cache_bytes") >= 96 * 64 * 4


def test_metrics_of_a_resumed_stream_count_bytes_sent(server, stub):
    variable = var("resumed", [100, 10], init(random_uniform={}), resume_offset=1000)
    before = metric(server, "weightgen_bytes_streamed_total")
    fetch(stub, pb.MaterializeRequest(seed=1, variables=[variable]))
    assert metric(server, "weightgen_bytes_streamed_total") == before + 4000 - 1000
