"""The client's seam: gRPC client interceptors (`Client(interceptors=...)`) see every call on a real server."""

from __future__ import annotations

import collections

import grpc
import pytest
from client_helpers import same_bytes

from weightgen.client import Client, Variable, errors
from weightgen.client.client import MATERIALIZE

VARIABLES = [Variable("w", (256, 256), "he"), Variable("b", (300,), "random_uniform")]  # 256 KiB: 4 chunks, and 1


DETAILS = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")


class _Details(collections.namedtuple("_Details", DETAILS), grpc.ClientCallDetails):
    """A call's details with other metadata (gRPC's documented way to change them in an interceptor)."""


class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """A user's interceptor: sends a bearer token with every call and records the methods called."""

    def __init__(self, token: str):
        self.token = token
        self.methods: list[str] = []

    def _with_token(self, details):
        self.methods.append(details.method)
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return _Details(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


def test_an_interceptor_sees_every_call_and_its_metadata_reaches_the_server(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# accepted tokens\ns3cret\n")
    server = start_server("--auth-token-file", str(tokens), "--warm-precisions", "float32")
    bearer = Bearer("s3cret")
    with Client(server.address, interceptors=[bearer]) as client:  # no token=: the interceptor sends it
        assert client.list_initializers().initializers
        with client.open_session(seed=3) as session:
            arrays = session.materialize(VARIABLES)
        assert client.materialize([Variable("x", (3,), "ones")], seed=1)["x"].tolist() == [1, 1, 1]
    service = "/weightgen.v1.WeightGen/"
    assert bearer.methods == [
        service + "ListInitializers",
        service + "OpenSession",
        MATERIALIZE,
        service + "CloseSession",
        MATERIALIZE,
    ]
    with Client(server.address, token="s3cret") as client, client.open_session(seed=3) as session:
        reference = session.materialize(VARIABLES)
    assert all(same_bytes(arrays[k], reference[k]) for k in reference)
    # Without it, the server refuses: the token the server accepted came through the interceptor.
    with Client(server.address, interceptors=[Bearer("wrong")]) as client, pytest.raises(errors.Unauthenticated):
        client.list_initializers()


def test_interceptors_is_a_sequence_of_interceptors(server):
    with pytest.raises(TypeError, match=r"interceptors=\[interceptor\]"):
        Client(server.address, interceptors=Bearer("s3cret"))
    with pytest.raises(TypeError):
        Client(server.address, interceptors=[object()])
