"""``python -m weightgen.server.healthcheck``, the probe of the image's HEALTHCHECK."""

from __future__ import annotations

import datetime
import subprocess
import sys

import grpc
import pytest

from weightgen.server import healthcheck


@pytest.mark.parametrize(
    ("environ", "address"),
    [
        ({}, "127.0.0.1:50051"),
        ({"WEIGHTGEN_PORT": "6000"}, "127.0.0.1:6000"),
        ({"WEIGHTGEN_HOST": "0.0.0.0", "WEIGHTGEN_PORT": "6000"}, "127.0.0.1:6000"),
        ({"WEIGHTGEN_HOST": "[::]"}, "127.0.0.1:50051"),
        ({"WEIGHTGEN_HOST": "::1"}, "[::1]:50051"),
        ({"WEIGHTGEN_HOST": "10.1.2.3", "WEIGHTGEN_PORT": "7"}, "10.1.2.3:7"),
    ],
)
def test_default_address_follows_the_server_settings(environ, address):
    assert healthcheck.default_address(environ) == address


def test_serving_and_liveness(server, capsys):
    assert healthcheck.main(["--address", server.address], environ={}) == 0
    assert healthcheck.main(["--address", server.address, "--service", "weightgen.v1.WeightGen"], environ={}) == 0
    assert healthcheck.main(["--address", server.address, "--service", "weightgen.liveness"], environ={}) == 0
    assert capsys.readouterr().err == ""


def test_unknown_service_and_no_server_fail(server, capsys):
    assert healthcheck.main(["--address", server.address, "--service", "no.such.Service"], environ={}) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert healthcheck.main(["--address", "127.0.0.1:1", "--timeout", "1"], environ={}) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def test_runs_as_a_module_from_the_environment(server):
    environment = {"WEIGHTGEN_PORT": str(server.port), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "weightgen.server.healthcheck"],
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_from_the_server_settings(start_server, tmp_path):
    cert, key = _self_signed(tmp_path)
    running = start_server(
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        credentials=grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()),
    )
    environ = {"WEIGHTGEN_PORT": str(running.port), "WEIGHTGEN_TLS_CERT": str(cert), "WEIGHTGEN_TLS_KEY": str(key)}
    assert healthcheck.main([], environ=environ) == 0
    # Without TLS the probe cannot talk to a TLS server.
    assert healthcheck.main(["--address", running.address, "--timeout", "2"], environ={}) == 1
