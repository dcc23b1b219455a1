"""The bad-input corpus: malformed requests for every field of every request message, each with the
exact status it must get (DESIGN.md section 3), before any data, and the server serves on afterwards.

Each case says which proto fields it exercises (`covers`); `test_every_field_is_covered` checks that
together they reach every field of every message a client sends, except the few that have no invalid
value (a uint64 seed).
"""

from __future__ import annotations

import base64
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from service.helpers import TIMEOUT, assert_serves, init, quoted, var

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

BAD = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MISSING = grpc.StatusCode.NOT_FOUND
NAN, INF = math.nan, math.inf
GOOD = var("good", [300, 200], init(random_normal={}))
GOOD2 = var("good2", [3, 2], init(random_normal={}))  # index 0: streamed first if validation did not come first


class Sessions:
    """Sessions in the states the cases need, opened on the server under test."""

    def __init__(self, stub):
        self.stub = stub
        self.opened: list[str] = []

    def open(self, **kwargs) -> str:
        session_id = self.stub.OpenSession(pb.OpenSessionRequest(**kwargs), timeout=TIMEOUT).session_id
        self.opened.append(session_id)
        return session_id

    def close_all(self) -> None:
        """Close what the case left open (the shared server keeps sessions for an hour)."""
        for session_id in self.opened:
            with contextlib.suppress(grpc.RpcError):
                self.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT)

    def forged(self) -> str:
        """A real session id with one character of its signature changed."""
        prefix, tag = self.open(seed=9).rsplit(".", 1)
        return f"{prefix}.{'A' if tag[0] != 'A' else 'B'}{tag[1:]}"

    def respelled(self) -> str:
        """A real session id whose signature's last character differs only in base64's unused bits."""
        prefix, tag = self.open(seed=9).rsplit(".", 1)
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        value = alphabet.index(tag[-1])
        return f"{prefix}.{tag[:-1]}{alphabet[value ^ 1]}"  # a 16-byte tag leaves 4 unused bits at the end

    def tampered(self) -> str:
        """A real session id whose signed contents were changed (another seed), signature kept."""
        prefix, payload, tag = self.open(seed=9).rsplit(".", 2)
        session = pb.Session.FromString(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        session.seed = 10
        changed = base64.urlsafe_b64encode(session.SerializeToString()).rstrip(b"=").decode()
        return f"{prefix}.{changed}.{tag}"

    def expired(self) -> str:
        session_id = self.open(seed=9, ttl_seconds=1)
        time.sleep(1.2)  # idle past its TTL (the server's monotonic clock)
        return session_id


Request = Any  # a message, raw bytes, or Callable[[Sessions], message]


@dataclass(frozen=True)
class Case:
    id: str
    rpc: str  # Materialize, OpenSession, CloseSession or ListInitializers
    request: Request
    code: grpc.StatusCode
    where: str  # the status message starts with this: the variable and the field
    covers: tuple[str, ...]  # Message.field names it exercises


def bad_variable(
    id_: str, variable: pb.VariableSpec, field: str, *covers: str, code=BAD, session: Callable | None = None
) -> Case:
    """A batch whose variable 1 is `variable`: the whole batch fails, naming variable 1 and `field`."""

    def build(sessions: Sessions) -> pb.MaterializeRequest:
        request = pb.MaterializeRequest(variables=[GOOD, variable])
        if session is None:
            request.seed = 1
        else:
            request.session_id = session(sessions)
        return request

    return Case(id_, "Materialize", build, code, f"variables[1] ({quoted(variable.name)}): {field}", covers)


def with_dtype(variable: pb.VariableSpec, number: int) -> pb.VariableSpec:
    variable.dtype = number  # proto3 enums are open: any number travels
    return variable


def initializer(kind: str, **fields: Any) -> pb.Initializer:
    """pb.Initializer with `kind` set, assigning enum fields as raw numbers (unknown ones included)."""
    message = pb.Initializer()
    body = getattr(message, kind)
    body.SetInParent()
    for name, value in fields.items():
        setattr(body, name, value)
    return message


def base(dtype: int, shape: list[int], data: bytes) -> pb.Initializer:
    return pb.Initializer(broadcast=pb.Broadcast(base=pb.Tensor(dtype=dtype, shape=shape, data=data)))


def unknown_field(message, number: int = 99) -> Any:
    """`message` with a varint field `number` it does not declare, as a newer client would send."""
    return type(message).FromString(message.SerializeToString() + _varint(number << 3) + b"\x01")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def fan(in_axes=(), out_axes=(), batch_axes=(), layout=0) -> pb.Initializer:
    return pb.Initializer(
        he=pb.He(), fan_axes=pb.FanAxes(in_axes=in_axes, out_axes=out_axes, batch_axes=batch_axes, layout=layout)
    )


def rng(start: int, stop: int) -> pb.Range:
    return pb.Range(start=start, stop=stop)


def _bad_utf8_name() -> bytes:
    spec = b"\x0a\x02w\xff" + b"\x10\x04" + b"\x22\x02\x0a\x00"  # name "w\xff", shape [4], zeros
    return b"\x10\x01" + b"\x1a" + bytes([len(spec)]) + spec


F32 = pb.DTYPE_FLOAT32

VARIABLE_CASES = [
    # VariableSpec.name
    bad_variable("empty name", var("", [2], init(ones={})), "name", "VariableSpec.name"),
    bad_variable("name over 1024 bytes", var("n" * 1025, [2], init(ones={})), "name", "VariableSpec.name"),
    bad_variable("name over 1024 UTF-8 bytes", var("é" * 513, [2], init(ones={})), "name", "VariableSpec.name"),
    bad_variable("duplicate name", var("good", [2], init(ones={})), "name", "VariableSpec.name"),
    # VariableSpec.shape
    bad_variable("negative dim", var("w", [3, -1], init(ones={})), "shape[1]", "VariableSpec.shape"),
    bad_variable("int64 min dim", var("w", [-(2**63)], init(ones={})), "shape[0]", "VariableSpec.shape"),
    bad_variable("rank 33", var("w", [1] * 33, init(ones={})), "shape", "VariableSpec.shape"),
    bad_variable("past weightgen/2's elements", var("w", [2**40, 2**40], init(ones={})), "shape", "VariableSpec.shape"),
    bad_variable(
        "int64-overflowing product", var("w", [2**62, 2**62, 4], init(zeros={})), "shape", "VariableSpec.shape"
    ),
    bad_variable(
        "past the elements per variable limit",
        var("w", [2**35], init(zeros={})),
        "shape",
        "VariableSpec.shape",
        code=EXHAUSTED,
    ),
    bad_variable(
        "structured past its element limit",
        var("w", [5000, 5000], init(orthogonal={})),
        "shape",
        "VariableSpec.shape",
        code=EXHAUSTED,
    ),
    # VariableSpec.dtype
    bad_variable("unknown dtype 99", with_dtype(var("w", [4], init(he={})), 99), "dtype", "VariableSpec.dtype"),
    bad_variable("negative dtype number", with_dtype(var("w", [4], init(he={})), -5), "dtype", "VariableSpec.dtype"),
    # VariableSpec.initializer and Initializer.kind
    bad_variable("missing initializer", var("w", [4]), "initializer", "VariableSpec.initializer"),
    bad_variable(
        "unknown initializer kind",
        var("w", [4], pb.Initializer.FromString(b"\xfa\x01\x00")),  # field 31, empty: from a newer client
        "initializer",
        "VariableSpec.initializer",
    ),
    bad_variable(
        "unknown field in an initializer's parameters",
        var("w", [4, 4], pb.Initializer(he=unknown_field(pb.He()))),
        "initializer.he",
        "Initializer.he",
    ),
    # Initializer parameters
    bad_variable(
        "constant NaN", var("w", [4], init(constant={"value": NAN})), "initializer.constant.value", "Constant.value"
    ),
    bad_variable(
        "constant 300 into int8",
        var("w", [2], init(constant={"value": 300}), dtype=pb.DTYPE_INT8),
        "initializer.constant.value",
        "Constant.value",
    ),
    bad_variable(
        "constant imaginary part into float32",
        var("w", [2], init(constant={"value": 1, "imag": 2})),
        "initializer.constant.imag",
        "Constant.imag",
    ),
    bad_variable(
        "constant infinite imaginary part",
        var("w", [2], init(constant={"imag": INF}), dtype=pb.DTYPE_COMPLEX64),
        "initializer.constant.imag",
        "Constant.imag",
    ),
    bad_variable(
        "normal NaN stddev",
        var("w", [4], init(random_normal={"stddev": NAN})),
        "initializer.random_normal.stddev",
        "RandomNormal.stddev",
    ),
    bad_variable(
        "normal stddev < 0",
        var("w", [4], init(random_normal={"stddev": -1.0})),
        "initializer.random_normal.stddev",
        "RandomNormal.stddev",
    ),
    bad_variable(
        "normal infinite mean",
        var("w", [4], init(random_normal={"mean": INF})),
        "initializer.random_normal.mean",
        "RandomNormal.mean",
    ),
    bad_variable(
        "normal values overflow float32",
        var("w", [4], init(random_normal={"stddev": 1e39})),
        "initializer",
        "RandomNormal.stddev",
    ),
    bad_variable(
        "uniform -inf min",
        var("w", [4], init(random_uniform={"min": -INF})),
        "initializer.random_uniform.min",
        "RandomUniform.min",
    ),
    bad_variable(
        "uniform NaN max",
        var("w", [4], init(random_uniform={"max": NAN})),
        "initializer.random_uniform.max",
        "RandomUniform.max",
    ),
    bad_variable(
        "uniform min > max",
        var("w", [4], init(random_uniform={"min": 2, "max": 1})),
        "initializer.random_uniform.min",
        "RandomUniform.min",
        "RandomUniform.max",
    ),
    bad_variable(
        "truncated stddev < 0",
        var("w", [4], init(truncated_normal={"stddev": -0.1})),
        "initializer.truncated_normal.stddev",
        "TruncatedNormal.stddev",
    ),
    bad_variable(
        "truncated NaN mean",
        var("w", [4], init(truncated_normal={"mean": NAN})),
        "initializer.truncated_normal.mean",
        "TruncatedNormal.mean",
    ),
    bad_variable(
        "truncated lower >= upper",
        var("w", [4], init(truncated_normal={"lower": 1, "upper": 1})),
        "initializer.truncated_normal.lower",
        "TruncatedNormal.lower",
        "TruncatedNormal.upper",
    ),
    bad_variable(
        "truncated infinite upper",
        var("w", [4], init(truncated_normal={"upper": INF})),
        "initializer.truncated_normal.upper",
        "TruncatedNormal.upper",
    ),
    bad_variable(
        "variance scale 0",
        var("w", [4, 4], init(variance_scaling={"scale": 0.0})),
        "initializer.variance_scaling.scale",
        "VarianceScaling.scale",
    ),
    bad_variable(
        "variance unknown mode 42",
        var("w", [4, 4], initializer("variance_scaling", mode=42)),
        "initializer.variance_scaling.mode",
        "VarianceScaling.mode",
    ),
    bad_variable(
        "variance unknown distribution -1",
        var("w", [4, 4], initializer("variance_scaling", distribution=-1)),
        "initializer.variance_scaling.distribution",
        "VarianceScaling.distribution",
    ),
    bad_variable(
        "xavier uniform gain < 0",
        var("w", [4, 4], init(xavier_uniform={"gain": -1.0})),
        "initializer.xavier_uniform.gain",
        "XavierUniform.gain",
    ),
    bad_variable(
        "xavier normal NaN gain",
        var("w", [4, 4], init(xavier_normal={"gain": NAN})),
        "initializer.xavier_normal.gain",
        "XavierNormal.gain",
    ),
    bad_variable(
        "kaiming infinite slope",
        var("w", [4, 4], init(kaiming_uniform={"a": INF})),
        "initializer.kaiming_uniform.a",
        "Kaiming.a",
    ),
    bad_variable(
        "kaiming mode fan_avg",
        var("w", [4, 4], initializer("kaiming_normal", mode=pb.FAN_MODE_FAN_AVG)),
        "initializer.kaiming_normal.mode",
        "Kaiming.mode",
    ),
    bad_variable(
        "kaiming unknown nonlinearity 99",
        var("w", [4, 4], initializer("kaiming_normal", nonlinearity=99)),
        "initializer.kaiming_normal.nonlinearity",
        "Kaiming.nonlinearity",
    ),
    bad_variable(
        "orthogonal scale < 0",
        var("w", [4, 4], init(orthogonal={"scale": -1.0})),
        "initializer.orthogonal.scale",
        "Orthogonal.scale",
    ),
    bad_variable(
        "orthogonal scale overflowing float16 (would give infinities)",
        var("w", [4, 4], init(orthogonal={"scale": 1e5}), dtype=pb.DTYPE_FLOAT16),
        "initializer.orthogonal.scale",
        "Orthogonal.scale",
    ),
    bad_variable(
        "orthogonal column_axis out of range",
        var("w", [4, 4], init(orthogonal={"column_axis": 2})),
        "initializer.orthogonal.column_axis",
        "Orthogonal.column_axis",
    ),
    bad_variable("orthogonal rank 1", var("w", [8], init(orthogonal={})), "shape", "Initializer.orthogonal"),
    bad_variable(
        "delta orthogonal NaN scale",
        var("w", [3, 3, 4, 4], init(delta_orthogonal={"scale": NAN})),
        "initializer.delta_orthogonal.scale",
        "DeltaOrthogonal.scale",
    ),
    bad_variable(
        "delta orthogonal column_axis out of range",
        var("w", [3, 3, 4, 4], init(delta_orthogonal={"column_axis": -5})),
        "initializer.delta_orthogonal.column_axis",
        "DeltaOrthogonal.column_axis",
    ),
    bad_variable(
        "delta orthogonal in > out",
        var("w", [3, 3, 8, 4], init(delta_orthogonal={})),
        "shape",
        "Initializer.delta_orthogonal",
    ),
    bad_variable(
        "identity NaN gain",
        var("w", [3, 3], init(identity={"gain": NAN})),
        "initializer.identity.gain",
        "Identity.gain",
    ),
    bad_variable("identity rank 3", var("w", [2, 2, 2], init(identity={})), "shape", "Initializer.identity"),
    bad_variable(
        "dirac groups 0", var("w", [3, 3, 4, 6], init(dirac={"groups": 0})), "initializer.dirac.groups", "Dirac.groups"
    ),
    bad_variable(
        "dirac groups not dividing out",
        var("w", [3, 3, 4, 6], init(dirac={"groups": 4})),
        "initializer.dirac.groups",
        "Dirac.groups",
    ),
    bad_variable(
        "sparse without sparsity", var("w", [4, 4], init(sparse={})), "initializer.sparse.sparsity", "Sparse.sparsity"
    ),
    bad_variable(
        "sparse sparsity above 1",
        var("w", [4, 4], init(sparse={"sparsity": 1.5})),
        "initializer.sparse.sparsity",
        "Sparse.sparsity",
    ),
    bad_variable(
        "sparse NaN stddev",
        var("w", [4, 4], init(sparse={"sparsity": 0.5, "stddev": NAN})),
        "initializer.sparse.stddev",
        "Sparse.stddev",
    ),
    bad_variable("sparse rank 3", var("w", [4, 4, 4], init(sparse={"sparsity": 0.5})), "shape", "Initializer.sparse"),
    # Broadcast and its Tensor base
    bad_variable(
        "broadcast without a base",
        var("w", [4, 3], pb.Initializer(broadcast=pb.Broadcast())),
        "initializer.broadcast.base",
        "Broadcast.base",
    ),
    bad_variable(
        "broadcast base dtype unspecified",
        var("w", [4, 3], base(pb.DTYPE_UNSPECIFIED, [3], bytes(12))),
        "initializer.broadcast.base.dtype",
        "Tensor.dtype",
    ),
    bad_variable(
        "broadcast base dtype 77",
        var("w", [4, 3], base(77, [3], bytes(12))),
        "initializer.broadcast.base.dtype",
        "Tensor.dtype",
    ),
    bad_variable(
        "broadcast base negative dim",
        var("w", [4, 3], base(F32, [-3], b"")),
        "initializer.broadcast.base.shape",
        "Tensor.shape",
    ),
    bad_variable(
        "broadcast base not a suffix",
        var("w", [4, 3], base(F32, [1, 3], bytes(12))),
        "initializer.broadcast.base.shape",
        "Tensor.shape",
    ),
    bad_variable(
        "broadcast base too few bytes",
        var("w", [4, 3], base(F32, [3], bytes(8))),
        "initializer.broadcast.base.data",
        "Tensor.data",
    ),
    bad_variable(
        "broadcast base too many bytes",
        var("w", [4, 3], base(F32, [3], bytes(13))),
        "initializer.broadcast.base.data",
        "Tensor.data",
    ),
    bad_variable(
        "broadcast base of rank 70 into a rank-20 variable",
        var("w", [1] * 20, base(F32, [1] * 70, bytes(4))),
        "initializer.broadcast.base.shape",
        "Tensor.shape",
    ),
    bad_variable(
        "broadcast base past weightgen/2's elements",
        var("w", [2**62, 2**62], base(pb.DTYPE_UINT8, [2**62, 2**62], b"")),
        "shape",
        "Tensor.shape",
    ),
    bad_variable(
        "broadcast base values do not fit int8",
        var("w", [2, 2], base(pb.DTYPE_INT32, [2], (300).to_bytes(4, "little") * 2), dtype=pb.DTYPE_INT8),
        "initializer.broadcast.base.data",
        "Tensor.data",
    ),
    # FanAxes
    bad_variable(
        "fan in axis out of range",
        var("w", [4, 4], fan(in_axes=[2])),
        "initializer.fan_axes.in_axes",
        "FanAxes.in_axes",
    ),
    bad_variable(
        "fan out axis out of range",
        var("w", [4, 4], fan(out_axes=[-3])),
        "initializer.fan_axes.out_axes",
        "FanAxes.out_axes",
    ),
    bad_variable(
        "fan in and out overlap",
        var("w", [4, 4], fan(in_axes=[0], out_axes=[-2])),
        "initializer.fan_axes",
        "FanAxes.in_axes",
        "FanAxes.out_axes",
    ),
    bad_variable(
        "fan batch axis repeated",
        var("w", [3, 4, 4], fan(batch_axes=[0, -3])),
        "initializer.fan_axes.batch_axes",
        "FanAxes.batch_axes",
    ),
    bad_variable(
        "fan batch overlaps in",
        var("w", [3, 4, 4], fan(batch_axes=[1])),
        "initializer.fan_axes",
        "FanAxes.batch_axes",
    ),
    bad_variable(
        "fan unknown layout 9", var("w", [4, 4], fan(layout=9)), "initializer.fan_axes.layout", "FanAxes.layout"
    ),
    bad_variable(
        "unknown field in fan axes",
        var("w", [4, 4], pb.Initializer(he=pb.He(), fan_axes=unknown_field(pb.FanAxes()))),
        "initializer.fan_axes",
        "Initializer.fan_axes",
    ),
    # VariableSpec.slice and Range
    bad_variable(
        "slice of the wrong rank", var("w", [4, 4], init(ones={}), slice=[rng(0, 2)]), "slice", "VariableSpec.slice"
    ),
    bad_variable("slice of a scalar", var("w", [], init(ones={}), slice=[rng(0, 1)]), "slice", "VariableSpec.slice"),
    bad_variable(
        "slice reversed",
        var("w", [4, 4], init(ones={}), slice=[rng(0, 4), rng(3, 1)]),
        "slice[1]",
        "Range.start",
        "Range.stop",
    ),
    bad_variable(
        "slice negative start",
        var("w", [4, 4], init(ones={}), slice=[rng(-1, 2), rng(0, 4)]),
        "slice[0]",
        "Range.start",
    ),
    bad_variable(
        "slice stop past the dim",
        var("w", [4, 4], init(ones={}), slice=[rng(0, 4), rng(0, 5)]),
        "slice[1]",
        "Range.stop",
    ),
    bad_variable(
        "slice stop int64 max",
        var("w", [4, 4], init(ones={}), slice=[rng(0, 2**63 - 1), rng(0, 4)]),
        "slice[0]",
        "Range.stop",
    ),
    # VariableSpec.resume_offset
    bad_variable(
        "negative resume", var("w", [4], init(ones={}), resume_offset=-1), "resume_offset", "VariableSpec.resume_offset"
    ),
    bad_variable(
        "resume past the end",
        var("w", [4], init(ones={}), resume_offset=17),
        "resume_offset",
        "VariableSpec.resume_offset",
    ),
    bad_variable(
        "resume past the slice's end",
        var("w", [4, 4], init(ones={}), slice=[rng(0, 1), rng(0, 4)], resume_offset=17),
        "resume_offset",
        "VariableSpec.resume_offset",
    ),
    # VariableSpec.sequence_index
    bad_variable(
        "sequence_index without a session",
        var("w", [4], init(he={}), sequence_index=0),
        "sequence_index",
        "VariableSpec.sequence_index",
    ),
    bad_variable(
        "sequence_index in a by-name session",
        var("w", [4], init(he={}), sequence_index=0),
        "sequence_index",
        "VariableSpec.sequence_index",
        session=lambda s: s.open(seed=3),
    ),
    bad_variable(
        "sequence_index with a variable seed",
        var("w", [4], init(he={}), sequence_index=0, seed=5),
        "sequence_index",
        "VariableSpec.sequence_index",
        "VariableSpec.seed",
        session=lambda s: s.open(seed=3, rng_mode=pb.RNG_MODE_SEQUENTIAL),
    ),
    bad_variable(
        "unknown field in a variable",
        unknown_field(var("w", [4], init(ones={}))),
        "variable",
        "VariableSpec",
    ),
]

SEEDED = pb.MaterializeRequest(seed=1, variables=[GOOD])

REQUEST_CASES = [
    Case(
        "empty batch", "Materialize", pb.MaterializeRequest(seed=1), BAD, "variables", ("MaterializeRequest.variables",)
    ),
    Case(
        "too many variables",
        "Materialize",
        pb.MaterializeRequest(seed=1, variables=[pb.VariableSpec()] * 100_001),
        EXHAUSTED,
        "variables: 100001 variables exceed",
        ("MaterializeRequest.variables",),
    ),
    Case(
        "too many bytes",
        "Materialize",
        pb.MaterializeRequest(
            seed=1, variables=[var(f"v{i}", [2**34], init(ones={}), dtype=pb.DTYPE_FLOAT64) for i in range(9)]
        ),
        EXHAUSTED,
        "variables: the batch delivers",
        ("MaterializeRequest.variables",),
    ),
    Case(
        "chunk_bytes past the maximum",
        "Materialize",
        pb.MaterializeRequest(seed=1, variables=[GOOD], chunk_bytes=wire.MAX_CHUNK_BYTES + 1),
        BAD,
        "chunk_bytes",
        ("MaterializeRequest.chunk_bytes",),
    ),
    Case(
        "chunk_bytes uint32 max",
        "Materialize",
        pb.MaterializeRequest(seed=1, variables=[GOOD], chunk_bytes=2**32 - 1),
        BAD,
        "chunk_bytes",
        ("MaterializeRequest.chunk_bytes",),
    ),
    Case(
        "digest_algorithm unknown",
        "Materialize",
        pb.MaterializeRequest(seed=1, variables=[GOOD], digest_algorithm=4),
        BAD,
        "digest_algorithm",
        ("MaterializeRequest.digest_algorithm",),
    ),
    Case(
        "digest_algorithm negative",
        "Materialize",
        pb.MaterializeRequest(seed=1, variables=[GOOD], digest_algorithm=-1),
        BAD,
        "digest_algorithm",
        ("MaterializeRequest.digest_algorithm",),
    ),
    Case(
        "session and a request seed",
        "Materialize",
        lambda s: pb.MaterializeRequest(session_id=s.open(seed=4), seed=4, variables=[GOOD]),
        BAD,
        "seed",
        ("MaterializeRequest.seed",),
    ),
    Case(
        "unknown session",
        "Materialize",
        pb.MaterializeRequest(session_id="no-such-session", variables=[GOOD]),
        MISSING,
        "session_id",
        ("MaterializeRequest.session_id",),
    ),
    Case(
        "forged session id",
        "Materialize",
        lambda s: pb.MaterializeRequest(session_id=s.forged(), variables=[GOOD]),
        MISSING,
        "session_id",
        ("MaterializeRequest.session_id",),
    ),
    Case(
        "session id spelled differently (unused base64 bits)",
        "Materialize",
        lambda s: pb.MaterializeRequest(session_id=s.respelled(), variables=[GOOD]),
        MISSING,
        "session_id",
        ("MaterializeRequest.session_id",),
    ),
    Case(
        "session id with changed contents",
        "Materialize",
        lambda s: pb.MaterializeRequest(session_id=s.tampered(), variables=[GOOD]),
        MISSING,
        "session_id",
        ("MaterializeRequest.session_id",),
    ),
    Case(
        "sequence_start without a session",
        "Materialize",
        pb.MaterializeRequest(seed=1, sequence_start=0, variables=[GOOD]),
        BAD,
        "sequence_start",
        ("MaterializeRequest.sequence_start",),
    ),
    Case(
        "sequence_start with a by-name session",
        "Materialize",
        lambda s: pb.MaterializeRequest(session_id=s.open(seed=9), sequence_start=0, variables=[GOOD]),
        BAD,
        "sequence_start",
        ("MaterializeRequest.sequence_start",),
    ),
    Case(
        "sequence_start past the last position",
        "Materialize",
        lambda s: pb.MaterializeRequest(
            session_id=s.open(seed=9, rng_mode=pb.RNG_MODE_SEQUENTIAL),
            sequence_start=2**32 - 1,
            variables=[GOOD, GOOD2],
        ),
        BAD,
        "sequence_start",
        ("MaterializeRequest.sequence_start",),
    ),
    Case(
        "expired session",
        "Materialize",
        lambda s: pb.MaterializeRequest(session_id=s.expired(), variables=[GOOD]),
        MISSING,
        "session_id",
        ("MaterializeRequest.session_id",),
    ),
    Case(
        "unknown request field",
        "Materialize",
        unknown_field(SEEDED),
        BAD,
        "request: unknown field",
        ("MaterializeRequest",),
    ),
    Case(
        "not a MaterializeRequest", "Materialize", b"\xff\xff\xff", BAD, "request: not a valid", ("MaterializeRequest",)
    ),
    Case("name not UTF-8", "Materialize", _bad_utf8_name(), BAD, "request: not a valid", ("VariableSpec.name",)),
    # OpenSessionRequest
    Case(
        "unknown rng_mode 7",
        "OpenSession",
        pb.OpenSessionRequest(rng_mode=7),
        BAD,
        "rng_mode",
        ("OpenSessionRequest.rng_mode",),
    ),
    Case(
        "negative rng_mode",
        "OpenSession",
        pb.OpenSessionRequest(rng_mode=-1),
        BAD,
        "rng_mode",
        ("OpenSessionRequest.rng_mode",),
    ),
    Case(
        "ttl over the maximum",
        "OpenSession",
        pb.OpenSessionRequest(ttl_seconds=2**32 - 1),
        BAD,
        "ttl_seconds",
        ("OpenSessionRequest.ttl_seconds",),
    ),
    Case(
        "unknown default_dtype",
        "OpenSession",
        pb.OpenSessionRequest(default_dtype=99),
        BAD,
        "default_dtype",
        ("OpenSessionRequest.default_dtype",),
    ),
    Case(
        "invalid default_initializer",
        "OpenSession",
        pb.OpenSessionRequest(default_initializer=init(random_normal={"stddev": NAN})),
        BAD,
        "default_initializer.random_normal.stddev",
        ("OpenSessionRequest.default_initializer",),
    ),
    Case(
        "unknown default_initializer kind",
        "OpenSession",
        pb.OpenSessionRequest(default_initializer=pb.Initializer.FromString(b"\xfa\x01\x00")),
        BAD,
        "default_initializer",
        ("OpenSessionRequest.default_initializer",),
    ),
    Case(
        "unknown OpenSessionRequest field",
        "OpenSession",
        unknown_field(pb.OpenSessionRequest(seed=1)),
        BAD,
        "request: unknown field",
        ("OpenSessionRequest",),
    ),
    Case("not an OpenSessionRequest", "OpenSession", b"\x0a", BAD, "request: not a valid", ("OpenSessionRequest",)),
    # CloseSessionRequest
    Case(
        "close an unknown session",
        "CloseSession",
        pb.CloseSessionRequest(session_id="no-such-session"),
        MISSING,
        "session_id",
        ("CloseSessionRequest.session_id",),
    ),
    Case(
        "close without a session id",
        "CloseSession",
        pb.CloseSessionRequest(),
        MISSING,
        "session_id",
        ("CloseSessionRequest.session_id",),
    ),
    Case(
        "close a forged session",
        "CloseSession",
        lambda s: pb.CloseSessionRequest(session_id=s.forged()),
        MISSING,
        "session_id",
        ("CloseSessionRequest.session_id",),
    ),
    Case(
        "close an expired session",
        "CloseSession",
        lambda s: pb.CloseSessionRequest(session_id=s.expired()),
        MISSING,
        "session_id",
        ("CloseSessionRequest.session_id",),
    ),
    Case(
        "not a CloseSessionRequest",
        "CloseSession",
        b"\x0a\x05ab",
        BAD,
        "request: not a valid",
        ("CloseSessionRequest",),
    ),
    Case(
        "not a ListInitializersRequest",
        "ListInitializers",
        b"\x08",
        BAD,
        "request: not a valid",
        ("ListInitializersRequest",),
    ),
]

CASES = VARIABLE_CASES + REQUEST_CASES


def _serialize(request) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def call(channel: grpc.Channel, rpc: str, request) -> grpc.RpcError:
    """The error of `rpc` with `request`; for Materialize, the stream must fail before any chunk."""
    method = f"/weightgen.v1.WeightGen/{rpc}"
    try:
        if rpc == "Materialize":
            stream = channel.unary_stream(method, request_serializer=_serialize, response_deserializer=None)
            result = next(iter(stream(request, timeout=TIMEOUT)))
        else:
            unary = channel.unary_unary(method, request_serializer=_serialize, response_deserializer=None)
            result = unary(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{rpc}: expected an error, got {result!r}")


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1)]) as channel:
        yield channel


