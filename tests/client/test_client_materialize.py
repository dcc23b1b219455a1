"""Client.materialize / stream / iter_chunks against a real server: values, slices, parallel streams, digests."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest
from client_helpers import same_bytes, xxh3
from faultwire import Faults

from weightgen.client import Client, DigestMismatchError, Variable, init
from weightgen.server import engine as eng
from weightgen.v1 import weightgen_pb2 as pb

VARIABLES = [
    Variable("dense/kernel", (48, 32), init.he_normal()),
    Variable(
        "conv.weight", (16, 8, 3, 3), init.kaiming_normal(mode="fan_out", nonlinearity="relu", layout="channels_first")
    ),
    Variable("emb", (40, 24), init.random_uniform(min=-1, max=1), dtype="bfloat16"),
    Variable("bias", (32,), "zeros"),
]


def test_materialize_equals_the_engine(client, engine):
    arrays = client.materialize(VARIABLES, seed=1234)
    assert list(arrays) == [v.name for v in VARIABLES]
    expected = {
        "dense/kernel": eng.VariableSpec("dense/kernel", (48, 32), "float32", eng.Initializer("he_normal")),
        "conv.weight": eng.VariableSpec(
            "conv.weight",
            (16, 8, 3, 3),
            "float32",
            eng.Initializer(
                "kaiming_normal",
                {"mode": "fan_out", "nonlinearity": "relu"},
                eng.FanAxes(layout="channels_first"),
            ),
        ),
        "emb": eng.VariableSpec("emb", (40, 24), "bfloat16", eng.Initializer("random_uniform", {"min": -1, "max": 1})),
        "bias": eng.VariableSpec("bias", (32,), "float32", eng.Initializer("zeros")),
    }
    for name, spec in expected.items():
        reference = engine.generate(spec, seed=1234)
        assert same_bytes(arrays[name], reference), name
    assert arrays["emb"].dtype == ml_dtypes.bfloat16 and arrays["conv.weight"].shape == (16, 8, 3, 3)
    assert np.all(arrays["bias"] == 0) and arrays["dense/kernel"].std() > 0.1


def test_stream_yields_each_tensor_as_it_completes(server):
    big = Variable("big", (256, 512), "random_normal")  # 512 KiB: several 64 KiB chunks after `small`
    small = Variable("small", (8,), "ones")
    seen = []
    with Client(server.address, chunk_bytes=64 << 10) as client:
        stream = client.stream([small, big], seed=5, progress=lambda got, total: seen.append((got, total)))
        first = next(stream)
        assert first.name == "small" and seen[-1][0] < seen[-1][1]  # yielded before the rest arrived
        rest = list(stream)
    assert [t.name for t in rest] == ["big"]
    assert seen[-1] == (8 * 4 + 256 * 512 * 4,) * 2
    for tensor in (first, *rest):
        assert tensor.info.seed == tensor.seed == 5 and tensor.info.generator == "weightgen/2"
        assert tensor.info.digest_algorithm == tensor.digest_algorithm == "xxh3_128"  # the client's default
        assert tensor.digest == xxh3(tensor.array) == xxh3(tensor.array.tobytes())


def test_seed_zero_is_reported_and_reproduces(client):
    tensors = list(client.stream(VARIABLES[:2]))
    seed = tensors[0].seed
    assert seed != 0 and all(t.seed == seed for t in tensors)
    again = client.materialize(VARIABLES[:2], seed=seed)
    assert all(same_bytes(t.array, again[t.name]) for t in tensors)


def test_slices_equal_slicing_the_whole_tensor(client):
    whole = client.materialize(VARIABLES, seed=99)
    cuts = {
        "dense/kernel": np.s_[5:17, 3:30],
        "conv.weight": np.s_[4:12, :, 1:3],
        "emb": np.s_[39:40],
        "bias": np.s_[0:0],
    }
    sliced = client.materialize([dataclasses.replace(v, slice=cuts[v.name]) for v in VARIABLES], seed=99)
    for name, cut in cuts.items():
        assert same_bytes(sliced[name], np.ascontiguousarray(whole[name][cut])), name


def test_parallel_streams_equal_one_stream(client):
    variables = [Variable(f"w{i}", (16 * (i + 1), 16), "glorot_uniform") for i in range(7)]
    one = client.materialize(variables, seed=7)
    three = client.materialize(variables, seed=7, streams=3)
    assert list(three) == list(one)
    assert all(same_bytes(one[k], three[k]) for k in one)
    # Seed 0 over several streams: one seed for all of them.
    tensors = list(client.stream(variables, streams=3))
    assert len({t.seed for t in tensors}) == 1 and sorted(t.name for t in tensors) == sorted(one)


def test_iter_chunks_is_the_raw_stream(client):
    chunks = list(client.iter_chunks([Variable("w", (64, 64), "he")], seed=3))
    assert chunks[0].info.name == "w" and chunks[-1].last
    data = b"".join(bytes(c.data) for c in chunks)
    assert chunks[-1].info is None or chunks[-1].info.digest_algorithm == "xxh3_128"
    assert chunks[-1].digest == xxh3(data)
    assert [c.offset for c in chunks] == list(np.cumsum([0] + [len(c.data) for c in chunks[:-1]]))


def _corrupt(attempt: int, chunk):
    if chunk.data.nbytes and chunk.offset == 0:
        flipped = bytearray(chunk.data)
        flipped[3] ^= 0x40
        return dataclasses.replace(chunk, data=memoryview(bytes(flipped)))
    return chunk


def test_digest_verification_catches_a_corrupted_chunk(server):
    faults = Faults(_corrupt)
    with Client(server.address, interceptors=[faults]) as client, pytest.raises(DigestMismatchError) as caught:
        client.materialize([Variable("w", (32, 32), "he")], seed=1)
    assert caught.value.name == "w" and caught.value.code == "DATA_LOSS" and "'w'" in str(caught.value)
    # The same corruption goes unnoticed without verification: the check above is what caught it.
    faults = Faults(_corrupt)
    with Client(server.address, verify=False, interceptors=[faults]) as client:
        corrupted = client.materialize([Variable("w", (32, 32), "he")], seed=1)["w"]
        faults.hook = None
        clean = client.materialize([Variable("w", (32, 32), "he")], seed=1)["w"]
    assert not same_bytes(corrupted, clean)


def test_accepts_protos_dicts_and_requests(client):
    by_variable = client.materialize([Variable("x", (4, 4), "random_uniform(min=-2, max=2)", dtype="float64")], seed=8)
    as_dict = client.materialize(
        [
            {
                "name": "x",
                "shape": [4, 4],
                "dtype": "DTYPE_FLOAT64",
                "initializer": {"randomUniform": {"min": -2, "max": 2}},
            }
        ],
        seed=8,
    )
    request = pb.MaterializeRequest(
        seed=8, variables=[Variable("x", (4, 4), init.random_uniform(-2, 2), "f64").to_proto()]
    )
    as_request = client.materialize(request)
    assert by_variable["x"].dtype == np.float64
    assert same_bytes(by_variable["x"], as_dict["x"]) and same_bytes(by_variable["x"], as_request["x"])
