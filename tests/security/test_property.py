"""Random requests against a live server: every answer is either a complete, valid stream whose
digests verify, or a clean error (INVALID_ARGUMENT, RESOURCE_EXHAUSTED or NOT_FOUND with a message)
before any data; and the server stays healthy.

The specs are random protos: names (empty, unicode, over-long, duplicated), shapes (zero, negative,
huge, rank 33 to 70, zero-size with dims up to 2^63 - 1), dtype numbers (known and unknown), every
initializer kind with random parameters (NaN, inf, negative, unknown enum numbers, broadcast bases of
right and wrong sizes, of rank up to 70, zero-size with huge dims), fan axes, slices (valid,
reversed, out of range, wrong rank), seeds, resume offsets and chunk sizes. No answer is ever
INTERNAL, and the server process stays alive after every example. What a valid request generates
stays small (at most CAP elements, or a small slice of a huge tensor), so the run is quick:
WEIGHTGEN_PROPERTY_EXAMPLES sets the number of examples (100 in `make test`; `make soak` runs 2,000).
"""

from __future__ import annotations

import hashlib
import math
import os

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from service.helpers import assert_serves

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc, wire

EXAMPLES = int(os.environ.get("WEIGHTGEN_PROPERTY_EXAMPLES", "100"))
CAP = 200_000  # elements a valid variable may generate in full
INT64_MAX = 2**63 - 1
EXPECTED_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}
ITEMSIZE = {value: dtype.itemsize for value, (_, dtype) in wire.DTYPES.items()}
KINDS = [f.name for f in pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields]
STRUCTURED = {"orthogonal", "delta_orthogonal", "identity", "dirac"}  # built whole, whatever the slice
MAX_ELEMENTS = 1 << 40  # weightgen/2's largest variable
DEFAULT_LIMIT = 1 << 34  # the default server's elements per variable
STRUCTURED_LIMIT = 1 << 24

FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1e-300, 1e39, -1e39, 1e308, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)
GOOD_FLOATS = st.floats(0.01, 4.0)
ENUMS = st.integers(-2, 16)  # every enum's values, and unknown numbers both sides
NAMES = st.one_of(
    st.sampled_from(["w", "b", "kernel"]),  # few names: batches often repeat one
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),  # unicode, empty
    st.integers(1000, 1030).map(lambda n: "x" * n),  # around the 1024-byte limit
    st.integers(508, 516).map(lambda n: "é" * n),  # ... in UTF-8 bytes
)
GOOD_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
DTYPES = st.one_of(st.sampled_from([0, *wire.DTYPES]), st.integers(-3, 40))
GOOD_DTYPES = st.sampled_from([0, *wire.DTYPES])
# Hypothesis favours the first of sampled values and small integers: the common case comes first.
ONE_IN_20 = st.sampled_from([True] * 19 + [False])  # False one time in 20
ONE_IN_10 = st.sampled_from([False] * 9 + [True])  # True one time in 10


def _prod(shape) -> int:
    return math.prod(shape) if shape else 1


def _clamp(shape: list[int], cap: int) -> list[int]:
    """`shape` with its dims lowered until it has at most `cap` elements."""
    shape = list(shape)
    while _prod(shape) > cap:
        axis = shape.index(max(shape))
        shape[axis] //= 2
    return shape


def pick(draw, clean: bool, good, wild):
    """A draw from `good` in a clean request (mostly: one field in 20 goes wild), else from `wild`."""
    return draw(good if clean and draw(ONE_IN_20) else wild)


def _negative(shape_index_value) -> list[int]:
    shape, index, value = shape_index_value
    shape[index % len(shape)] = value
    return shape