def test_the_corpus_is_large_and_distinct():
    assert len(CASES) >= 40, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    static = [_serialize(c.request) for c in CASES if not callable(c.request)]
    assert len(set(static)) == len(static), "two cases send the same bytes"


# Fields no value of which is invalid on its own: a uint64 seed (0 = pick one). Their invalid
# combinations are cases (a session with a request seed; a variable seed with sequence_index).
NO_INVALID_VALUE = {"OpenSessionRequest.seed"}
MESSAGES = [
    pb.MaterializeRequest,
    pb.VariableSpec,
    pb.Initializer,
    pb.FanAxes,
    pb.Tensor,
    pb.Range,
    pb.Broadcast,
    pb.Constant,
    pb.RandomNormal,
    pb.RandomUniform,
    pb.TruncatedNormal,
    pb.VarianceScaling,
    pb.XavierUniform,
    pb.XavierNormal,
    pb.Kaiming,
    pb.Orthogonal,
    pb.DeltaOrthogonal,
    pb.Identity,
    pb.Dirac,
    pb.OpenSessionRequest,
    pb.CloseSessionRequest,
]


def test_every_field_is_covered():
    covered = {name for c in CASES for name in c.covers}
    # An Initializer kind is covered through its parameters' cases, or its own when it has none.
    kinds = pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields
    for kind in kinds:
        params = {f"{kind.message_type.name}.{f.name}" for f in kind.message_type.fields}
        if params and params <= covered:
            covered.add(f"Initializer.{kind.name}")
    wanted = {f"{m.DESCRIPTOR.name}.{f.name}" for m in MESSAGES for f in m.DESCRIPTOR.fields} - NO_INVALID_VALUE
    wanted -= {f"Initializer.{k.name}" for k in kinds if not k.message_type.fields and k.name != "he"}
    assert wanted <= covered, sorted(wanted - covered)


