"""The hand-written TensorChunk codec (weightgen.v1.wire) against the generated protobuf classes."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

UINT32 = st.integers(0, 2**32 - 1)
INT64 = st.one_of(st.sampled_from([0, 1, 2**31, 2**63 - 1, -1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
UINT64 = st.integers(0, 2**64 - 1)

infos = st.builds(
    pb.TensorInfo,
    name=st.text(max_size=20),
    shape=st.lists(INT64, max_size=4),
    dtype=st.sampled_from(sorted(wire.DTYPES)),
    byte_size=INT64,
    seed=UINT64,
    generator=st.sampled_from(["", "weightgen/2"]),
    digest_algorithm=st.sampled_from(["", "sha256"]),
    slice=st.lists(st.builds(pb.Range, start=INT64, stop=INT64), max_size=3),
    zero_reason=st.sampled_from([0, 1, 2]),
)

chunks = st.fixed_dictionaries(
    {
        "variable_index": st.one_of(st.just(0), UINT32),
        "offset": st.one_of(st.just(0), INT64),
        "data": st.one_of(st.just(b""), st.binary(max_size=300)),
        "info": st.one_of(st.none(), infos),
        "last": st.booleans(),
        "digest": st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    }
)


def _unknown_field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = wire._varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + wire._varint(int.from_bytes(payload[:8].ljust(8, b"\0"), "little"))
    if wire_type == 1:
        return key + payload[:8].ljust(8, b"\0")
    if wire_type == 5:
        return key + payload[:4].ljust(4, b"\0")
    return key + wire._varint(len(payload)) + payload


unknown_fields = st.lists(
    st.builds(
        _unknown_field,
        st.integers(8, 2**29 - 1),  # 1 to 7 are TensorChunk's own
        st.sampled_from([0, 1, 2, 5]),
        st.binary(max_size=16),
    ),
    max_size=3,
)


def _fields(message: pb.TensorChunk) -> dict:
    return {
        "variable_index": message.variable_index,
        "offset": message.offset,
        "data": bytes(message.data),
        "info": message.info if message.HasField("info") else None,
        "last": message.last,
        "digest": bytes(message.digest),
    }


def _decoded(chunk: wire.Chunk) -> dict:
    return {
        "variable_index": chunk.variable_index,
        "offset": chunk.offset,
        "data": bytes(chunk.data),
        "info": chunk.info,
        "last": chunk.last,
        "digest": chunk.digest,
    }


@settings(max_examples=300, deadline=None)
@given(chunks, st.integers(1, 4), unknown_fields)
def test_encoded_chunks_parse_as_the_proto_says(fields, pieces, extra):
    data = fields["data"]
    cut = [len(data) * i // pieces for i in range(pieces + 1)]
    buffers = [memoryview(data)[a:b] for a, b in itertools.pairwise(cut)]  # several buffers, joined
    info = fields["info"].SerializeToString() if fields["info"] is not None else b""
    encoded = wire.encode_chunk(
        fields["variable_index"],
        fields["offset"],
        buffers if pieces > 1 else data,
        info=info,
        last=fields["last"],
        digest=fields["digest"],
    )
    parsed = pb.TensorChunk.FromString(encoded)
    # encode_chunk takes the info serialized: b"" (an empty TensorInfo included) means "no info".
    expected = dict(fields, info=fields["info"] if info else None)
    assert _fields(parsed) == expected
    # Unknown fields appended (a newer peer) still parse the same, in both codecs.
    assert _fields(pb.TensorChunk.FromString(encoded + b"".join(extra))) == expected
    assert _decoded(wire.decode_chunk(encoded + b"".join(extra))) == expected


@settings(max_examples=300, deadline=None)
@given(chunks, unknown_fields, st.booleans())
def test_generated_messages_decode(fields, extra, prefix):
    message = pb.TensorChunk(**{k: v for k, v in fields.items() if v is not None})
    serialized = message.SerializeToString()
    if prefix:  # unknown fields may come anywhere, not only at the end
        serialized = b"".join(extra) + serialized
    else:
        serialized += b"".join(extra)
    decoded = wire.decode_chunk(serialized)
    assert _decoded(decoded) == _fields(message)
    assert isinstance(decoded.data, memoryview)


def test_empty_info_present_decodes_as_present():
    serialized = pb.TensorChunk(info=pb.TensorInfo(), last=True).SerializeToString()
    decoded = wire.decode_chunk(serialized)
    assert decoded.info == pb.TensorInfo() and decoded.last


def test_huge_offsets_and_indexes():
    for index, offset in [(2**32 - 1, 2**63 - 1), (0, -(2**63)), (1, 0)]:
        encoded = wire.encode_chunk(index, offset, b"xyz", last=True, digest=b"d" * 32)
        parsed = pb.TensorChunk.FromString(encoded)
        assert (parsed.variable_index, parsed.offset, parsed.data) == (index, offset, b"xyz")
        decoded = wire.decode_chunk(pb.TensorChunk(variable_index=index, offset=offset).SerializeToString())
        assert (decoded.variable_index, decoded.offset, bytes(decoded.data)) == (index, offset, b"")


def test_the_empty_message():
    assert wire.encode_chunk(0, 0, b"") == b"" == pb.TensorChunk().SerializeToString()
    decoded = wire.decode_chunk(b"")
    assert _decoded(decoded) == _fields(pb.TensorChunk())


@given(st.lists(st.integers(-1, 2**32 - 1), max_size=20))
def test_sequence_indexes_round_trip(indexes):
    encoded = wire.encode_chunk(0, 0, b"x", sequence_indexes=indexes)
    assert list(pb.TensorChunk.FromString(encoded).sequence_indexes) == indexes
    generated = pb.TensorChunk(data=b"x", sequence_indexes=indexes).SerializeToString()
    assert wire.decode_chunk(generated).sequence_indexes == tuple(indexes)
    # A repeated scalar may also arrive unpacked, one tagged varint per value.
    unpacked = b"".join(wire._varint(7 << 3) + wire._varint(i) for i in indexes)
    assert wire.decode_chunk(unpacked).sequence_indexes == tuple(indexes)