@st.composite
def shapes(draw, cap: int, clean: bool) -> tuple[list[int], str]:
    """(shape, category): small (generated in full), sliced (huge, only a small slice may be
    valid), or invalid (a negative dim, rank 33, past the limits)."""
    good = st.sampled_from(["small", "small", "small", "sliced", "zero_size"])
    wild = st.sampled_from(["small", "sliced", "negative", "huge", "over_limit", "rank", "zero_size"])
    category = pick(draw, clean, good, wild)
    if category == "small":
        shape = draw(st.lists(st.integers(0, 64), max_size=4).map(lambda s: _clamp(s, cap)))
    elif category == "sliced":  # every structured initializer is past its limit: none is built whole
        shape = draw(
            st.one_of(
                st.lists(st.integers(4097, 1 << 17), min_size=2, max_size=2),
                st.lists(st.integers(257, 2047), min_size=3, max_size=3),
            )
        )
        assert STRUCTURED_LIMIT < _prod(shape) <= DEFAULT_LIMIT
    elif category == "negative":
        dims = st.lists(st.integers(0, 64), min_size=1, max_size=4)
        shape = draw(st.tuples(dims, st.integers(0, 3), st.integers(-(2**63), -1)).map(_negative))
    elif category == "huge":
        shape = draw(st.lists(st.integers(1 << 21, 2**63 - 1), min_size=2, max_size=4))
        assert _prod(shape) > MAX_ELEMENTS
    elif category == "over_limit":
        shape = draw(st.lists(st.integers((1 << 17) + 1, 1 << 20), min_size=2, max_size=2))
        assert DEFAULT_LIMIT < _prod(shape) <= MAX_ELEMENTS
    elif category == "zero_size":  # valid: no elements, however huge the other dims (fans overflow floats)
        dims = st.lists(st.sampled_from([1, 7, 1 << 31, 2**62, 2**63 - 1]), min_size=0, max_size=31)
        shape = draw(st.tuples(dims, st.integers(0, 31)).map(lambda d: [*d[0][: d[1]], 0, *d[0][d[1] :]][:32]))
    else:  # rank past the limit, and past numpy's own 64
        shape = [1] * draw(st.sampled_from([33, 64, 65, 70]))
    return shape, category


