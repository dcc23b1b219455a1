"""Bytes on the wire: dtypes, chunk sizes, digests and a hand-written TensorChunk codec.

Tensor bytes are row-major, little-endian; float16/bfloat16 as their 2-byte patterns; complex as
interleaved (real, imaginary); bool as one byte. A TensorChunk is simple enough to encode and decode
in the protobuf wire format by hand, which keeps its data a view instead of a copy inside a message
object: about twice the throughput of the generated classes (bench/README.md). Any protobuf library
parses the same bytes as weightgen.proto says; tests/test_wire.py checks both directions against the
generated classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import xxhash

from . import weightgen_pb2 as pb

DIGEST_ALGORITHM = "sha256"
"""The digest of a request that names no algorithm (every client written before there was a choice)."""
DEFAULT_CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 64 << 10
"""Smaller chunks would make per-message costs (about 20 us of server CPU each) dominate the bytes:
at 1 byte a chunk, one 4 MiB piece was 4 million messages. A variable's last chunk may be smaller."""
MAX_CHUNK_BYTES = (4 << 20) - (4 << 10)
"""A chunk with its info and framing stays under gRPC's default 4 MiB message limit."""
MAX_MESSAGE_BYTES = 4 << 20

# DType enum value -> (engine name, numpy dtype). DTYPE_UNSPECIFIED is resolved by the server.
DTYPES: dict[int, tuple[str, np.dtype]] = {
    pb.DTYPE_FLOAT32: ("float32", np.dtype(np.float32)),
    pb.DTYPE_FLOAT64: ("float64", np.dtype(np.float64)),
    pb.DTYPE_FLOAT16: ("float16", np.dtype(np.float16)),
    pb.DTYPE_BFLOAT16: ("bfloat16", np.dtype(ml_dtypes.bfloat16)),
    pb.DTYPE_COMPLEX64: ("complex64", np.dtype(np.complex64)),
    pb.DTYPE_COMPLEX128: ("complex128", np.dtype(np.complex128)),
    pb.DTYPE_INT8: ("int8", np.dtype(np.int8)),
    pb.DTYPE_INT16: ("int16", np.dtype(np.int16)),
    pb.DTYPE_INT32: ("int32", np.dtype(np.int32)),
    pb.DTYPE_INT64: ("int64", np.dtype(np.int64)),
    pb.DTYPE_UINT8: ("uint8", np.dtype(np.uint8)),
    pb.DTYPE_UINT16: ("uint16", np.dtype(np.uint16)),
    pb.DTYPE_UINT32: ("uint32", np.dtype(np.uint32)),
    pb.DTYPE_UINT64: ("uint64", np.dtype(np.uint64)),
    pb.DTYPE_BOOL: ("bool", np.dtype(np.bool_)),
}
BY_NAME: dict[str, int] = {name: value for value, (name, _) in DTYPES.items()}


def dtype_name(value: int) -> str:
    """The engine name of a DType enum value (KeyError for UNSPECIFIED or unknown numbers)."""
    return DTYPES[value][0]


def numpy_dtype(value: int) -> np.dtype:
    """The numpy dtype (little-endian) of a DType enum value."""
    return DTYPES[value][1]


def dtype_enum(dtype: str | np.dtype | type) -> int:
    """The DType enum value of an engine name or numpy dtype."""
    if isinstance(dtype, str) and dtype in BY_NAME:
        return BY_NAME[dtype]
    dtype = np.dtype(dtype)
    for value, (_, candidate) in DTYPES.items():
        if candidate == dtype:
            return value
    raise KeyError(f"no weightgen dtype for {dtype}")


# DigestAlgorithm enum value -> the name TensorInfo.digest_algorithm reports.
DIGESTS: dict[int, str] = {
    pb.DIGEST_ALGORITHM_SHA256: "sha256",
    pb.DIGEST_ALGORITHM_XXH3_128: "xxh3_128",
    pb.DIGEST_ALGORITHM_NONE: "none",
}
DIGEST_BY_NAME: dict[str, int] = {name: value for value, name in DIGESTS.items()}
DIGEST_SIZES: dict[str, int] = {"sha256": 32, "xxh3_128": 16, "none": 0}
FAST_DIGEST = "xxh3_128"
"""The fast non-cryptographic digest: XXH3-128 runs at about 36 GB/s a core here (SHA-256 2.2,
CRC32C 17.7) and, at 128 bits, stays a sound content digest for files (docs/determinism.md)."""


def digest_name(value: int) -> str:
    """The name of a DigestAlgorithm enum value; UNSPECIFIED is SHA-256 (KeyError for unknown numbers)."""
    return DIGEST_ALGORITHM if value == pb.DIGEST_ALGORITHM_UNSPECIFIED else DIGESTS[value]


