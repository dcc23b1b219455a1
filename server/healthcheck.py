"""A tiny gRPC health probe for container HEALTHCHECKs and Kubernetes exec probes.

    python -m weightgen.server.healthcheck [--address HOST:PORT] [--service NAME] [--timeout S]

Asks the server's ``grpc.health.v1.Health/Check`` and exits 0 if and only if the answer is SERVING
(1 otherwise, with the reason on stderr). It imports only grpc, never JAX, so it is fast enough to
run every few seconds.

Defaults come from the server's own environment, so the probe needs no arguments inside the image:
the address is ``127.0.0.1:$WEIGHTGEN_PORT`` (or ``$WEIGHTGEN_HOST`` when that is a specific
address rather than a wildcard). When ``WEIGHTGEN_TLS_CERT`` is set the probe speaks TLS: it trusts
``--ca`` (default ``$WEIGHTGEN_HEALTHCHECK_CA``, else ``$WEIGHTGEN_TLS_CERT``, which suits
self-signed certificates and chains that include their CA), checks the certificate against
``--server-name`` (default ``$WEIGHTGEN_HEALTHCHECK_SERVER_NAME``, else ``localhost``) and, for
mutual TLS, presents ``$WEIGHTGEN_HEALTHCHECK_CLIENT_CERT`` / ``_CLIENT_KEY`` when set. Health checks
need no bearer token (the server exempts them from auth).

Service names: ``""`` or ``weightgen.v1.WeightGen`` are SERVING once warm and not draining
(readiness); ``weightgen.liveness`` is SERVING while the process serves at all (liveness).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def default_address(environ: Mapping[str, str]) -> str:
    """Where the server in this container listens, from its WEIGHTGEN_* settings."""
    host = environ.get("WEIGHTGEN_HOST", "127.0.0.1").strip()
    port = environ.get("WEIGHTGEN_PORT", "50051").strip() or "50051"
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host.strip("[]"):  # an IPv6 literal
        host = f"[{host.strip('[]')}]"
    return f"{host}:{port}"


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def channel_for(address: str, environ: Mapping[str, str], ca: str, server_name: str) -> grpc.Channel:
    """An insecure channel, or a TLS one when the server is configured for TLS."""
    if not environ.get("WEIGHTGEN_TLS_CERT"):
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(environ.get("WEIGHTGEN_HEALTHCHECK_CLIENT_KEY", "")),
        certificate_chain=_read(environ.get("WEIGHTGEN_HEALTHCHECK_CLIENT_CERT", "")),
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server_name)])


def check(address: str, service: str, timeout: float, environ: Mapping[str, str], ca: str, server_name: str) -> str:
    """The health status name of `service` at `address` (SERVING, NOT_SERVING, SERVICE_UNKNOWN, ...)."""
    with channel_for(address, environ, ca, server_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m weightgen.server.healthcheck",
        description="Exit 0 if the weightgen server's gRPC health service reports SERVING, else 1.",
    )
    parser.add_argument("--address", default=default_address(environ), help="HOST:PORT [%(default)s]")
    parser.add_argument(
        "--service",
        default="",
        help="health service name: '' or weightgen.v1.WeightGen (ready), weightgen.liveness (alive) [%(default)r]",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer [%(default)s]")
    parser.add_argument(
        "--ca",
        default=environ.get("WEIGHTGEN_HEALTHCHECK_CA") or environ.get("WEIGHTGEN_TLS_CERT", ""),
        help="PEM roots to trust when TLS is on",
    )
    parser.add_argument(
        "--server-name",
        default=environ.get("WEIGHTGEN_HEALTHCHECK_SERVER_NAME", "localhost"),
        help="name the TLS certificate must carry [%(default)s]",
    )
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout, environ, args.ca, args.server_name)
    except grpc.RpcError as error:
        print(f"weightgen healthcheck: {args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except OSError as error:  # an unreadable certificate file
        print(f"weightgen healthcheck: {error}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"weightgen healthcheck: {args.address} service {args.service!r} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