@st.composite
def slices(draw, shape: list[int], category: str, cap: int, clean: bool) -> list[pb.Range]:
    if category == "sliced":  # always a slice: a small valid one, perhaps broken below
        budget = max(1, min(4096, cap // 8))
        free = draw(st.integers(0, len(shape) - 1))
        ranges = []
        for axis, d in enumerate(shape):
            most = budget if axis == len(shape) - 1 else 8 if axis == free else 1
            extent = draw(st.integers(0, min(d, most)))
            start = draw(st.integers(0, d - extent))
            ranges.append((start, start + extent))
    else:
        kind = pick(
            draw, clean, st.sampled_from(["none", "none", "valid"]), st.sampled_from(["none", "valid", "random"])
        )
        if kind == "none":
            return []
        if kind == "valid":
            ranges = []
            for d in shape:
                a = draw(st.integers(0, max(0, d)))
                ranges.append((a, draw(st.integers(a, max(a, d)))))
        else:
            ranges = draw(st.lists(st.tuples(st.integers(-3, 70), st.integers(-3, 70)), max_size=5))
            return [pb.Range(start=a, stop=b) for a, b in ranges]
    broken = pick(draw, clean, st.just(None), st.sampled_from([None, "reversed", "past", "negative", "rank"]))
    if broken and ranges:
        axis = draw(st.integers(0, len(ranges) - 1))
        d = max(0, shape[axis])
        if broken == "reversed":
            ranges[axis] = (1, 0)
        elif broken == "past":
            # One past the end; a dimension of 2^63 - 1 has no such stop on the wire (int64).
            ranges[axis] = (0, d + 1) if d < INT64_MAX else (1, 0)
        elif broken == "negative":
            ranges[axis] = (-1, 0)
        else:
            ranges = ranges[:-1] if draw(st.booleans()) else [*ranges, (0, 1)]
    return [pb.Range(start=a, stop=b) for a, b in ranges]


@st.composite
def tensors(draw, shape: list[int], clean: bool) -> pb.Tensor:
    """A broadcast base: often the variable's shape or a suffix of it, with the right byte count."""
    dtype = pick(draw, clean, st.sampled_from(list(wire.DTYPES)), st.integers(-1, 20))
    if shape and all(d >= 0 for d in shape) and pick(draw, clean, st.just(True), st.booleans()):
        base_shape = list(shape[draw(st.integers(0, len(shape) - 1)) :])
    else:
        base_shape = draw(
            st.one_of(
                st.lists(st.integers(-1, 6), max_size=3),
                st.lists(st.just(1), min_size=33, max_size=70),  # rank past the limit
                st.just([0, 2**62, 2**62]),  # zero-size with dims numpy cannot allocate
            )
        )
    if _prod(base_shape) > CAP or min(base_shape, default=0) < 0:
        size = draw(st.integers(0, 64))
    else:
        size = _prod(base_shape) * ITEMSIZE.get(dtype, 4)
        size += pick(draw, clean, st.just(0), st.sampled_from([0, 1, -1]))
    pattern = draw(st.binary(min_size=1, max_size=16))
    data = (pattern * (max(0, size) // len(pattern) + 1))[: max(0, size)]
    return pb.Tensor(dtype=dtype, shape=base_shape, data=data)


@st.composite
def initializers(draw, shape: list[int], clean: bool) -> pb.Initializer | None:
    kind = pick(draw, clean, st.sampled_from(KINDS), st.sampled_from(["none", "unknown", *KINDS]))
    if kind == "none":
        return None
    if kind == "unknown":
        return pb.Initializer.FromString(b"\xfa\x01\x00")  # a kind from a newer client
    message = pb.Initializer()
    body = getattr(message, kind)
    body.SetInParent()
    for field in body.DESCRIPTOR.fields:
        if field.message_type is not None:  # the broadcast base, required
            body.base.CopyFrom(draw(tensors(shape, clean)))
            continue
        if draw(st.booleans()):
            continue  # the default
        if field.enum_type is not None:
            setattr(
                body,
                field.name,
                pick(draw, clean, st.sampled_from([v.number for v in field.enum_type.values]), ENUMS),
            )
        elif field.type == field.TYPE_INT32:
            setattr(body, field.name, pick(draw, clean, st.integers(-1, 1), st.integers(-6, 6)))
        else:
            setattr(body, field.name, pick(draw, clean, GOOD_FLOATS, FLOATS))
    if draw(st.integers(0, 3)) == 0:
        axes = st.lists(st.integers(-5, 5), max_size=2)
        if clean and len(shape) >= 2 and draw(ONE_IN_20):
            fan_axes = pb.FanAxes(in_axes=[0], out_axes=[-1], layout=draw(st.integers(0, 2)))
        else:
            fan_axes = pb.FanAxes(in_axes=draw(axes), out_axes=draw(axes), batch_axes=draw(axes), layout=draw(ENUMS))
        message.fan_axes.CopyFrom(fan_axes)
    return message


@st.composite
def variables(draw, cap: int, clean: bool, position: int) -> pb.VariableSpec:
    shape, category = draw(shapes(cap, clean))
    name = pick(draw, clean, GOOD_NAMES.map(lambda n: f"{n}#{position}"), NAMES)
    variable = pb.VariableSpec(name=name, shape=shape, seed=draw(st.integers(0, 2**64 - 1)))
    variable.dtype = pick(draw, clean, GOOD_DTYPES, DTYPES)
    initializer = draw(initializers(shape, clean))
    if initializer is not None:
        variable.initializer.CopyFrom(initializer)
    variable.slice.extend(draw(slices(shape, category, cap, clean)))
    out_shape = [r.stop - r.start for r in variable.slice] if variable.slice else shape
    size = max(0, _prod(out_shape)) * ITEMSIZE.get(_resolved(variable), 4)
    good_resume = st.one_of(st.just(0), st.integers(0, min(size, 1 << 20)))
    variable.resume_offset = pick(draw, clean, good_resume, st.one_of(st.integers(-5, 2000), st.just(2**63 - 1)))
    if pick(draw, clean, st.just(False), ONE_IN_10):
        variable.sequence_index = draw(st.integers(0, 2**32 - 1))
    return variable


@st.composite
def requests(draw) -> pb.MaterializeRequest:
    """Clean requests (two in three: valid strategies for every field but the odd one) and wild ones."""
    clean = draw(st.sampled_from([True, True, False]))
    chunk_bytes = pick(
        draw,
        clean,
        st.one_of(st.just(0), st.integers(wire.MIN_CHUNK_BYTES, wire.MAX_CHUNK_BYTES)),
        st.one_of(
            st.just(0),
            st.integers(1, wire.MIN_CHUNK_BYTES - 1),
            st.integers(wire.MIN_CHUNK_BYTES, wire.MAX_CHUNK_BYTES),
            st.integers(wire.MAX_CHUNK_BYTES + 1, 2**32 - 1),
        ),
    )
    count = pick(draw, clean, st.integers(1, 3), st.sampled_from([1, 2, 3, 1, 0]))
    cap = CAP // max(1, count)
    request = pb.MaterializeRequest(
        seed=draw(st.integers(0, 2**64 - 1)),
        chunk_bytes=chunk_bytes,
        variables=[draw(variables(cap, clean, i)) for i in range(count)],
    )
    if pick(draw, clean, st.just(False), ONE_IN_10):
        request.session_id = draw(st.sampled_from(["no-such-session", "x" * 300]))
        if draw(st.sampled_from([True, True, True, False])):
            request.seed = 0  # else INVALID_ARGUMENT (a session and a seed) before the session is looked up
    return request


def _resolved(variable: pb.VariableSpec) -> int:
    return variable.dtype or pb.DTYPE_FLOAT32


def obviously_invalid(request: pb.MaterializeRequest) -> str | None:
    """A reason the request cannot be valid, from rules simple enough to restate here (the server
    must refuse it); None when these rules find nothing (it may still be invalid)."""
    if not request.variables:
        return "empty batch"
    if request.chunk_bytes and not wire.MIN_CHUNK_BYTES <= request.chunk_bytes <= wire.MAX_CHUNK_BYTES:
        return "chunk_bytes"
    if request.session_id:
        return "unknown session"
    names = [v.name for v in request.variables]
    if len(set(names)) != len(names):
        return "duplicate names"
    for v in request.variables:
        if not v.name or len(v.name.encode()) > 1024:
            return "name"
        if len(v.shape) > 32 or any(d < 0 for d in v.shape) or _prod(v.shape) > DEFAULT_LIMIT:
            return "shape"
        if v.dtype not in wire.DTYPES and v.dtype != 0:
            return "dtype"
        if v.HasField("sequence_index"):
            return "sequence_index without a session"
        if v.initializer.WhichOneof("kind") is None:
            return "no initializer (or one unknown to the server)"
        if v.slice:
            if len(v.slice) != len(v.shape):
                return "slice rank"
            if any(not 0 <= r.start <= r.stop <= d for r, d in zip(v.slice, v.shape, strict=True)):
                return "slice range"
        out_shape = [r.stop - r.start for r in v.slice] if v.slice else list(v.shape)
        if not 0 <= v.resume_offset <= _prod(out_shape) * ITEMSIZE[_resolved(v)]:
            return "resume_offset"
    return None


def check_stream(request: pb.MaterializeRequest, messages) -> None:
    """Every variable complete and consistent: info first, contiguous offsets from resume_offset,
    chunks within chunk_bytes, the last one with the digest of all bytes, sizes from shape, slice
    and dtype."""
    limit = request.chunk_bytes or wire.DEFAULT_CHUNK_BYTES
    state: dict[int, dict] = {}
    for raw in messages:
        chunk = wire.decode_chunk(raw)
        index = chunk.variable_index
        assert index < len(request.variables), index
        spec = request.variables[index]
        got = state.get(index)
        if got is None:
            assert chunk.info is not None, f"variable {index}: no info on its first chunk"
            got = state[index] = {
                "info": chunk.info,
                "next": spec.resume_offset,
                "sha": hashlib.sha256(),
                "last": False,
            }
        else:
            assert chunk.info is None, f"variable {index}: info after the first chunk"
        assert not got["last"], f"variable {index}: a chunk after the last"
        assert chunk.offset == got["next"], (index, chunk.offset, got["next"])
        assert chunk.data.nbytes <= limit, (chunk.data.nbytes, limit)
        got["next"] += chunk.data.nbytes
        got["sha"].update(chunk.data)
        assert bool(chunk.digest) == chunk.last, f"variable {index}: digest only on the last chunk"
        if chunk.last:
            got["last"] = True
            if spec.resume_offset == 0:
                assert chunk.digest == got["sha"].digest(), f"variable {index}: digest mismatch"
    assert sorted(state) == list(range(len(request.variables))), sorted(state)
    seeds = set()
    for index, got in state.items():
        spec, info = request.variables[index], got["info"]
        assert got["last"], f"variable {index}: no last chunk"
        assert info.name == spec.name and list(info.shape) == list(spec.shape)
        assert info.dtype == _resolved(spec), (info.dtype, spec.dtype)
        out_shape = [r.stop - r.start for r in spec.slice] if spec.slice else list(spec.shape)
        assert [(r.start, r.stop) for r in info.slice] == [(r.start, r.stop) for r in spec.slice] or (
            not info.slice and out_shape == list(spec.shape)
        )
        assert info.byte_size == _prod(out_shape) * ITEMSIZE[info.dtype], (info.byte_size, out_shape)
        assert got["next"] == info.byte_size, (got["next"], info.byte_size)
        assert info.generator == "weightgen/2" and info.digest_algorithm == "sha256"
        assert info.seed == (spec.seed or request.seed or info.seed) != 0
        if not spec.seed:
            seeds.add(info.seed)
    assert len(seeds) <= 1, f"one effective seed per request, got {seeds}"


@pytest.fixture(scope="module")
def materialize(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel.unary_stream(
            "/weightgen.v1.WeightGen/Materialize",
            request_serializer=pb.MaterializeRequest.SerializeToString,
            response_deserializer=None,
        )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(request=requests())
def test_random_requests(server, materialize, request):
    messages = []
    try:
        for raw in materialize(request, timeout=120):
            messages.append(raw)
    except grpc.RpcError as error:
        assert server.proc.poll() is None, f"the server died: {server.log()[-2000:]}"
        assert error.code() in EXPECTED_ERRORS, (error.code(), error.details())
        assert len(error.details()) <= 1024, "a status message stays small"
        assert error.details(), "an error without a message"
        assert not messages, f"{error.code()} after {len(messages)} chunks: errors come before any data"
        event(f"answer: {error.code().name}")
        return
    event("answer: OK")
    reason = obviously_invalid(request)
    assert reason is None, f"the server accepted an invalid request ({reason})"
    check_stream(request, messages)


def test_the_server_is_still_healthy(server, stub):
    """After the random requests (this module runs them first): SERVING, nothing in flight, and a
    good request works."""
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert server.proc.poll() is None
    assert_serves(stub)
    with grpc.insecure_channel(server.address) as channel:
        chunks = list(
            weightgen_pb2_grpc.WeightGenStub(channel).Materialize(
                pb.MaterializeRequest(
                    seed=1,
                    variables=[pb.VariableSpec(name="after", shape=[64, 64], initializer=pb.Initializer(he=pb.He()))],
                ),
                timeout=60,
            )
        )
    assert sum(len(c.data) for c in chunks) == 64 * 64 * 4
    assert np.frombuffer(b"".join(c.data for c in chunks), np.float32).std() > 0
