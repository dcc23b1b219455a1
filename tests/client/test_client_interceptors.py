"""The client's seam: gRPC client interceptors (`Client(interceptors=...)`) see every call on a real
server; and the tests' own interceptor (faultwire) that cuts, changes and counts streams through it."""

from __future__ import annotations

import collections
import dataclasses

import grpc
import pytest
from client_helpers import same_bytes
from faultwire import Faults, encode

from weightgen.client import Client, Variable, errors
from weightgen.client.client import MATERIALIZE
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

CHUNK = 64 << 10
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


def test_faultwire_re_encodes_a_chunk_to_its_very_bytes(server):
    request = pb.MaterializeRequest(seed=9, chunk_bytes=CHUNK, variables=[v.to_proto() for v in VARIABLES])
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_stream(MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString)
        raws = list(call(request, timeout=60))
    chunks = [wire.decode_chunk(raw) for raw in raws]
    assert len(raws) == 5 and chunks[0].info is not None and chunks[-1].last and chunks[-1].digest
    assert [encode(chunk) for chunk in chunks] == raws


def test_faultwire_changed_chunks_reach_the_client_re_encoded(server):
    copies = []

    def copy(attempt, chunk):
        copies.append(attempt)
        return dataclasses.replace(chunk)  # equal, but not the same object: re-encoded

    with Client(server.address, chunk_bytes=CHUNK, interceptors=[Faults(copy)]) as client:
        copied = client.materialize(VARIABLES, seed=9)  # every digest verified
    with Client(server.address, chunk_bytes=CHUNK) as client:
        reference = client.materialize(VARIABLES, seed=9)
    assert copies == [0] * 5
    assert all(same_bytes(copied[k], reference[k]) for k in reference)


def test_faultwire_numbers_the_calls_of_each_fetch(server):
    def cut_the_first_call(attempt, chunk):
        return None if attempt == 0 else chunk

    faults = Faults(cut_the_first_call)
    with Client(server.address, chunk_bytes=CHUNK, interceptors=[faults]) as client:
        client.backoff = 0.01
        first = client.materialize(VARIABLES, seed=2)
        assert faults.calls == [0, 1]  # cut, then resumed
        second = client.materialize(VARIABLES, seed=2)
        assert faults.calls == [0, 1, 0, 1]  # a new fetch counts from 0 again
        faults.hook = None
        parallel = client.materialize(VARIABLES, seed=2, streams=2)
        assert faults.calls == [0, 1, 0, 1, 0, 0]  # one first call per stream
    with Client(server.address) as client:
        reference = client.materialize(VARIABLES, seed=2)
    for got in (first, second, parallel):
        assert all(same_bytes(got[k], reference[k]) for k in reference)


def test_a_cut_stream_is_unavailable_to_the_client(server):
    def cut_everything(attempt, chunk):
        return None

    faults = Faults(cut_everything)
    with Client(server.address, retries=0, interceptors=[faults]) as c, pytest.raises(errors.Unavailable) as caught:
        c.materialize(VARIABLES, seed=2)
    assert "the stream was cut (test fault)" in caught.value.message
