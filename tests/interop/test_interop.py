"""Cross-language interoperability: the Node, Go and C++ example clients and grpcurl against one server.

Run by `make test-interop` (not by `make test`), after examples/interop/setup.sh has installed the
toolchains and built the clients into build/interop/. Every client materialises
examples/interop/request.json with each digest algorithm (none named: the server's default, sha256;
`--digest sha256`, `xxh3_128`, `none`) and must print, per variable, the same shape, dtype, byte size
and digest as the Python reference computed here from the raw generated stubs, whose digests are
checked with libraries (hashlib, xxhash).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import xxhash
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
INTEROP = ROOT / "examples" / "interop"
REQUEST = INTEROP / "request.json"
BAD_REQUEST = INTEROP / "bad_request.json"
BUILD = Path(os.environ.get("WEIGHTGEN_INTEROP_BUILD", ROOT / "build" / "interop"))
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
LIBRARY = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "xxh3_128": xxhash.xxh3_128_digest,
    "none": lambda data: b"",
}
DIGESTS = ["default", "sha256", "xxh3_128", "none"]
"""What the clients are run with: no --digest (the request names none: the server's sha256), or --digest X."""

CLIENTS = {
    "node": [shutil.which("node") or "node", str(ROOT / "examples" / "node" / "bin" / "weightgen-node.js")],
    "go": [str(BUILD / "go" / "bin" / "weightgen-go")],
    "cpp": [str(BUILD / "cpp" / "weightgen-cpp")],
}


def load_request(path: Path) -> pb.MaterializeRequest:
    return json_format.Parse(path.read_text(), pb.MaterializeRequest())


def run(args: list[str], timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def save(client: str, lines: list[str]) -> None:
    """Keeps each client's table in build/interop/digests/CLIENT.tsv, to compare by hand."""
    out = BUILD / "digests"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{client}.tsv").write_text("".join(f"{line}\n" for line in lines))


def digest_flag(digest: str) -> list[str]:
    return [] if digest == "default" else ["--digest", digest]


@pytest.fixture(scope="module")
def references(server) -> dict[str, list[str]]:
    return {digest: python_lines(server, digest) for digest in DIGESTS}


@pytest.fixture(scope="module")
def reference(references) -> list[str]:
    return references["default"]


def python_lines(server, digest: str) -> list[str]:
    """The Python client's lines: name, shape, dtype, byte size, digest hex ('-' for none), from the raw stub."""
    request = load_request(REQUEST)
    algorithm = "sha256" if digest == "default" else digest
    if digest != "default":
        request.digest_algorithm = pb.DigestAlgorithm.Value(f"DIGEST_ALGORITHM_{algorithm.upper()}")
    with grpc.insecure_channel(server.address) as channel:
        chunks = list(weightgen_pb2_grpc.WeightGenStub(channel).Materialize(request, timeout=120))
    infos: dict[int, pb.TensorInfo] = {}
    buffers: dict[int, bytearray] = {}
    digests: dict[int, bytes] = {}
    for chunk in chunks:
        i = chunk.variable_index
        if chunk.HasField("info"):
            infos[i] = chunk.info
            buffers[i] = bytearray(chunk.info.byte_size)
        buffer = buffers[i]
        buffer[chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
        if chunk.last:
            digests[i] = chunk.digest
    assert len(chunks) > len(request.variables), "some variable should span several chunks (chunkBytes)"
    lines = []
    for i, spec in enumerate(request.variables):
        info, data = infos[i], bytes(buffers[i])
        assert info.name == spec.name and info.digest_algorithm == algorithm
        assert LIBRARY[algorithm](data) == digests[i], spec.name
        assert len(data) == info.byte_size, spec.name
        shape = ",".join(str(d) for d in info.shape)
        hexdigest = digests[i].hex() if algorithm != "none" else "-"
        lines.append(f"{info.name}\t{shape}\t{pb.DType.Name(info.dtype)}\t{len(data)}\t{hexdigest}")
    save(f"python-{digest}", lines)
    return lines


def test_request_covers_the_wire_formats():
    request = load_request(REQUEST)
    specs = request.variables
    dtypes = {v.dtype for v in specs}
    assert len(specs) >= 6
    assert {pb.DTYPE_FLOAT32, pb.DTYPE_BFLOAT16, pb.DTYPE_COMPLEX64, pb.DTYPE_INT8} <= dtypes
    assert any(v.slice for v in specs), "a slice"
    assert any(0 in v.shape for v in specs), "a zero-size tensor"


def test_reference_has_a_zero_size_variable(reference, references):
    assert any(line.split("\t")[3] == "0" and line.endswith(EMPTY_SHA256) for line in reference)
    assert references["sha256"] == reference, "a request that names no algorithm gets sha256"
    empty_xxh3 = xxhash.xxh3_128_hexdigest(b"")
    assert any(line.split("\t")[3] == "0" and line.endswith(empty_xxh3) for line in references["xxh3_128"])
    # The same variables whatever the digest; only the digest column differs.
    columns = {digest: [line.rsplit("\t", 1)[0] for line in lines] for digest, lines in references.items()}
    assert len({tuple(c) for c in columns.values()}) == 1
    assert all(line.endswith("\t-") for line in references["none"])


@pytest.mark.parametrize("digest", DIGESTS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_prints_the_python_digests(client, digest, server, references):
    result = run([*CLIENTS[client], "--server", server.address, *digest_flag(digest), str(REQUEST)])
    assert result.returncode == 0, f"{client} --digest {digest} exited {result.returncode}:\n{result.stderr}"
    lines = result.stdout.splitlines()
    save(f"{client}-{digest}", lines)
    assert lines == references[digest], f"{client} differs from the Python client with digest {digest}"


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_refuses_an_unknown_digest(client, server):
    result = run([*CLIENTS[client], "--server", server.address, "--digest", "crc32", str(REQUEST)])
    assert result.returncode == 2 and result.stdout == "", result.stderr


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_reports_a_server_error(client, server):
    bad = load_request(BAD_REQUEST)
    invalid = next(v.name for v in bad.variables if v.initializer.HasField("random_uniform"))
    result = run([*CLIENTS[client], "--server", server.address, str(BAD_REQUEST)])
    assert result.returncode != 0, f"{client} exited 0 on an invalid spec"
    assert result.stdout == ""
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: INVALID_ARGUMENT "), result.stderr
    assert invalid in first, result.stderr


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_reports_an_unreachable_server(client):
    result = run([*CLIENTS[client], "--server", "127.0.0.1:1", "--timeout", "5", str(REQUEST)], timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: UNAVAILABLE "), result.stderr


def test_node_test_suite(server):
    """`node --test` in examples/node, against this server."""
    env = {**os.environ, "WEIGHTGEN_SERVER": server.address}
    result = run([*CLIENTS["node"][:1], "--test"], cwd=ROOT / "examples" / "node", env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# skipped 0" in result.stdout, result.stdout[-2000:]


def grpcurl(*args: str, data: str | None = None) -> subprocess.CompletedProcess:
    return run([str(GRPCURL), "-plaintext", *args], timeout=60, input=data)


def test_grpcurl_lists_services_through_reflection(server):
    result = grpcurl(server.address, "list")
    assert result.returncode == 0, result.stderr
    assert {"weightgen.v1.WeightGen", "grpc.health.v1.Health"} <= set(result.stdout.split())


def test_grpcurl_describes_the_service(server):
    result = grpcurl(server.address, "describe", "weightgen.v1.WeightGen")
    assert result.returncode == 0, result.stderr
    assert "rpc Materialize ( .weightgen.v1.MaterializeRequest ) returns ( stream .weightgen.v1.TensorChunk )" in (
        result.stdout
    )


@pytest.mark.parametrize("digest", DIGESTS)
def test_grpcurl_materialize(server, digest):
    request = {
        "seed": "42",
        "variables": [{"name": "w", "shape": ["2", "3"], "dtype": "DTYPE_FLOAT32", "initializer": {"heNormal": {}}}],
    }
    algorithm = "sha256" if digest == "default" else digest
    if digest != "default":
        request["digestAlgorithm"] = f"DIGEST_ALGORITHM_{algorithm.upper()}"
    result = grpcurl("-d", json.dumps(request), server.address, "weightgen.v1.WeightGen/Materialize")
    assert result.returncode == 0, result.stderr
    decoder, text, chunks = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        chunk, end = decoder.raw_decode(text)
        chunks.append(chunk)
        text = text[end:].strip()
    assert chunks[0]["info"]["name"] == "w" and int(chunks[0]["info"]["byte_size"]) == 24
    assert chunks[-1]["last"] is True
    assert chunks[0]["info"]["digest_algorithm"] == algorithm
    data = b"".join(base64.b64decode(c.get("data", "")) for c in chunks)
    assert len(data) == 24 and LIBRARY[algorithm](data) == base64.b64decode(chunks[-1].get("digest", ""))


def test_grpcurl_reports_the_invalid_spec(server):
    result = grpcurl("-d", "@", server.address, "weightgen.v1.WeightGen/Materialize", data=BAD_REQUEST.read_text())
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "bad/uniform" in result.stderr


@pytest.mark.parametrize("service", ["", "weightgen.v1.WeightGen"])
def test_grpcurl_health_check(server, service):
    args = ["-d", json.dumps({"service": service})] if service else []
    result = grpcurl(*args, server.address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}