def digest_enum(algorithm: str | int) -> int:
    """The DigestAlgorithm enum value of a name ("sha256", "xxh3_128", "none"; "xxh3-128" and
    upper case too) or of an enum value (checked)."""
    if isinstance(algorithm, int):
        if algorithm != pb.DIGEST_ALGORITHM_UNSPECIFIED and algorithm not in DIGESTS:
            raise ValueError(f"unknown digest algorithm number {algorithm}")
        return algorithm
    name = algorithm.strip().lower().replace("-", "_")
    if name.startswith("digest_algorithm_"):
        name = name[len("digest_algorithm_") :]
    if name not in DIGEST_BY_NAME:
        raise ValueError(f"unknown digest algorithm {algorithm!r}: one of {', '.join(DIGEST_BY_NAME)}")
    return DIGEST_BY_NAME[name]


def new_digest(algorithm: str = DIGEST_ALGORITHM):
    """A running digest of a variable's bytes (`update(bytes)`, `digest()`) for the algorithm
    TensorInfo.digest_algorithm names; None for "none"."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3_128":
        return xxhash.xxh3_128()
    if algorithm == "none":
        return None
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


# -- the TensorChunk codec --------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_F_INDEX, _F_OFFSET, _F_DATA, _F_INFO, _F_LAST, _F_DIGEST, _F_SEQUENCE = 1, 2, 3, 4, 5, 6, 7


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf encodes them
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def encode_chunk(
    variable_index: int,
    offset: int,
    data: bytes | memoryview | Sequence[bytes | memoryview],
    *,
    info: bytes = b"",
    last: bool = False,
    digest: bytes = b"",
    sequence_indexes: Sequence[int] = (),
) -> bytes:
    """A serialized TensorChunk. `data` may be a list of buffers (joined, not copied twice);
    `info` is an already serialized TensorInfo (first chunk only). The data field goes last so the
    header is built small and the data is copied once, into the message."""
    buffers = list(data) if isinstance(data, list | tuple) else [data]
    size = sum(len(b) if not isinstance(b, memoryview) else b.nbytes for b in buffers)
    parts = []
    if variable_index:
        parts += [_tag(_F_INDEX, _VARINT), _varint(variable_index)]
    if offset:
        parts += [_tag(_F_OFFSET, _VARINT), _varint(offset)]
    if info:
        parts += [_tag(_F_INFO, _LEN), _varint(len(info)), info]
    if last:
        parts += [_tag(_F_LAST, _VARINT), b"\x01"]
    if digest:
        parts += [_tag(_F_DIGEST, _LEN), _varint(len(digest)), digest]
    if sequence_indexes:  # packed, as proto3 encodes repeated scalars
        packed = b"".join(_varint(i) for i in sequence_indexes)
        parts += [_tag(_F_SEQUENCE, _LEN), _varint(len(packed)), packed]
    if size:
        parts += [_tag(_F_DATA, _LEN), _varint(size), *buffers]
    return b"".join(parts)


@dataclass(frozen=True)
class Chunk:
    """A decoded TensorChunk; `data` is a view into the received message."""

    variable_index: int
    offset: int
    data: memoryview
    info: pb.TensorInfo | None
    last: bool
    digest: bytes
    sequence_indexes: tuple[int, ...] = ()


def _read_varint(buf: memoryview, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(buf):
            raise ValueError("truncated varint in TensorChunk")
        byte = buf[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, at
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long in TensorChunk")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_chunk(message: bytes | memoryview) -> Chunk:
    """Parse a serialized TensorChunk without copying its data. Unknown fields are skipped (a
    newer server may add some); repeated scalar fields keep the last value, as protobuf does."""
    buf = memoryview(message)
    fields: dict[int, object] = {}
    info: pb.TensorInfo | None = None
    sequence: list[int] = []
    at = 0
    while at < len(buf):
        key, at = _read_varint(buf, at)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, at = _read_varint(buf, at)
            if field == _F_SEQUENCE:  # a repeated scalar may also come unpacked
                sequence.append(_signed64(value))
            else:
                fields[field] = value
        elif wire_type == _LEN:
            length, at = _read_varint(buf, at)
            if at + length > len(buf):
                raise ValueError("truncated field in TensorChunk")
            value = buf[at : at + length]
            at += length
            if field == _F_INFO:  # sub-messages merge when repeated
                info = info or pb.TensorInfo()
                info.MergeFromString(bytes(value))
            elif field == _F_SEQUENCE:
                inner = 0
                while inner < len(value):
                    item, inner = _read_varint(value, inner)
                    sequence.append(_signed64(item))
            else:
                fields[field] = value
        elif wire_type == _I64:
            at += 8
        elif wire_type == _I32:
            at += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} in TensorChunk")
        if at > len(buf):
            raise ValueError("truncated TensorChunk")
    data = fields.get(_F_DATA, memoryview(b""))
    digest = fields.get(_F_DIGEST, b"")
    return Chunk(
        variable_index=int(fields.get(_F_INDEX, 0)) & 0xFFFFFFFF,
        offset=_signed64(int(fields.get(_F_OFFSET, 0))),
        data=data if isinstance(data, memoryview) else memoryview(b""),
        info=info,
        last=bool(fields.get(_F_LAST, 0)),
        digest=bytes(digest) if isinstance(digest, memoryview) else b"",
        sequence_indexes=tuple(sequence),
    )
