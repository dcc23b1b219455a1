"""Every error of DESIGN.md section 3: its status, a message naming where, before any data, and the
server serves on afterwards."""

from __future__ import annotations

import math

import grpc
import pytest

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .helpers import assert_serves, first_response_error, init, metric, quoted, var

BAD = grpc.StatusCode.INVALID_ARGUMENT
GOOD = var("good", [300, 200], init(random_normal={}))  # streamed first if validation did not come first


def _unknown_initializer() -> pb.Initializer:
    message = pb.Initializer.FromString(b"\xfa\x01\x00")  # field 31, length 0: from a newer client
    assert message.WhichOneof("kind") is None
    return message


def _mode_42() -> pb.Initializer:
    message = pb.Initializer(variance_scaling=pb.VarianceScaling())
    message.variance_scaling.mode = 42
    return message


def _base(dtype: int, shape: list[int], nbytes: int) -> pb.Initializer:
    return init(broadcast={"base": pb.Tensor(dtype=dtype, shape=shape, data=bytes(nbytes))})


def _dtype_99() -> pb.VariableSpec:
    v = var("w", [4, 4], init(he={}))
    v.dtype = 99  # proto3 enums are open: the number travels
    return v


# (id, the bad variable at index 1, the field the message must name)
VARIABLE_CASES = [
    ("empty name", var("", [2], init(ones={})), "name"),
    ("over-long name", var("n" * 1025, [2], init(ones={})), "name"),
    ("duplicate name", var("good", [2], init(ones={})), "name"),
    ("negative dim", var("w", [3, -1], init(ones={})), "shape[1]"),
    ("overflowing dims", var("w", [2**40, 2**40], init(ones={})), "shape"),
    ("int64-overflowing product", var("w", [2**62, 2**62, 4], init(zeros={})), "shape"),
    ("unknown dtype", _dtype_99(), "dtype"),
    ("unknown initializer", var("w", [4], _unknown_initializer()), "initializer"),
    ("missing initializer", var("w", [4]), "initializer"),
    ("nan stddev", var("w", [4], init(random_normal={"stddev": math.nan})), "initializer.random_normal.stddev"),
    ("inf mean", var("w", [4], init(random_normal={"mean": math.inf})), "initializer.random_normal.mean"),
    ("-inf min", var("w", [4], init(random_uniform={"min": -math.inf})), "initializer.random_uniform.min"),
    ("min > max", var("w", [4], init(random_uniform={"min": 2, "max": 1})), "initializer.random_uniform.min"),
    ("stddev < 0", var("w", [4], init(truncated_normal={"stddev": -0.1})), "initializer.truncated_normal.stddev"),
    ("scale <= 0", var("w", [4, 4], init(variance_scaling={"scale": 0.0})), "initializer.variance_scaling.scale"),
    ("unknown enum in initializer", var("w", [4, 4], _mode_42()), "initializer.variance_scaling.mode"),
    (
        "unknown enum in fan axes",
        var("w", [4, 4], pb.Initializer(he=pb.He(), fan_axes=pb.FanAxes(layout=9))),
        "initializer.fan_axes.layout",
    ),
    ("slice wrong rank", var("w", [4, 4], init(ones={}), slice=[pb.Range(start=0, stop=2)]), "slice"),
    (
        "slice reversed",
        var("w", [4, 4], init(ones={}), slice=[pb.Range(start=0, stop=4), pb.Range(start=3, stop=1)]),
        "slice[1]",
    ),
    (
        "slice out of bounds",
        var("w", [4, 4], init(ones={}), slice=[pb.Range(start=0, stop=5), pb.Range(start=0, stop=4)]),
        "slice[0]",
    ),
    (
        "slice negative start",
        var("w", [4, 4], init(ones={}), slice=[pb.Range(start=-1, stop=2), pb.Range(start=0, stop=4)]),
        "slice[0]",
    ),
    ("broadcast bytes mismatch", var("w", [4, 3], _base(pb.DTYPE_FLOAT32, [3], 8)), "initializer.broadcast.base.data"),
    (
        "broadcast not a suffix",
        var("w", [4, 3], _base(pb.DTYPE_FLOAT32, [1, 3], 12)),
        "initializer.broadcast.base.shape",
    ),
    (
        "broadcast base without dtype",
        var("w", [4, 3], _base(pb.DTYPE_UNSPECIFIED, [3], 12)),
        "initializer.broadcast.base.dtype",
    ),
    ("broadcast unknown base dtype", var("w", [4, 3], _base(77, [3], 12)), "initializer.broadcast.base.dtype"),
    (
        "constant not representable",
        var("w", [2], init(constant={"value": 300}), dtype=pb.DTYPE_INT8),
        "initializer.constant.value",
    ),
    ("resume past the end", var("w", [4], init(ones={}), resume_offset=17), "resume_offset"),
    ("negative resume", var("w", [4], init(ones={}), resume_offset=-1), "resume_offset"),
    ("identity of rank 3", var("w", [2, 2, 2], init(identity={})), "shape"),
]


