"""MaterializeRequest.digest_algorithm: SHA-256 by default, XXH3-128 or none on request.

Every digest is checked against a library (hashlib, xxhash: `helpers.reference_digest`), never the
server's own code; a resumed stream's digest still covers the whole tensor; the digest board shares
a digest only between streams of the same algorithm.
"""

from __future__ import annotations

import hashlib
import threading

import grpc
import pytest
import xxhash

from weightgen.server.digests import DigestBoard
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc, wire

from .helpers import engine_bytes, fetch, first_response_error, init, metric, reference_digest, var

ALGORITHMS = {
    pb.DIGEST_ALGORITHM_UNSPECIFIED: "sha256",
    pb.DIGEST_ALGORITHM_SHA256: "sha256",
    pb.DIGEST_ALGORITHM_XXH3_128: "xxh3_128",
    pb.DIGEST_ALGORITHM_NONE: "none",
}
SIZES = {"sha256": 32, "xxh3_128": 16, "none": 0}
BIG = var("digest/big", [700, 300], init(random_normal={"stddev": 1.0}))  # 840,000 bytes: 13 chunks of 64 KiB


@pytest.mark.parametrize("value", list(ALGORITHMS), ids=[pb.DigestAlgorithm.Name(v) for v in ALGORITHMS])
def test_each_algorithm_matches_an_independent_library(stub, engine, value):
    name = ALGORITHMS[value]
    variables = [BIG, var("digest/empty", [0, 3], init(he={})), var("digest/one", [1], init(ones={}))]
    request = pb.MaterializeRequest(
        seed=9, variables=variables, chunk_bytes=wire.MIN_CHUNK_BYTES, digest_algorithm=value
    )
    received = fetch(stub, request)  # checks the digest against the library named by the info
    for index, variable in enumerate(variables):
        got = received[index]
        assert got.info.digest_algorithm == name
        assert bytes(got.data) == engine_bytes(engine, variable, 9)
        assert len(got.digest) == SIZES[name]
        assert got.digest == reference_digest(name, got.data)
    big = bytes(received[0].data)
    if name == "sha256":
        assert received[0].digest == hashlib.sha256(big).digest()
    elif name == "xxh3_128":  # canonical form: high 64 bits, then low 64 bits, big-endian
        assert received[0].digest == xxhash.xxh3_128_intdigest(big).to_bytes(16, "big")
        assert received[1].digest == bytes.fromhex("99aa06d3014798d86001c324468d497f")  # XXH3-128 of b""
    else:
        assert all(not c.digest for got in received.values() for c in got.chunks)


def test_a_request_that_names_no_algorithm_gets_sha256_as_before(stub):
    # What a client built before the field existed sends: no digest_algorithm at all.
    got = fetch(stub, pb.MaterializeRequest(seed=2, variables=[var("old", [16, 16], init(he={}))]))[0]
    assert got.info.digest_algorithm == "sha256" and got.digest == hashlib.sha256(got.data).digest()


@pytest.mark.parametrize("name", ["sha256", "xxh3_128", "none"])
def test_a_resumed_stream_digest_covers_the_whole_tensor(stub, engine, name):
    whole = engine_bytes(engine, BIG, 13)
    resumed = pb.VariableSpec()
    resumed.CopyFrom(BIG)
    resumed.resume_offset = 100_001
    request = pb.MaterializeRequest(
        seed=13, variables=[resumed], chunk_bytes=wire.MIN_CHUNK_BYTES, digest_algorithm=wire.DIGEST_BY_NAME[name]
    )
    got = fetch(stub, request)[0]
    assert got.first_offset == 100_001 and bytes(got.data) == whole[100_001:]
    assert got.info.digest_algorithm == name
    assert got.digest == reference_digest(name, whole)
    if name != "none":
        assert got.digest != reference_digest(name, whole[100_001:])


def test_an_unknown_algorithm_is_refused(stub):
    request = pb.MaterializeRequest(seed=1, variables=[var("w", [4], init(ones={}))], digest_algorithm=77)
    error = first_response_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "digest_algorithm" in error.details() and "77" in error.details()


def _hashed(server) -> tuple[float, float]:
    return metric(server, "weightgen_digest_bytes_hashed_total"), metric(server, "weightgen_digest_bytes_shared_total")


def test_the_digest_board_keeps_one_digest_per_algorithm(server):
    variable = var("digest/board", [512, 256], init(he_normal={}))  # 512 KiB
    size = 512 * 256 * 4
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)

        def once(name: str, chunk_bytes: int = 0) -> tuple[float, float]:
            before = _hashed(server)
            request = pb.MaterializeRequest(
                seed=5, variables=[variable], digest_algorithm=wire.DIGEST_BY_NAME[name], chunk_bytes=chunk_bytes
            )
            fetch(stub, request)
            after = _hashed(server)
            return after[0] - before[0], after[1] - before[1]

        assert once("sha256") == (size, 0)
        assert once("xxh3_128") == (size, 0), "an XXH3 stream must not take the SHA-256 digest"
        # Repeats in other chunk sizes build their messages anew (an identical request would take
        # them ready-made from the chunk cache, digest included: test_chunks.py); the digest is kept.
        assert once("xxh3_128", 128 << 10) == (0, size), "a repeat of the same algorithm hashes nothing"
        assert once("sha256", 128 << 10) == (0, size)
        assert once("none") == (0, 0)

        # A herd asking for XXH3-128 hashes the bytes once, whoever is ahead. Each member asks for
        # another chunk size, so that each builds its own messages (identical requests would share
        # them, and only one stream would feed the digest at all: test_chunks.py).
        herd_variable = var("digest/herd", [512, 256], init(he_normal={}))
        barrier = threading.Barrier(4)
        results: list = [None] * 4

        def member(i: int) -> None:
            request = pb.MaterializeRequest(
                seed=5,
                variables=[herd_variable],
                digest_algorithm=pb.DIGEST_ALGORITHM_XXH3_128,
                chunk_bytes=(64 << 10) * (i + 1),
            )
            barrier.wait()
            try:
                results[i] = fetch(stub, request)[0].digest
            except BaseException as error:
                results[i] = error

        before = _hashed(server)
        threads = [threading.Thread(target=member, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = _hashed(server)
    assert all(isinstance(r, bytes) and len(r) == 16 for r in results), results
    assert len(set(results)) == 1
    assert (after[0] - before[0], after[1] - before[1]) == (size, 3 * size)


def test_board_keys_include_the_algorithm():
    board = DigestBoard()
    data = memoryview(b"weightgen" * 1000)
    sha = board.join("k", len(data), "sha256")
    fast = board.join("k", len(data), "xxh3_128")
    assert sha is not fast and board.join("k", len(data), "xxh3_128") is fast
    for shared in (sha, fast):
        board.feed(shared, 0, data)
    assert sha.digest() == hashlib.sha256(data).digest()
    assert fast.digest() == xxhash.xxh3_128_digest(data)
    for shared in (sha, fast, fast):
        board.leave("k", shared)
    assert board.join("k", len(data), "xxh3_128") is fast and fast.complete
