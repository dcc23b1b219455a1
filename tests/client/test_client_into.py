"""Client.materialize_into against a real server: the bytes go into the caller's own buffers, the
same bytes `materialize` gives, and a destination that cannot take them is refused before a request."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from client_helpers import same_bytes
from faultwire import Faults
from service.helpers import wait_for

from weightgen.client import Client, Variable, errors
from weightgen.client.assemble import ALIGNMENT

SENTINEL = 0xA5
VARIABLES = [
    Variable("kernel", (96, 64), "he_normal"),
    Variable("emb", (40, 24), "random_uniform(min=-1, max=1)", dtype="bfloat16"),
    Variable("rot", (16, 8), "random_normal", dtype="complex64"),
    Variable("quant", (33, 7), "random_uniform(min=-100, max=100)", dtype="int8"),
    Variable("mask", (5, 3), "ones", dtype="bool"),
    Variable("wide", (12, 10), "glorot_uniform", dtype="float64"),
    Variable("half", (64,), "random_normal", dtype="float16"),
    Variable("shard", (64, 48), "lecun_normal", slice=[(16, 48), (8, 40)]),
    Variable("empty", (0, 7), "he_normal"),
    Variable("empty_slice", (9, 4), "zeros", slice=[(3, 3), (0, 4)]),
]


def _materialize_calls(server) -> float:
    """Materialize calls the server has finished, whatever their status."""
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith("weightgen_requests_total{") and 'method="Materialize"' in line:
            total += float(line.rpartition(" ")[2])
    return total


def _destinations(reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An empty buffer like each reference array, every byte a sentinel (so a byte the fetch did not
    write shows in the comparison)."""
    out = {}
    for name, array in reference.items():
        buffer = np.empty_like(array)
        buffer.reshape(-1).view(np.uint8)[:] = SENTINEL
        out[name] = buffer
    return out


def test_fills_the_given_buffers_with_the_bytes_of_materialize(client):
    reference = client.materialize(VARIABLES, seed=77)
    out = _destinations(reference)
    pointers = {name: array.ctypes.data for name, array in out.items()}
    tensors = client.materialize_into(VARIABLES, out, seed=77)
    assert list(tensors) == [v.name for v in VARIABLES]
    for name, array in reference.items():
        tensor = tensors[name]
        assert tensor.array is out[name], name  # the very object passed, not a copy of it
        assert out[name].ctypes.data == pointers[name]
        assert same_bytes(out[name], array), name
        assert tensor.info.seed == 77 and len(tensor.digest) == 16
    assert reference["emb"].dtype == ml_dtypes.bfloat16 and out["shard"].shape == (32, 32)
    assert out["empty"].size == 0 and out["empty_slice"].shape == (0, 4)


def test_positions_sequences_bit_patterns_and_bytes(client):
    variables = VARIABLES[:3]
    reference = client.materialize(variables, seed=5)
    kernel = np.full((96, 64), np.nan, np.float32)
    emb_bits = np.zeros((40, 24), np.uint16)  # bfloat16 as bit patterns, as torch hands them to numpy
    rot_bytes = bytearray(16 * 8 * 8)  # any writable buffer: plain bytes
    tensors = client.materialize_into(variables, [kernel, emb_bits, rot_bytes], seed=5)
    assert same_bytes(kernel, reference["kernel"])
    assert same_bytes(emb_bits.view(ml_dtypes.bfloat16), reference["emb"])
    assert bytes(rot_bytes) == reference["rot"].tobytes()
    # the Tensors are typed views of the same memory
    assert np.shares_memory(tensors["emb"].array, emb_bits) and tensors["emb"].array.dtype == ml_dtypes.bfloat16
    assert tensors["rot"].array.dtype == np.complex64 and tensors["rot"].array.shape == (16, 8)
    by_position = {0: np.empty((96, 64), np.float32), "emb": np.empty((40, 24), ml_dtypes.bfloat16), 2: rot_bytes}
    client.materialize_into(variables, by_position, seed=5)
    assert same_bytes(by_position[0], reference["kernel"])


def test_streams_and_a_session(server, client):
    variables = [Variable(f"layer{i}", (128, 96 + i), "he_uniform") for i in range(6)]
    with client.open_session(seed=31, default_dtype="bfloat16") as session:
        reference = session.materialize(variables)
        out = {name: np.empty_like(array) for name, array in reference.items()}
        session.materialize_into(variables, out, streams=3)
    assert all(same_bytes(out[name], array) for name, array in reference.items())
    assert all(array.dtype == ml_dtypes.bfloat16 for array in out.values())


