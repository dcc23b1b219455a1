"""TLS, mutual TLS and bearer tokens against a real server with throwaway certificates."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import make_pki

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

REQUEST = pb.MaterializeRequest(
    seed=1, variables=[pb.VariableSpec(name="w", shape=[8, 8], initializer=pb.Initializer(he=pb.He()))]
)
TOKEN = "s3cret-token-for-tests"


def _call(channel: grpc.Channel, metadata=()) -> int:
    chunks = list(weightgen_pb2_grpc.WeightGenStub(channel).Materialize(REQUEST, timeout=30, metadata=metadata))
    return sum(len(c.data) for c in chunks)


def _secure(address: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(address, credentials)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_server(start_server, pki):
    trusted = grpc.ssl_channel_credentials(pki.ca.cert_bytes())
    server = start_server("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), credentials=trusted)
    with _secure(server.address, trusted) as channel:
        assert _call(channel) == 8 * 8 * 4
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as plaintext:
        _call(channel)
    assert plaintext.value.code() is grpc.StatusCode.UNAVAILABLE
    wrong_ca = grpc.ssl_channel_credentials(pki.other_ca.cert_bytes())
    with _secure(server.address, wrong_ca) as channel, pytest.raises(grpc.RpcError) as untrusted:
        _call(channel)
    assert untrusted.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(start_server, pki):
    with_cert = grpc.ssl_channel_credentials(pki.ca.cert_bytes(), pki.client.key_bytes(), pki.client.cert_bytes())
    server = start_server(
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        "--tls-client-ca",
        str(pki.ca.cert),
        credentials=with_cert,
    )
    with _secure(server.address, with_cert) as channel:
        assert _call(channel) == 8 * 8 * 4
    without_cert = grpc.ssl_channel_credentials(pki.ca.cert_bytes())
    with _secure(server.address, without_cert) as channel, pytest.raises(grpc.RpcError) as missing:
        _call(channel)
    assert missing.value.code() is grpc.StatusCode.UNAVAILABLE
    foreign = grpc.ssl_channel_credentials(
        pki.ca.cert_bytes(), pki.other_client.key_bytes(), pki.other_client.cert_bytes()
    )
    with _secure(server.address, foreign) as channel, pytest.raises(grpc.RpcError) as rejected:
        _call(channel)
    assert rejected.value.code() is grpc.StatusCode.UNAVAILABLE


def test_bearer_token(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# accepted tokens\nsomeone-else\n{TOKEN}\n")
    server = start_server("--auth-token-file", str(tokens))
    with grpc.insecure_channel(server.address) as channel:
        assert _call(channel, [("authorization", f"Bearer {TOKEN}")]) == 8 * 8 * 4
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as denied:
                _call(channel, metadata)
            assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED, metadata
            assert "bearer token" in denied.value.details()
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        with pytest.raises(grpc.RpcError) as unary:
            stub.ListInitializers(pb.ListInitializersRequest(), timeout=10)
        assert unary.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListInitializers(
            pb.ListInitializersRequest(), timeout=10, metadata=[("authorization", f"bearer {TOKEN}")]
        )
        # Health stays open, so probes need no credentials.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