# Extreme but valid: zero-size tensors whose other dims are huge (fans beyond the largest float,
# shapes numpy cannot allocate even empty). Each gets one chunk: info, no data, last.
FAN_BASED = [
    "he",
    "he_normal",
    "glorot_uniform",
    "xavier_normal",
    "lecun_uniform",
    "variance_scaling",
    "kaiming_normal",
]
EXTREME_VALID = [
    *[(f"{kind} on [2^62]*17 + [0, 1]", var("w", [2**62] * 17 + [0, 1], init(**{kind: {}}))) for kind in FAN_BASED],
    (
        "broadcast [0, 2^62, 2^62] into itself",
        var("w", [0, 2**62, 2**62], base(pb.DTYPE_UINT8, [0, 2**62, 2**62], b"")),
    ),
    ("orthogonal [2^62, 0]", var("w", [2**62, 0], init(orthogonal={}))),
    ("rank 32 zero-size", var("w", [2**63 - 1] * 31 + [0], init(random_uniform={}))),
]


@pytest.mark.parametrize("variable", [v for _, v in EXTREME_VALID], ids=[i for i, _ in EXTREME_VALID])
def test_extreme_but_valid(stub, variable):
    chunks = list(stub.Materialize(pb.MaterializeRequest(seed=1, variables=[variable]), timeout=TIMEOUT))
    assert len(chunks) == 1, len(chunks)
    (only,) = chunks
    assert only.last and only.data == b"" and only.info.byte_size == 0
    assert list(only.info.shape) == list(variable.shape)
    assert_serves(stub)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed(stub, channel, case: Case):
    sessions = Sessions(stub)
    try:
        request = case.request(sessions) if callable(case.request) else case.request
        error = call(channel, case.rpc, request)
        assert error.code() == case.code, (error.code(), error.details())
        assert error.details().startswith(case.where), error.details()
        assert_serves(stub)
    finally:
        sessions.close_all()
