"""Materialize end to end: the bytes a real server streams are the engine's, with complete infos."""

from __future__ import annotations

import numpy as np
import pytest

from weightgen.server.engine import GENERATOR
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .helpers import engine_bytes, fetch, init, var

SEED = 20240611


def _variables() -> list[pb.VariableSpec]:
    base = np.arange(3, dtype="<f8") * 1.5
    channels_first = pb.Initializer(
        kaiming_uniform=pb.Kaiming(a=0.1), fan_axes=pb.FanAxes(layout=pb.FAN_LAYOUT_CHANNELS_FIRST)
    )
    return [
        var("normal", [37, 53], init(random_normal={"stddev": 2.0, "mean": 0.5})),
        var("he_bf16", [64, 48], init(he_normal={}), dtype=pb.DTYPE_BFLOAT16),
        var("uniform_c64", [10, 7], init(random_uniform={"min": -1, "max": 3}), dtype=pb.DTYPE_COMPLEX64),
        var(
            "glorot_f64_slice",
            [16, 24],
            init(glorot_uniform={}),
            dtype=pb.DTYPE_FLOAT64,
            slice=[pb.Range(start=3, stop=11), pb.Range(start=5, stop=20)],
        ),
        var("orthogonal", [8, 6], init(orthogonal={"scale": 2.0})),
        var(
            "broadcast_i32",
            [4, 3],
            init(broadcast={"base": pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=base.tobytes())}),
            dtype=pb.DTYPE_INT32,
        ),
        var("constant_f16", [5, 5], init(constant={"value": -0.25}), dtype=pb.DTYPE_FLOAT16),
        var("kaiming_cf", [12, 6, 3, 3], channels_first),
        var("ones_bool", [9], init(ones={}), dtype=pb.DTYPE_BOOL),
        var("trunc_seeded", [300], init(truncated_normal={"stddev": 0.3}), seed=99),
        var("scalar", [], init(random_uniform={})),
        var("sparse", [40, 30], init(sparse={"sparsity": 0.3, "stddev": 0.5})),
        var(
            "sparse_c64_slice",
            [40, 30],
            init(sparse={"sparsity": 0.25}),
            dtype=pb.DTYPE_COMPLEX64,
            slice=[pb.Range(start=7, stop=33), pb.Range(start=2, stop=29)],
        ),
        var("he_uniform_c128", [12, 20], init(he_uniform={}), dtype=pb.DTYPE_COMPLEX128),
    ]


def test_batch_equals_the_engine(stub, engine):
    variables = _variables()
    received = fetch(stub, pb.MaterializeRequest(seed=SEED, variables=variables))
    for index, variable in enumerate(variables):
        got = received[index]
        assert bytes(got.data) == engine_bytes(engine, variable, SEED), variable.name
        info = got.info
        assert info.name == variable.name
        assert list(info.shape) == list(variable.shape)  # the full shape, also for a slice
        assert info.dtype == (variable.dtype or pb.DTYPE_FLOAT32)
        out_shape = [r.stop - r.start for r in variable.slice] or list(variable.shape)
        assert info.byte_size == int(np.prod(out_shape)) * wire.numpy_dtype(info.dtype).itemsize
        assert info.seed == (variable.seed or SEED)
        assert info.generator == GENERATOR == "weightgen/2"
        assert info.digest_algorithm == "sha256"
        assert [(r.start, r.stop) for r in info.slice] == [(r.start, r.stop) for r in variable.slice]
        assert info.zero_reason == pb.ZERO_REASON_UNSPECIFIED
        assert not info.HasField("sequence_index")


def test_dtype_unspecified_is_float32(stub, engine):
    variable = var("w", [6, 5], init(lecun_normal={}))
    got = fetch(stub, pb.MaterializeRequest(seed=5, variables=[variable]))[0]
    assert got.info.dtype == pb.DTYPE_FLOAT32
    assert bytes(got.data) == engine_bytes(engine, variable, 5, pb.DTYPE_FLOAT32)


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        (var("int_random", [4, 4], init(random_normal={}), dtype=pb.DTYPE_INT16), pb.ZERO_REASON_NON_FLOAT_DTYPE),
        (var("uint_he", [4, 4], init(he={}), dtype=pb.DTYPE_UINT8), pb.ZERO_REASON_NON_FLOAT_DTYPE),
        (var("bias", [7], init(glorot_normal={})), pb.ZERO_REASON_RANK_AT_MOST_1),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_zero_reason(stub, engine, variable, reason):
    got = fetch(stub, pb.MaterializeRequest(seed=1, variables=[variable]))[0]
    assert got.info.zero_reason == reason
    assert got.info.byte_size > 0
    assert bytes(got.data) == bytes(got.info.byte_size) == engine_bytes(engine, variable, 1)


