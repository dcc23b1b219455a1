"""Calls refused for their bearer token are counted (an alert on them catches guessing), every RPC
but health is covered, reflection included, and the refusal is the same for every kind of RPC."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service.helpers import metric

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

TOKEN = "another-s3cret-for-tests"
REQUEST = pb.MaterializeRequest(
    seed=1, variables=[pb.VariableSpec(name="w", shape=[4], initializer=pb.Initializer(ones=pb.Ones()))]
)


def _denied(server, method: str) -> float:
    return metric(server, "weightgen_errors_total", method=method, code="UNAUTHENTICATED")


def _reflect(channel, metadata=()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata)
    return [s.name for r in responses for s in r.list_services_response.service]


def test_refused_calls_are_counted_by_method(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = start_server("--auth-token-file", str(tokens), "--warm-precisions", "float32")
    good = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        for metadata in ([], [("authorization", "Bearer nope")]):
            for call in (
                lambda m: list(stub.Materialize(REQUEST, timeout=10, metadata=m)),
                lambda m: stub.OpenSession(pb.OpenSessionRequest(), timeout=10, metadata=m),
                lambda m: stub.CloseSession(pb.CloseSessionRequest(session_id="x"), timeout=10, metadata=m),
                lambda m: _reflect(channel, m),
            ):
                try:
                    call(metadata)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (error.code(), error.details())
                else:
                    raise AssertionError("a call without a valid token was served")
        for method in ("Materialize", "OpenSession", "CloseSession", "ServerReflectionInfo"):
            assert _denied(server, method) == 2, method
            assert metric(server, "weightgen_requests_total", method=method, code="UNAUTHENTICATED") == 2
        # With the token: served, and not counted as refused.
        assert sum(len(c.data) for c in stub.Materialize(REQUEST, timeout=10, metadata=good)) == 16
        assert "weightgen.v1.WeightGen" in _reflect(channel, good)
        assert _denied(server, "Materialize") == 2
