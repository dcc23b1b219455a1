"""Sessions through the client, and server errors as exception classes with the server's message."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
from client_helpers import same_bytes

from weightgen.client import Client, Variable, errors, init

RANDOM = [Variable("a", (16, 8), "he"), Variable("b", (8, 8), "random_normal"), Variable("c", (8,), "ones")]


def test_by_name_session_equals_a_seeded_request(client):
    with client.open_session(seed=77) as session:
        assert session.seed == 77 and not session.sequential
        in_session = session.materialize(RANDOM)
        again = session.materialize(RANDOM[::-1])  # by name: order and repetition do not matter
    plain = client.materialize(RANDOM, seed=77)
    assert all(same_bytes(in_session[k], plain[k]) and same_bytes(again[k], plain[k]) for k in plain)


def test_session_defaults_apply(client):
    with client.open_session(
        seed=3, default_initializer=init.random_uniform(min=5, max=6), default_dtype="float16"
    ) as s:
        arrays = s.materialize([Variable("x", (10, 10)), Variable("y", (4,), "zeros", dtype="int8")])
    assert arrays["x"].dtype == np.float16 and np.all((arrays["x"] >= 5) & (arrays["x"] <= 6))
    assert arrays["y"].dtype == np.int8 and np.all(arrays["y"] == 0)


def test_sequential_session_continues_across_requests(client):
    with client.open_session(seed=11, rng_mode="sequential") as session:
        first = list(session.stream(RANDOM))
        second = list(session.stream([Variable("d", (16, 8), "he")]))
        assert [t.info.sequence_index for t in first[:2]] == [0, 1]
        assert not first[2].info.HasField("sequence_index")  # "ones" draws nothing
        assert second[0].info.sequence_index == 2
        assert session.close() == 3
    # The same seed and order give the same values; by-name derivation gives others.
    with client.open_session(seed=11, rng_mode="sequential") as replay:
        again = replay.materialize(RANDOM)
    assert all(same_bytes(t.array, again[t.name]) for t in first)
    assert not same_bytes(first[0].array, client.materialize(RANDOM[:1], seed=11)["a"])


def test_invalid_argument_names_the_variable(client):
    with pytest.raises(errors.InvalidArgument) as caught:
        client.materialize([Variable("ok", (2, 2), "he"), Variable("bad", (3, -1), "he")], seed=1)
    error = caught.value
    assert isinstance(error, errors.WeightgenError) and error.code == "INVALID_ARGUMENT"
    assert "variables[1]" in error.message and "'bad'" in error.message and "shape[1]" in error.message
    assert str(error).startswith("INVALID_ARGUMENT: variables[1]") and "fix the spec" in str(error)
    with pytest.raises(errors.InvalidArgument, match="min"):
        client.materialize([Variable("u", (2,), init.random_uniform(min=2, max=1))], seed=1)


def test_unknown_session_is_not_found(client):
    session = client.open_session(seed=1)
    forged = session.id[:-4] + ("AAAA" if not session.id.endswith("AAAA") else "BBBB")  # its signature broken
    with pytest.raises(errors.NotFound) as caught:
        client.materialize([Variable("x", (2,), "he")], session=forged)
    assert forged[:16] in caught.value.message and caught.value.code == "NOT_FOUND"
    with pytest.raises(errors.NotFound):
        client.close_session(forged)
    session.close()


def test_unreachable_server_is_unavailable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", retries=1, retry_seconds=1, timeout=10) as client:
        client.backoff = 0.01
        with pytest.raises(errors.Unavailable) as caught:
            client.materialize([Variable("x", (2,), "he")], seed=1)
        with pytest.raises(errors.Unavailable):
            client.list_initializers()
    assert "retry" in str(caught.value)


def test_bearer_token(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# accepted tokens\ns3cret\n")
    server = start_server("--auth-token-file", str(tokens), "--warm-precisions", "float32")
    with Client(server.address, token="s3cret") as client:
        assert client.materialize([Variable("x", (3,), "ones")], seed=1)["x"].tolist() == [1, 1, 1]
    for token in (None, "wrong"):
        with Client(server.address, token=token) as client, pytest.raises(errors.Unauthenticated) as caught:
            client.materialize([Variable("x", (3,), "ones")], seed=1)
        assert "bearer token" in caught.value.message and "token=" in str(caught.value)


def test_list_initializers(client):
    response = client.list_initializers()
    names = [i.name for i in response.initializers]
    assert {"he_normal", "random_uniform", "variance_scaling", "broadcast"} <= set(names)
    assert response.generator == "weightgen/2"
    # Every initializer the server lists has a client helper.
    assert all(callable(getattr(init, name)) for name in names)


def test_mutual_tls(start_server, tmp_path):
    import grpc
    from pki import make_pki

    pki = make_pki(tmp_path / "pki")
    credentials = grpc.ssl_channel_credentials(
        pki.ca.cert_bytes(), private_key=pki.client.key_bytes(), certificate_chain=pki.client.cert_bytes()
    )
    server = start_server(
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca.cert),
        "--warm-precisions", "float32", credentials=credentials,
    )  # fmt: skip
    with Client(server.address, tls=credentials) as client:
        assert client.materialize([Variable("x", (2,), "ones")], seed=1)["x"].tolist() == [1, 1]
    # Without a client certificate the handshake fails: the server is unreachable for this client.
    anonymous = Client(server.address, tls=True, root_certificates=pki.ca.cert_bytes(), retries=0, timeout=10)
    with anonymous, pytest.raises(errors.Unavailable):
        anonymous.list_initializers()
    result = subprocess.run(
        [sys.executable, "-m", "weightgen.client.cli", "list", "--json", "--server", server.address,
         "--ca-file", str(pki.ca.cert), "--cert-file", str(pki.client.cert), "--key-file", str(pki.client.key)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and '"generator": "weightgen/2"' in result.stdout, result.stderr