def test_seed_zero_picks_a_seed_that_reproduces(stub):
    variables = [var("a", [20, 10], init(random_normal={})), var("b", [3], init(random_uniform={}))]
    first = fetch(stub, pb.MaterializeRequest(seed=0, variables=variables))
    seed = first[0].info.seed
    assert seed != 0 and first[1].info.seed == seed  # one seed for the batch, reported in every info
    again = fetch(stub, pb.MaterializeRequest(seed=seed, variables=variables))
    assert [bytes(again[i].data) for i in (0, 1)] == [bytes(first[i].data) for i in (0, 1)]


def test_batch_order_does_not_matter(stub):
    variables = _variables()[:4]
    forward = fetch(stub, pb.MaterializeRequest(seed=SEED, variables=variables))
    backward = fetch(stub, pb.MaterializeRequest(seed=SEED, variables=variables[::-1]))
    n = len(variables)
    for i in range(n):
        assert bytes(forward[i].data) == bytes(backward[n - 1 - i].data)


def test_list_initializers(stub):
    response = stub.ListInitializers(pb.ListInitializersRequest(), timeout=30)
    assert response.generator == "weightgen/2"
    assert sorted(response.dtypes) == sorted(wire.DTYPES)
    kinds = pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields
    assert [i.name for i in response.initializers] == [f.name for f in kinds]  # every kind, in field order
    listed = {i.name: i for i in response.initializers}
    inexact = {pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64, pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16}
    inexact |= {pb.DTYPE_COMPLEX64, pb.DTYPE_COMPLEX128}
    for f in kinds:
        info = listed[f.name]
        assert info.json_name == f.json_name
        assert info.formula
        assert [p.name for p in info.parameters] == [p.name for p in f.message_type.fields], f.name
        for p, field in zip(info.parameters, f.message_type.fields, strict=True):
            assert p.description, f"{f.name}.{p.name} has no description"
            if field.message_type is not None:  # the broadcast base: required, no default
                assert (p.type, p.default_value) == ("Tensor", ""), f"{f.name}.{p.name}"
                continue
            if (f.name, p.name) == ("sparse", "sparsity"):  # required, as in PyTorch's sparse_
                assert p.default_value == "" and "required" in p.description
                continue
            assert p.default_value != "", f"{f.name}.{p.name} has no default"
            if field.enum_type is not None:
                assert p.type == field.enum_type.name
                assert p.default_value in p.choices, f"{f.name}.{p.name}"
                assert len(p.choices) >= 2
            else:
                assert p.type == {field.TYPE_DOUBLE: "double", field.TYPE_INT32: "int32"}[field.type]
                float(p.default_value)
        assert set(info.value_dtypes) == (inexact if info.random else set(wire.DTYPES)), f.name
    assert listed["random_normal"].random and not listed["random_normal"].fan_based
    assert listed["he_normal"].random and listed["he_normal"].fan_based
    assert not listed["zeros"].random and not listed["broadcast"].random
    defaults = {p.name: p.default_value for p in listed["random_uniform"].parameters}
    assert (float(defaults["min"]), float(defaults["max"])) == (0.0, 1.0)
    modes = {p.name: p for p in listed["variance_scaling"].parameters}["mode"]
    assert modes.default_value == "fan_in" and set(modes.choices) == {"fan_in", "fan_out", "fan_avg", "fan_geo_avg"}


def test_sparse_over_grpc(stub):
    """PyTorch's sparse_ through the real server: ceil(sparsity * rows) zeros in every column, a
    slice is the whole tensor's hyperslab, and a missing sparsity or a rank other than 2 is
    INVALID_ARGUMENT naming the field."""
    import grpc

    whole = var("s", [50, 16], init(sparse={"sparsity": 0.3, "stddev": 2.0}))
    rows = [pb.Range(start=10, stop=41), pb.Range(start=0, stop=16)]
    part = var("s", [50, 16], init(sparse={"sparsity": 0.3, "stddev": 2.0}), slice=rows)
    got = fetch(stub, pb.MaterializeRequest(seed=SEED, variables=[whole]))[0]
    x = np.frombuffer(bytes(got.data), "<f4").reshape(50, 16)
    assert ((x == 0).sum(axis=0) == 15).all()  # ceil(0.3 * 50) = 15
    sliced = fetch(stub, pb.MaterializeRequest(seed=SEED, variables=[part]))[0]
    np.testing.assert_array_equal(np.frombuffer(bytes(sliced.data), "<f4").reshape(31, 16), x[10:41])
    for variable, field in (
        (var("s", [50, 16], init(sparse={"stddev": 1.0})), "sparsity"),
        (var("s", [50, 16, 2], init(sparse={"sparsity": 0.5})), "shape"),
        (var("s", [50, 16], init(sparse={"sparsity": 1.5})), "sparsity"),
    ):
        with pytest.raises(grpc.RpcError) as error:
            fetch(stub, pb.MaterializeRequest(seed=SEED, variables=[variable]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error.value.details()