@pytest.mark.parametrize(("bad", "field"), [c[1:] for c in VARIABLE_CASES], ids=[c[0] for c in VARIABLE_CASES])
def test_invalid_variable(stub, bad, field):
    request = pb.MaterializeRequest(seed=1, variables=[GOOD, bad])
    error = first_response_error(stub, request)
    assert error.code() == BAD, error
    details = error.details()
    assert details.startswith(f"variables[1] ({quoted(bad.name)}): "), details
    assert f": {field}" in details, details
    assert_serves(stub)


REQUEST_CASES = [
    ("empty batch", pb.MaterializeRequest(seed=1), "variables"),
    (
        "chunk_bytes over the maximum",
        pb.MaterializeRequest(seed=1, variables=[GOOD], chunk_bytes=4 << 20),
        "chunk_bytes",
    ),
    ("unknown request field", pb.MaterializeRequest.FromString(b"\x10\x01" + b"\xf8\x03\x01"), "request"),
]


@pytest.mark.parametrize(("request_", "field"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_invalid_request(stub, request_, field):
    error = first_response_error(stub, request_)
    assert error.code() == BAD, error
    assert error.details().startswith(f"{field}: "), error.details()
    assert_serves(stub)


def test_largest_chunk_is_accepted(stub):
    request = pb.MaterializeRequest(seed=1, variables=[GOOD], chunk_bytes=wire.MAX_CHUNK_BYTES)
    assert len(b"".join(c.data for c in stub.Materialize(request, timeout=60))) == 300 * 200 * 4


def test_session_and_request_seed(stub):
    session = stub.OpenSession(pb.OpenSessionRequest(seed=5), timeout=30)
    request = pb.MaterializeRequest(session_id=session.session_id, seed=5, variables=[GOOD])
    error = first_response_error(stub, request)
    assert error.code() == BAD and error.details().startswith("seed: "), error.details()
    assert_serves(stub)
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30)


def test_error_metrics_count_by_code(server, stub):
    before = metric(server, "weightgen_requests_total", method="Materialize", code="INVALID_ARGUMENT")
    errors_before = metric(server, "weightgen_errors_total", method="Materialize", code="INVALID_ARGUMENT")
    first_response_error(stub, pb.MaterializeRequest(seed=1))
    assert metric(server, "weightgen_requests_total", method="Materialize", code="INVALID_ARGUMENT") == before + 1
    assert metric(server, "weightgen_errors_total", method="Materialize", code="INVALID_ARGUMENT") == errors_before + 1


# -- configured limits: RESOURCE_EXHAUSTED ------------------------------------------------------

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_elements_per_variable_limit(limited_server, limited_stub):
    before = metric(limited_server, "weightgen_limit_rejections_total", limit="elements_per_variable")
    ok = var("ok", [1000], init(zeros={}), dtype=pb.DTYPE_INT8)
    request = pb.MaterializeRequest(seed=1, variables=[ok, var("big", [1001], init(zeros={}), dtype=pb.DTYPE_INT8)])
    error = first_response_error(limited_stub, request)
    assert error.code() == EXHAUSTED, error
    assert error.details().startswith("variables[1] ('big'): shape: "), error.details()
    assert "1000" in error.details()
    assert metric(limited_server, "weightgen_limit_rejections_total", limit="elements_per_variable") == before + 1
    assert_serves(limited_stub)


def test_bytes_per_request_limit(limited_stub):
    variables = [var("a", [600], init(ones={})), var("b", [500], init(ones={}))]  # 4400 bytes > 4096
    error = first_response_error(limited_stub, pb.MaterializeRequest(seed=1, variables=variables))
    assert error.code() == EXHAUSTED, error
    assert error.details().startswith("variables: ") and "4400" in error.details() and "4096" in error.details()
    # Exactly at the limit is fine.
    variables = [var("a", [512], init(ones={})), var("b", [512], init(ones={}))]
    chunks = list(limited_stub.Materialize(pb.MaterializeRequest(seed=1, variables=variables), timeout=60))
    assert sum(len(c.data) for c in chunks) == 4096
    assert_serves(limited_stub)


def test_variables_per_request_limit(limited_stub):
    variables = [var(n, [2], init(ones={})) for n in "abc"]
    error = first_response_error(limited_stub, pb.MaterializeRequest(seed=1, variables=variables))
    assert error.code() == EXHAUSTED, error
    assert error.details().startswith("variables: ") and "3" in error.details() and "2" in error.details()
    assert_serves(limited_stub)


def test_invalid_wins_over_limits(limited_stub):
    """A malformed variable is INVALID_ARGUMENT even in a batch that is also too big."""
    variables = [var("a", [2], init(ones={})), var("b", [-2], init(ones={}))]
    error = first_response_error(limited_stub, pb.MaterializeRequest(seed=1, variables=variables))
    assert error.code() == BAD and error.details().startswith("variables[1] ('b'): shape[0]"), error.details()
