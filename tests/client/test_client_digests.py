"""The client's digest algorithms: XXH3-128 by default, SHA-256 or none on request, checked against
libraries (hashlib, xxhash); files keep a content digest in their manifest whatever the fetch asked
for, and a file holds exactly the bytes an in-memory fetch gives."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from client_helpers import BreakingProxy, xxh3
from faultwire import Faults

from weightgen.client import Client, DigestMismatchError, Variable, read_manifest
from weightgen.client.files import Manifest, read_header, tensor_view
from weightgen.client.verify import verify_file
from weightgen.v1 import weightgen_pb2 as pb

VARIABLES = [
    Variable("embed", (300, 256), "random_normal(stddev=0.02)", dtype="bfloat16"),  # 150 KiB
    Variable("dense", (256, 384), "he_uniform"),  # 384 KiB: several 64 KiB chunks
    Variable("bias", (384,), "zeros", dtype="float16"),
    Variable("empty", (0, 7), "he"),
    Variable("shard", (64, 32), "glorot_uniform", slice=np.s_[16:32]),
]
LIBRARY = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "xxh3_128": xxh3,
}


def _bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()


def test_the_default_client_asks_for_xxh3_and_verifies_it(server):
    with Client(server.address) as client:
        assert client.digest == "xxh3_128"
        assert client.request(VARIABLES).digest_algorithm == pb.DIGEST_ALGORITHM_XXH3_128
        tensors = list(client.stream(VARIABLES, seed=4))
    for tensor in tensors:
        assert tensor.info.digest_algorithm == tensor.digest_algorithm == "xxh3_128"
        assert tensor.digest == xxh3(_bytes(tensor.array))


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3_128", "none"])
def test_each_algorithm_gives_the_same_bytes_and_its_library_digest(server, algorithm):
    with Client(server.address) as reference:
        expected = {t.name: t for t in reference.stream(VARIABLES, seed=6)}
    with Client(server.address, digest=algorithm, chunk_bytes=64 << 10) as client:
        tensors = list(client.stream(VARIABLES, seed=6))
    assert [t.name for t in tensors] == [v.name for v in VARIABLES]
    for tensor in tensors:
        data = _bytes(tensor.array)
        assert data == _bytes(expected[tensor.name].array)
        assert tensor.info.digest_algorithm == algorithm
        if algorithm == "none":
            assert tensor.digest == b"" and tensor.digest_algorithm == ""
        else:
            assert tensor.digest_algorithm == algorithm and tensor.digest == LIBRARY[algorithm](data)


def _corrupt(attempt: int, chunk):
    if chunk.data.nbytes and chunk.offset == 0:
        flipped = bytearray(chunk.data)
        flipped[7] ^= 0x01  # one bit
        return dataclasses.replace(chunk, data=memoryview(bytes(flipped)))
    return chunk


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3_128"])
def test_a_flipped_bit_is_caught_by_either_digest(server, algorithm):
    faults = Faults(_corrupt)
    with Client(server.address, digest=algorithm, interceptors=[faults]) as client, pytest.raises(
        DigestMismatchError
    ) as caught:
        client.materialize([Variable("w", (32, 32), "he")], seed=1)
    assert caught.value.algorithm == algorithm and algorithm in str(caught.value)
    # Nothing to check against: it goes through.
    with Client(server.address, digest="none", interceptors=[Faults(_corrupt)]) as client:
        corrupted = client.materialize([Variable("w", (32, 32), "he")], seed=1)["w"]
    with Client(server.address, digest="none") as client:
        clean = client.materialize([Variable("w", (32, 32), "he")], seed=1)["w"]
    assert _bytes(corrupted) != _bytes(clean)


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3_128"])
def test_a_dropped_connection_resumes_and_the_digest_covers_every_byte(server, algorithm):
    variables = [Variable("big", (512, 512), "random_uniform(min=-1, max=1)")]  # 1 MiB
    with Client(server.address, digest=algorithm) as client:
        expected = client.materialize(variables, seed=3)["big"]
    proxy = BreakingProxy(server.address, lambda n: 300_000 if n == 0 else None)
    try:
        with Client(proxy.address, digest=algorithm, chunk_bytes=64 << 10, retry_seconds=30) as client:
            client.backoff = 0.01
            (tensor,) = client.stream(variables, seed=3)
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.connections >= 2, "the stream was not cut"
    assert _bytes(tensor.array) == _bytes(expected)
    assert tensor.digest == LIBRARY[algorithm](_bytes(expected))


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3_128", "none"])
def test_a_file_is_byte_identical_to_the_in_memory_fetch(server, tmp_path, algorithm):
    path = tmp_path / "model.safetensors"
    with Client(server.address, digest=algorithm) as client:
        manifest = client.materialize_to_file(VARIABLES, path, seed=11, streams=2)
        arrays = client.materialize(VARIABLES, seed=11)
    # The manifest always holds a content digest: the server's, or (with "none") the client's XXH3-128.
    recorded = "xxh3_128" if algorithm == "none" else algorithm
    assert manifest.digest_algorithm == read_manifest(path).digest_algorithm == recorded
    assert "digestAlgorithm" in manifest.to_dict() and "digestAlgorithm" not in manifest.to_dict()["request"]
    _, tensors = read_header(path)
    in_file = {t.name: t for t in tensors}
    assert set(in_file) == set(arrays)
    for entry in manifest.variables:
        on_disk = np.asarray(tensor_view(path, in_file[entry.name])).reshape(-1).view(np.uint8).tobytes()
        assert on_disk == _bytes(arrays[entry.name]), entry.name
        assert entry.digest == LIBRARY[recorded](on_disk).hex(), entry.name
    # `weightgen verify` re-fetches with the manifest's algorithm, whatever the client's default.
    with Client(server.address) as auditor:
        checks = verify_file(auditor, path)
    assert [c.name for c in checks] == [v.name for v in VARIABLES] and all(c.ok for c in checks), checks


def test_verify_names_the_algorithm_of_a_corrupted_file(client, tmp_path):
    path = tmp_path / "m.safetensors"
    client.materialize_to_file([Variable("w", (64, 64), "he")], path, seed=2)
    (tensor,) = read_header(path)[1]
    with open(path, "r+b") as f:
        f.seek(tensor.begin + 100)
        byte = f.read(1)
        f.seek(tensor.begin + 100)
        f.write(bytes([byte[0] ^ 0x80]))
    (check,) = verify_file(client, path)
    assert not check.ok
    assert any("xxh3_128" in p for p in check.problems), check.problems


def test_an_older_sha256_manifest_still_verifies(client, tmp_path):
    path = tmp_path / "old.safetensors"
    with Client(client.target, digest="sha256") as old:
        manifest = old.materialize_to_file([Variable("w", (40, 40), "he_normal")], path, seed=3)
    assert manifest.digest_algorithm == "sha256"
    # A manifest written before digestAlgorithm existed reads as SHA-256.
    data = manifest.to_dict()
    del data["digestAlgorithm"]
    assert Manifest.from_json(json.dumps(data)).digest_algorithm == "sha256"
    (check,) = verify_file(client, path)
    assert check.ok, check.problems


def test_an_unknown_algorithm_is_refused_before_any_call():
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        Client("127.0.0.1:1", digest="crc32")
