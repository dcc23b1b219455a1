"""Helpers for the service tests: building requests, collecting streams, comparing with the engine."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np
import xxhash

from weightgen.server.engine import BaseTensor, Engine, FanAxes, Initializer, VariableSpec
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

TIMEOUT = 60

REFERENCE_DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "xxh3_128": xxhash.xxh3_128_digest,
    "none": lambda data: b"",
}
"""Each digest algorithm from a library (hashlib, xxhash), never from the server's code."""


def reference_digest(algorithm: str, data: bytes | bytearray) -> bytes:
    """The digest TensorInfo.digest_algorithm `algorithm` gives `data`, by an independent library."""
    return REFERENCE_DIGESTS[algorithm](bytes(data))


@dataclass
class Received:
    """One variable as received: its info, bytes, digest and chunks."""

    info: pb.TensorInfo | None = None
    data: bytearray = field(default_factory=bytearray)
    digest: bytes = b""
    chunks: list[pb.TensorChunk] = field(default_factory=list)
    last_seen: bool = False

    @property
    def first_offset(self) -> int:
        return self.chunks[0].offset


def collect(chunks: Iterable[pb.TensorChunk]) -> dict[int, Received]:
    """Every variable's chunks, checking the stream's framing rules as they arrive: info on the first
    chunk only, chunks in contiguous offset order, last and digest on the final chunk only."""
    out: dict[int, Received] = {}
    for chunk in chunks:
        first = chunk.variable_index not in out
        got = out.setdefault(chunk.variable_index, Received())
        assert not got.last_seen, f"variable {chunk.variable_index}: a chunk after its last chunk"
        assert chunk.HasField("info") == first, f"variable {chunk.variable_index}: info must come on the first chunk"
        if first:
            got.info = chunk.info
        else:
            expected = got.first_offset + len(got.data)
            assert chunk.offset == expected, f"variable {chunk.variable_index}: offset {chunk.offset} != {expected}"
        got.chunks.append(chunk)
        got.data += chunk.data
        hashes = got.info.digest_algorithm != "none"
        where = f"variable {chunk.variable_index}"
        assert bool(chunk.digest) == (chunk.last and hashes), f"{where}: a digest on the last chunk only"
        if chunk.last:
            got.last_seen = True
            got.digest = chunk.digest
    for index, got in out.items():
        assert got.last_seen, f"variable {index}: no last chunk"
    return out


def fetch(stub, request: pb.MaterializeRequest, after_first: Callable[[], object] | None = None) -> dict[int, Received]:
    """Materialize `request` and collect it; checks every variable's byte count and digest.
    `after_first` is called once the first chunk has arrived (the stream is in progress)."""
    responses = stub.Materialize(request, timeout=TIMEOUT)
    if after_first is not None:
        first = next(responses)
        after_first()
        responses = itertools.chain([first], responses)
    received = collect(responses)
    assert sorted(received) == list(range(len(request.variables)))
    for index, got in received.items():
        resume = request.variables[index].resume_offset
        assert got.first_offset == resume
        assert resume + len(got.data) == got.info.byte_size, f"variable {index}: wrong byte count"
        if resume == 0:
            expected = reference_digest(got.info.digest_algorithm, got.data)
            assert got.digest == expected, f"variable {index}: {got.info.digest_algorithm} digest mismatch"
    return received


ECHO_CHARS = 64


def quoted(text: str) -> str:
    """How the server repeats a client's string in a message (docs: at most 64 characters, with the
    full length stated when cut), so a huge name cannot make a status undeliverable."""
    return repr(text) if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]!r}... ({len(text)} characters)"


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError that `call` raises (fails the test if it returns)."""
    try:
        result = call()
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an RpcError, got {result!r}")


def first_response_error(stub, request: pb.MaterializeRequest) -> grpc.RpcError:
    """The error of a Materialize whose very first response must already be an error (no data)."""
    return rpc_error(lambda: next(iter(stub.Materialize(request, timeout=TIMEOUT))))


def good_request(name: str = "ok") -> pb.MaterializeRequest:
    return pb.MaterializeRequest(
        seed=3,
        variables=[pb.VariableSpec(name=name, shape=[8, 4], initializer=pb.Initializer(he_uniform=pb.HeUniform()))],
    )


def assert_serves(stub) -> None:
    """The server still answers a good request completely."""
    got = fetch(stub, good_request())
    assert len(got[0].data) == 8 * 4 * 4


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Poll until `predicate()` holds (a deadline only against hanging, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# -- the same variable as the engine sees it -------------------------------------------------


def engine_initializer(message: pb.Initializer) -> Initializer:
    """The engine Initializer for a protobuf one (test-side translation, independent of the server's)."""
    kind = message.WhichOneof("kind")
    body = getattr(message, kind)
    params = {}
    for f, value in body.ListFields():
        if f.enum_type is not None:
            prefix = f.enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
            params[f.name] = f.enum_type.values_by_number[value].name.removeprefix(prefix).lower()
        elif f.message_type is not None:
            params[f.name] = BaseTensor(wire.dtype_name(value.dtype), tuple(value.shape), bytes(value.data))
        else:
            params[f.name] = value
    axes = FanAxes()
    if message.HasField("fan_axes"):
        a = message.fan_axes
        layout = {0: "channels_last", 1: "channels_last", 2: "channels_first"}[a.layout]
        axes = FanAxes(tuple(a.in_axes), tuple(a.out_axes), tuple(a.batch_axes), layout)
    return Initializer(kind, params, axes)


def engine_bytes(engine: Engine, variable: pb.VariableSpec, seed: int, dtype: int | None = None) -> bytes:
    """What the in-process engine generates for `variable` with `seed` (dtype UNSPECIFIED = float32)."""
    dtype = dtype or variable.dtype or pb.DTYPE_FLOAT32
    spec = VariableSpec(
        name=variable.name,
        shape=tuple(variable.shape),
        dtype=wire.dtype_name(dtype),
        initializer=engine_initializer(variable.initializer),
        slice=tuple((r.start, r.stop) for r in variable.slice),
    )
    array = engine.generate(spec, seed=variable.seed or seed)
    return np.ascontiguousarray(array).tobytes()


def var(name: str, shape, initializer: pb.Initializer | None = None, **kwargs) -> pb.VariableSpec:
    return pb.VariableSpec(name=name, shape=list(shape), initializer=initializer, **kwargs)


def init(**kind) -> pb.Initializer:
    """pb.Initializer(he=pb.He()) as init(he={}); parameters as a dict."""
    ((name, params),) = kind.items()
    field_ = pb.Initializer.DESCRIPTOR.fields_by_name[name]
    message_class = getattr(pb, field_.message_type.name)
    return pb.Initializer(**{name: message_class(**params)})


def metric(server, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, whatever order its labels come in (0 if absent)."""
    for line in server.metrics().splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part) if rest else {}
        if sample == name and {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0
