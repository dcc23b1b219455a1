"""Safetensors files written as the stream arrives, and their manifests."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from client_helpers import same_bytes, xxh3
from google.protobuf import json_format
from safetensors import safe_open
from safetensors.numpy import load_file

from weightgen.client import Variable, errors, init, read_manifest
from weightgen.client.files import Manifest, SafetensorsWriter, iter_tensors, read_header
from weightgen.client.specs import variable_specs
from weightgen.client.verify import verify_file
from weightgen.v1 import weightgen_pb2 as pb

VARIABLES = [
    Variable("embed", (50, 16), "random_normal(stddev=0.02)", dtype="bfloat16"),
    Variable("layer.weight", (16, 24), init.he_uniform(), dtype="float64"),
    Variable("layer.bias", (24,), "zeros", dtype="float16"),
    Variable("mask", (5,), "ones", dtype="bool"),
    Variable("steps", (), "zeros", dtype="int64"),
    Variable("count", (3, 2), init.constant(value=7), dtype="uint16"),
    Variable("z", (4, 2), init.random_normal(stddev=1.0), dtype="complex64"),
    Variable("empty", (0, 7), "he"),
    Variable("shard", (64, 32), "glorot_uniform", slice=np.s_[16:32]),
]


def test_file_equals_the_arrays_and_reloads(client, tmp_path):
    path = tmp_path / "model.safetensors"
    manifest = client.materialize_to_file(VARIABLES, path, seed=31)
    arrays = client.materialize(VARIABLES, seed=31)
    loaded = load_file(path)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert same_bytes(loaded[name], array), name
    assert loaded["embed"].dtype == ml_dtypes.bfloat16 and loaded["shard"].shape == (16, 32)
    assert loaded["steps"].shape == () and loaded["z"].dtype == np.complex64
    with safe_open(path, "np") as f:
        assert f.metadata()["format"] == "pt" and "weightgen" in f.metadata()
    # Every tensor is aligned to its element size, and no partial file is left behind.
    _, tensors = read_header(path)
    assert all(t.begin % t.numpy_dtype.itemsize == 0 for t in tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert manifest.total_bytes == sum(a.nbytes for a in arrays.values())


def test_manifest_round_trip(client, tmp_path):
    path = tmp_path / "m.safetensors"
    manifest = client.materialize_to_file(VARIABLES, path, record_time=True)  # seed 0: the server picks one
    read = read_manifest(path)
    assert read.to_json() == manifest.to_json() and Manifest.from_json(read.to_json()).to_dict() == read.to_dict()
    sent = client.request(VARIABLES)
    assert sent.chunk_bytes  # the client asks for large chunks; the manifest records what, not how
    sent.ClearField("chunk_bytes")
    assert sent.digest_algorithm == pb.DIGEST_ALGORITHM_XXH3_128  # the client's default, not part of the manifest
    sent.ClearField("digest_algorithm")
    assert read.request == sent and read.server == client.target and read.digest_algorithm == "xxh3_128"
    assert read.generator == "weightgen/2" and len(read.seeds) == 1 and read.seeds[0] != 0
    assert read.created.endswith("Z") and read.seconds > 0 and read.session is None
    arrays = client.materialize(VARIABLES, seed=read.seeds[0])
    for entry in read.variables:
        assert entry.digest == xxh3(arrays[entry.name]).hex()
        assert entry.byte_size == arrays[entry.name].nbytes
    assert read.variable("shard").slice == [[16, 32], [0, 32]] and read.variable("shard").shape == [64, 32]
    assert read.variable("mask").zero_reason == "" and read.variable("layer.weight").dtype == "float64"
    # The header is padded with spaces to the size reserved before the first byte.
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + length]
    assert length % 8 == 0 and header.rstrip(b" ").endswith(b"}") and json.loads(header)


def test_parallel_streams_to_a_file(client, tmp_path):
    one = client.materialize_to_file(VARIABLES, tmp_path / "one.safetensors", seed=8)
    four = client.materialize_to_file(VARIABLES, tmp_path / "four.safetensors", seed=8, streams=4)
    assert [v.digest for v in one.variables] == [v.digest for v in four.variables]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "four.safetensors")
    assert set(a) == set(b) and all(same_bytes(a[k], b[k]) for k in a)


def test_session_file_verifies(client, tmp_path):
    path = tmp_path / "seq.safetensors"
    with client.open_session(
        seed=12, rng_mode="sequential", default_initializer="he_normal", default_dtype="bf16"
    ) as s:
        s.materialize([Variable("before", (4, 4))])  # the file's variables start at position 1
        manifest = s.materialize_to_file(
            [Variable("a", (8, 8)), Variable("b", (8,), "ones"), Variable("c", (4, 4))], path
        )
    assert [v.sequence_index for v in manifest.variables] == [1, None, 2]
    assert manifest.session.seed == 12 and manifest.variables[0].dtype == "bfloat16"
    checks = verify_file(client, path)
    assert [c.name for c in checks] == ["a", "b", "c"] and all(c.ok for c in checks)


def test_complex128_is_refused_clearly(client, tmp_path):
    with pytest.raises(ValueError, match="complex128"):
        client.materialize_to_file([Variable("z", (2,), "zeros", dtype="complex128")], tmp_path / "z.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_fetch_leaves_no_file(client, tmp_path):
    with pytest.raises(errors.InvalidArgument):
        client.materialize_to_file([Variable("a", (2,), "he"), Variable("a", (2,), "he")], tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_header_outgrowing_its_reserve_is_relocated(tmp_path):
    specs = variable_specs([Variable("a", (3,), "zeros"), Variable("b", (2, 2), "zeros", dtype="int16")])
    writer = SafetensorsWriter(
        tmp_path / "r.safetensors", specs, [pb.DTYPE_FLOAT32, pb.DTYPE_INT16], metadata_reserve={"k": "short"}
    )
    a = np.array([1.5, -2.0, 3.25], np.float32)
    b = np.array([[1, 2], [3, -4]], np.int16)
    writer.write(1, 0, memoryview(b.tobytes()))
    writer.write(0, 4, memoryview(a[1:].tobytes()))
    writer.write(0, 0, memoryview(a[:1].tobytes()))
    writer.commit({"k": "x" * 5000})
    loaded = load_file(tmp_path / "r.safetensors")
    assert np.array_equal(loaded["a"], a) and np.array_equal(loaded["b"], b)
    metadata, _ = read_header(tmp_path / "r.safetensors")
    assert metadata == {"k": "x" * 5000}


def test_identical_fetches_write_identical_files(client, tmp_path):
    first, second, timed = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "t.safetensors"
    client.materialize_to_file(VARIABLES, first, seed=12)
    client.materialize_to_file(VARIABLES, second, seed=12, streams=2)
    assert first.read_bytes() == second.read_bytes()
    assert "created" not in read_manifest(first).to_dict() and read_manifest(first).created == ""
    # Timing is opt-in, and then it is what differs.
    client.materialize_to_file(VARIABLES, timed, seed=12, record_time=True)
    record = read_manifest(timed)
    assert record.created.endswith("Z") and record.seconds > 0
    assert record.variables == read_manifest(first).variables


def test_verify_names_a_file_made_under_another_contract(client, tmp_path):
    from weightgen.v1.version import CONTRACT

    path = tmp_path / "old.safetensors"
    client.materialize_to_file(VARIABLES, path, seed=3)
    assert all(check.ok for check in verify_file(client, path))
    # The same file as if an older server had written it (same length: the header stays valid).
    older = "weightgen/0"
    assert len(older) == len(CONTRACT)
    raw = path.read_bytes()
    field = '\\"generator\\":\\"{}\\"'  # the manifest is a JSON string inside the header's JSON
    assert raw.count(field.format(CONTRACT).encode()) == 1
    path.write_bytes(raw.replace(field.format(CONTRACT).encode(), field.format(older).encode()))
    checks = verify_file(client, path)
    assert checks and all(f"made under contract {older}, the server speaks {CONTRACT}" in c.problems[0] for c in checks)


# Several chunks per tensor (64 KiB, the smallest a server sends), the dtypes a file can hold in
# every width, and a slice: what test_file_equals_the_arrays_and_reloads and the CLI's own tests
# (one chunk per tensor; float32 only through the CLI) do not cover.
MULTI_CHUNK = [
    Variable("w32", (160, 256), init.he_normal()),  # 160 KiB: 3 chunks; every tensor here spans 3
    Variable("w_bf16", (300, 256), init.glorot_uniform(), dtype="bfloat16"),
    Variable("w_f16", (257, 300), "random_normal(stddev=0.5)", dtype="float16"),
    Variable("q_int8", (140000,), init.constant(value=-3), dtype="int8"),
    Variable("z_c64", (96, 200), init.random_normal(stddev=1.0), dtype="complex64"),
    Variable("shard", (512, 160), "lecun_uniform", slice=np.s_[100:400, 16:144]),
]


def test_file_and_cli_fetch_equal_the_in_memory_fetch(client, server, tmp_path):
    request = client.request(MULTI_CHUNK, seed=77)
    request.chunk_bytes = 64 << 10
    arrays = client.materialize(request)
    assert [a.dtype.name for a in arrays.values()] == ["float32", "bfloat16", "float16", "int8", "complex64", "float32"]
    assert arrays["shard"].shape == (300, 128) and all(a.nbytes > 2 * request.chunk_bytes for a in arrays.values())
    assert np.unique(arrays["q_int8"]).tolist() == [-3]
    assert np.count_nonzero(arrays["w_f16"]) > 0.99 * arrays["w_f16"].size  # values, not a zero fill

    by_client = tmp_path / "client.safetensors"
    client.materialize_to_file(request, by_client)
    spec = tmp_path / "request.json"
    spec.write_text(json_format.MessageToJson(request))
    by_cli = tmp_path / "cli.safetensors"
    command = ["fetch", str(spec), "-o", str(by_cli), "--no-progress", "--server", server.address]
    result = subprocess.run(
        [sys.executable, "-m", "weightgen.client.cli", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for path in (by_client, by_cli):
        # Two readers: safetensors' own, and the project's memory maps.
        loaded = load_file(path)
        mapped = {tensor.name: view for tensor, view in iter_tensors(path)}
        assert set(loaded) == set(mapped) == set(arrays), path.name
        for name, array in arrays.items():
            assert same_bytes(loaded[name], array), f"{path.name}: {name}"
            assert same_bytes(np.asarray(mapped[name]), array), f"{path.name}: {name} (iter_tensors)"
        assert [v.digest for v in read_manifest(path).variables] == [xxh3(a).hex() for a in arrays.values()]
    # The same request gives the same file, whichever way it was fetched.
    assert by_client.read_bytes() == by_cli.read_bytes()