def test_aligned_buffers_of_materialize(client):
    """What `materialize` allocates starts on a 64-byte boundary (jax.device_put adopts it on CPU)."""
    arrays = client.materialize(VARIABLES[:4], seed=3)
    assert all(a.ctypes.data % ALIGNMENT == 0 for a in arrays.values())


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ({"w": np.empty((8, 5), np.float32), "b": np.empty(4, np.float32)}, r"'w' .* holds 160 bytes .*not 128"),
        ({"w": np.empty((8, 4), np.float64)[:, :2].copy(), "b": np.empty(4, np.float32)}, r"'w'.*8-byte items.*4-byte"),
        (
            {"w": np.empty((4, 8), np.float32), "b": np.empty(4, np.float32)},
            r"'w'.*\[4, 8\]; nothing is reshaped",
        ),
        ({"w": np.empty((8, 4), np.int32), "b": np.empty(4, np.float16)}, r"'b' .* holds 8 bytes .*not 16"),
        ({"w": np.empty((8, 8), np.float32)[:, ::2], "b": np.empty(4, np.float32)}, r"'w'.*not C-contiguous"),
        ({"w": np.empty((8, 4), np.float32), "b": np.frombuffer(bytes(16), np.float32)}, r"'b'.*read-only"),
        ({"w": np.empty((8, 4), np.float32)}, r"no destination for 'b'"),
        ({"w": np.empty((8, 4), np.float32), "b": np.empty(4, np.float32), "c": np.empty(1)}, r"out\['c'\]"),
        ({"w": np.empty((8, 4), np.float32), "b": np.empty(4, np.float32), 0: np.empty((8, 4))}, r"two destinations"),
    ],
    ids=["size", "itemsize", "shape", "b-size", "strided", "read-only", "missing", "unknown", "twice"],
)
def test_a_destination_that_cannot_take_the_bytes_is_refused_before_any_request(server, client, out, message):
    variables = [Variable("w", (8, 4), "he_normal"), Variable("b", (4,), "zeros")]
    before = _materialize_calls(server)
    with pytest.raises(ValueError, match=message):
        client.materialize_into(variables, out, seed=1)
    assert _materialize_calls(server) == before
    # and the counter does count: a good call moves it
    client.materialize_into(variables, {"w": np.empty((8, 4), np.float32), "b": np.empty(4, np.float32)}, seed=1)
    wait_for(lambda: _materialize_calls(server) == before + 1, "the good call to be counted")


def test_a_float_destination_for_an_int_variable_is_not_reinterpreted(client):
    with pytest.raises(ValueError, match=r"'q'.*destination is float32 .*server delivers int32.*nothing is cast"):
        client.materialize_into([Variable("q", (4,), "ones", dtype="int32")], [np.empty(4, np.float32)], seed=1)


def test_overlapping_destinations_and_unknown_session_dtype_are_refused(server, client):
    buffer = np.empty(12, np.float32)
    before = _materialize_calls(server)
    variables = [Variable("a", (8,), "ones"), Variable("b", (8,), "zeros")]
    with pytest.raises(ValueError, match="destinations of 'a' and 'b' overlap"):
        client.materialize_into(variables, [buffer[:8], buffer[4:]], seed=1)
    with client.open_session(seed=4, default_dtype="float16") as session:
        with pytest.raises(ValueError, match="'a' names no dtype and the session is given by its id"):
            client.materialize_into(variables, [np.empty(8, np.float16)] * 2, session=session.id)
        with pytest.raises(ValueError, match=r"'a' .*float16.*holds 32 bytes"):  # the session's dtype resolves
            session.materialize_into(variables, [np.empty(8, np.float32), np.empty(8, np.float32)])
    assert _materialize_calls(server) == before
    with pytest.raises(TypeError, match="writable buffer; got list"):
        client.materialize_into(variables, [[0.0] * 8, np.empty(8, np.float32)], seed=1)


def test_a_resumed_stream_ends_identical_in_the_given_buffer(server):
    variables = [Variable("first", (128, 128), "he"), Variable("second", (256, 512), "random_uniform(min=-3, max=3)")]
    cuts = []

    def cut_once(attempt, chunk):
        if attempt == 0 and chunk.variable_index == 1 and chunk.offset >= 3 * (64 << 10):
            cuts.append(chunk.offset)
            return None
        return chunk

    with Client(server.address, chunk_bytes=64 << 10) as plain:
        reference = plain.materialize(variables, seed=21)
    with Client(server.address, chunk_bytes=64 << 10, interceptors=[Faults(cut_once)]) as client:
        client.backoff = 0.01
        out = {"first": np.empty((128, 128), np.float32), "second": np.full((256, 512), np.nan, np.float32)}
        client.materialize_into(variables, out, seed=21)
    assert cuts, "the stream was not cut"
    assert all(same_bytes(out[name], reference[name]) for name in reference)


def test_a_failed_fetch_raises_and_leaves_the_caller_its_buffer(server):
    """A digest that does not match still raises (verification is not skipped for in-place writes)."""

    def corrupt(attempt, chunk):
        if chunk.last and chunk.digest:
            from dataclasses import replace

            return replace(chunk, digest=bytes(len(chunk.digest)))
        return chunk

    with Client(server.address, interceptors=[Faults(corrupt)], retries=0) as client:
        out = [np.empty((16, 16), np.float32)]
        with pytest.raises(errors.DigestMismatchError):
            client.materialize_into([Variable("w", (16, 16), "he_normal")], out, seed=2)


def test_a_cpu_torch_tensor_is_a_destination(client):
    torch = pytest.importorskip("torch")
    variables = [Variable("w", (32, 16), "he_normal"), Variable("e", (10, 8), "random_normal", dtype="bfloat16")]
    reference = client.materialize(variables, seed=9)
    weight = torch.nn.Parameter(torch.empty(32, 16))  # requires grad: still written in place
    emb = torch.empty(10, 8, dtype=torch.bfloat16)
    pointers = (weight.data_ptr(), emb.data_ptr())
    client.materialize_into(variables, {"w": weight, "e": emb}, seed=9)
    assert (weight.data_ptr(), emb.data_ptr()) == pointers
    assert same_bytes(weight.detach().numpy(), reference["w"])
    assert same_bytes(emb.view(torch.int16).numpy().view(ml_dtypes.bfloat16), reference["e"])
    with pytest.raises(ValueError, match="not host memory numpy can write in place"):
        client.materialize_into(variables[:1], [torch.empty(16, 32).t()], seed=9)
