"""Chunking on the wire: sizes, order, the zero-size variable and resuming."""

from __future__ import annotations

import hashlib

import pytest

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .helpers import collect, engine_bytes, fetch, init, var

BIG = var("big", [1500, 1000], init(random_normal={"stddev": 1.0}))  # 6 MB: more than one chunk of any size


@pytest.fixture(scope="module")
def big_bytes(engine) -> bytes:
    return engine_bytes(engine, BIG, 17)


@pytest.mark.parametrize(
    "chunk_bytes", [64 << 10, 1 << 20, wire.MAX_CHUNK_BYTES, 0], ids=["64K", "1M", "max", "default"]
)
def test_chunk_sizes_give_the_same_tensor(stub, big_bytes, chunk_bytes):
    got = fetch(stub, pb.MaterializeRequest(seed=17, variables=[BIG], chunk_bytes=chunk_bytes))[0]
    assert bytes(got.data) == big_bytes
    limit = chunk_bytes or wire.DEFAULT_CHUNK_BYTES
    sizes = [len(c.data) for c in got.chunks]
    assert max(sizes) <= limit, f"a chunk of {max(sizes)} bytes exceeds chunk_bytes={limit}"
    assert len(sizes) >= -(-len(big_bytes) // limit)
    assert all(sizes), "a chunk without data"


def test_interleaved_variables_each_in_offset_order(stub, engine):
    variables = [
        var("a", [300, 200], init(random_uniform={})),  # 240,000 bytes: four chunks
        var("empty", [0, 5], init(he={})),
        var("b", [7, 11, 13], init(glorot_normal={}), dtype=pb.DTYPE_FLOAT64),
        var("c", [1], init(constant={"value": 2.5})),
    ]
    request = pb.MaterializeRequest(seed=4, variables=variables, chunk_bytes=wire.MIN_CHUNK_BYTES)
    chunks = list(stub.Materialize(request, timeout=60))
    received = collect(chunks)  # checks offsets, info, last and digest per variable
    for index, variable in enumerate(variables):
        got = received[index]
        assert bytes(got.data) == engine_bytes(engine, variable, 4)
        assert got.digest == hashlib.sha256(got.data).digest()
        assert got.info.byte_size == len(got.data)
    empty = received[1]
    assert len(empty.chunks) == 1, "a zero-size variable gets exactly one chunk"
    (only,) = empty.chunks
    assert only.HasField("info") and only.last and only.data == b"" and only.offset == 0
    assert only.digest == hashlib.sha256(b"").digest()
    assert list(only.info.shape) == [0, 5] and only.info.byte_size == 0


def test_zero_size_alone_and_scalar(stub):
    variables = [var("none", [3, 0, 2], init(random_normal={})), var("s", [], init(ones={}))]
    chunks = list(stub.Materialize(pb.MaterializeRequest(seed=4, variables=variables), timeout=60))
    received = collect(chunks)
    assert [len(received[0].chunks), received[0].chunks[0].last, bytes(received[0].data)] == [1, True, b""]
    assert bytes(received[1].data) == b"\x00\x00\x80\x3f"  # 1.0f, little-endian


@pytest.mark.parametrize("resume", [0, 1, 1_000_003, 4 << 20, 6_000_000 - 1, 6_000_000])
def test_resume_delivers_exactly_the_suffix(stub, big_bytes, resume):
    variable = pb.VariableSpec()
    variable.CopyFrom(BIG)
    variable.resume_offset = resume
    chunks = list(stub.Materialize(pb.MaterializeRequest(seed=17, variables=[variable], chunk_bytes=1 << 20)))
    got = collect(chunks)[0]
    assert got.first_offset == resume
    assert bytes(got.data) == big_bytes[resume:]
    assert got.digest == hashlib.sha256(big_bytes).digest(), "the digest covers the whole tensor"
    assert got.info.byte_size == len(big_bytes)
    assert all(len(c.data) <= 1 << 20 for c in got.chunks)


def test_resume_a_slice(stub, engine):
    sliced = var("s", [512, 512], init(he={}), slice=[pb.Range(start=8, stop=400), pb.Range(start=3, stop=461)])
    whole = engine_bytes(engine, sliced, 2)
    resumed = pb.VariableSpec()
    resumed.CopyFrom(sliced)
    resumed.resume_offset = 100_001
    request = pb.MaterializeRequest(seed=2, variables=[resumed], chunk_bytes=wire.MIN_CHUNK_BYTES)
    got = collect(stub.Materialize(request))[0]
    assert len(got.chunks) > 2
    assert bytes(got.data) == whole[100_001:] and got.digest == hashlib.sha256(whole).digest()
    assert got.info.byte_size == len(whole) == 392 * 458 * 4
