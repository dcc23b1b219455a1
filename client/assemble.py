"""From TensorChunks to tensors: reassembly by offset, running digests, and what a resume needs.

An `Assembler` follows one fetch (a batch of variables, over as many attempts as it takes). Each
chunk's bytes go to a `Sink` (memory buffers or a file) at their absolute offset; a running digest
per variable, of the algorithm its TensorInfo names (SHA-256 or XXH3-128), is checked against the
digest on its last chunk. When the server sends none ("none") and the caller needs a content
digest anyway (a file's manifest), the assembler computes `local_digest` itself. For every variable it knows the
contiguous prefix received, so a broken stream resumes with `resume_request`: only the unfinished
variables, each from the byte it stopped at, with the effective seed (and sequential position) the
server already reported, so the resumed bytes are the ones the first attempt would have sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .errors import DigestMismatchError, ProtocolError, ResumeError
from .specs import delivered_shape


@dataclass(frozen=True)
class Tensor:
    """A completed variable: its `array` (None when it went straight to a file), the server's
    `info` (effective seed, generator, resolved dtype, full shape, sequence index) and `digest`
    of the bytes, of `digest_algorithm` ("sha256", "xxh3_128"; "" with no digest): the server's,
    or the one computed here when the server sent none and the fetch needed one."""

    name: str
    array: np.ndarray | None
    info: pb.TensorInfo
    digest: bytes
    digest_algorithm: str = wire.DIGEST_ALGORITHM

    @property
    def seed(self) -> int:
        """The effective seed: the one to send to get these bytes again."""
        return self.info.seed


class Sink(Protocol):
    """Where a variable's bytes go. `key` is the variable's position in the caller's request.
    Calls for different keys may come from different threads; calls for one key never overlap."""

    def open(self, key: int, info: pb.TensorInfo) -> None: ...

    def write(self, key: int, offset: int, data: memoryview) -> None: ...

    def finish(self, key: int) -> np.ndarray | None: ...


ALIGNMENT = 64
"""Byte alignment of the buffers `MemorySink` allocates. XLA's CPU client adopts a host array
without copying only when it is 64-byte aligned (numpy's own large arrays are 16-byte aligned), so
`jax.device_put` of an aligned array on CPU is zero-copy (measured with jax 0.10.2): a
`materialize_tree` on CPU then holds the model once instead of twice."""


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 buffer of `nbytes` starting on an `ALIGNMENT`-byte boundary."""
    raw = np.empty(nbytes + ALIGNMENT - 1, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes]


def destination(name: str, value: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """`value` checked as where variable `name` (delivered `shape` and `dtype`) may be written in
    place, as raw bytes at their offsets: writable, C-contiguous, exactly the variable's bytes, and
    either of its dtype and shape, of a same-width integer dtype and its shape (bit patterns:
    bfloat16 as a torch tensor's ``view(torch.int16).numpy()``), or plain bytes (uint8, any shape).
    Anything else is a ValueError that names the variable and what is wrong: nothing is reshaped,
    cast or cut. Returns `value` itself."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    what = f"variable {name!r} ({list(shape)} {dtype.name}, {nbytes} bytes)"
    if not value.flags.writeable:
        raise ValueError(f"{what}: its destination is read-only; pass a writable array")
    if not value.flags.c_contiguous:
        raise ValueError(
            f"{what}: its destination is not C-contiguous (strides {value.strides}); pass a contiguous "
            "array (or fetch into np.empty and copy it there yourself)"
        )
    if value.nbytes != nbytes:
        raise ValueError(
            f"{what}: its destination holds {value.nbytes} bytes ({list(value.shape)} {value.dtype.name}), not {nbytes}"
        )
    if value.dtype == dtype or (value.dtype.kind in "iu" and value.dtype.itemsize == dtype.itemsize):
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{what}: its destination has shape {list(value.shape)}; nothing is reshaped, pass one of "
                f"shape {list(shape)} (or plain uint8 bytes)"
            )
    elif value.dtype != np.uint8:
        raise ValueError(
            f"{what}: its destination is {value.dtype.name} ({value.dtype.itemsize}-byte items), the server "
            f"delivers {dtype.name} ({dtype.itemsize}-byte items); nothing is cast, pass a {dtype.name} array"
        )
    return value


class MemorySink:
    """Each variable in one buffer in memory: the caller's destination for its key (`into`, arrays
    checked by `destination`), written in place, or else one allocated here (`aligned_empty`).
    `finish` hands out the destination itself when it is of the delivered dtype and shape, else a
    view of its memory (bit patterns, bytes) or of the allocated buffer as the delivered array.
    Writes land at absolute offsets, so the bytes a resumed stream sends again overwrite themselves."""

    def __init__(self, into: Mapping[int, np.ndarray] | None = None) -> None:
        self._into = dict(into or {})
        self._buffers: dict[int, tuple[np.ndarray, pb.TensorInfo]] = {}

    def open(self, key: int, info: pb.TensorInfo) -> None:
        if key in self._buffers:  # a resumed stream re-sends the info: keep the bytes we have
            return
        target = self._into.get(key)
        if target is None:
            buffer = aligned_empty(info.byte_size)
        elif target.nbytes != info.byte_size:  # the caller's checks made it the planned size
            raise ProtocolError(
                None,
                f"variable {info.name!r}: the server sends {info.byte_size} bytes, its destination has {target.nbytes}",
            )
        else:
            buffer = target.reshape(-1).view(np.uint8)  # contiguous: a view, never a copy
        self._buffers[key] = (buffer, info)

    def write(self, key: int, offset: int, data: memoryview) -> None:
        buffer, _ = self._buffers[key]
        buffer[offset : offset + len(data)] = np.frombuffer(data, np.uint8)

    def finish(self, key: int) -> np.ndarray:
        buffer, info = self._buffers.pop(key)
        dtype, shape = wire.numpy_dtype(info.dtype), delivered_shape(info)
        target = self._into.get(key)
        if target is not None and target.dtype == dtype and tuple(target.shape) == shape:
            return target
        return buffer.view(dtype).reshape(shape)


@dataclass
class _State:
    spec: pb.VariableSpec
    key: int
    info: pb.TensorInfo | None = None
    received: int = 0  # contiguous bytes from offset 0
    hasher: object | None = None
    algorithm: str = ""  # of `hasher`, or of the server's digest when nothing is hashed here
    done: bool = False


def _ranges(message: pb.VariableSpec | pb.TensorInfo) -> list[tuple[int, int]]:
    """A slice as (start, stop) pairs; [] when it is the whole tensor (as TensorInfo reports it)."""
    ranges = [(r.start, r.stop) for r in message.slice]
    return [] if ranges == [(0, d) for d in message.shape] else ranges


def _check_info(spec: pb.VariableSpec, info: pb.TensorInfo, verify: bool) -> None:
    where = f"variable {spec.name!r}"
    if info.name != spec.name:
        raise ProtocolError(None, f"{where}: its info names {info.name!r}")
    if info.dtype not in wire.DTYPES:
        raise ProtocolError(None, f"{where}: unknown dtype {info.dtype} in its info (is the server newer?)")
    if spec.dtype and info.dtype != spec.dtype:
        raise ProtocolError(None, f"{where}: asked for {pb.DType.Name(spec.dtype)}, got {pb.DType.Name(info.dtype)}")
    if list(info.shape) != list(spec.shape) or _ranges(info) != _ranges(spec):
        raise ProtocolError(None, f"{where}: its info has shape {list(info.shape)} and a different slice")
    expected = int(np.prod(delivered_shape(info), dtype=np.int64)) * wire.numpy_dtype(info.dtype).itemsize
    if info.byte_size != expected:
        raise ProtocolError(None, f"{where}: byte_size {info.byte_size}, its shape and dtype make {expected}")
    if verify and (info.digest_algorithm or wire.DIGEST_ALGORITHM) not in wire.DIGEST_SIZES:
        raise ProtocolError(None, f"{where}: unsupported digest algorithm {info.digest_algorithm!r}")


def _same_info(a: pb.TensorInfo, b: pb.TensorInfo) -> bool:
    return (a.byte_size, a.dtype, a.seed, a.generator, list(a.shape), a.digest_algorithm) == (
        b.byte_size,
        b.dtype,
        b.seed,
        b.generator,
        list(b.shape),
        b.digest_algorithm,
    ) and (a.HasField("sequence_index") == b.HasField("sequence_index") and a.sequence_index == b.sequence_index)


class Assembler:
    """The state of one fetch. `feed` each decoded chunk with the index of its variable in
    `specs`; it returns the completed Tensor on a variable's last chunk. `keys` are the sink's keys
    for `specs` (default: their positions). `on_bytes(n)` is told of every n new bytes received.
    `local_digest` (e.g. "xxh3_128"): computed here for a variable whose server sends no digest."""

    def __init__(
        self,
        specs: Sequence[pb.VariableSpec],
        sink: Sink,
        *,
        verify: bool = True,
        keys: Sequence[int] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        local_digest: str | None = None,
    ):
        keys = list(range(len(specs))) if keys is None else list(keys)
        self._states = [_State(spec, key) for spec, key in zip(specs, keys, strict=True)]
        self._sink = sink
        self._verify = verify
        self._local_digest = None if local_digest == "none" else local_digest
        self._on_bytes = on_bytes
        self.received = 0
        self._positions: dict[int, int] = {}  # sequential sessions: variable -> position (-1: none)

    @property
    def complete(self) -> bool:
        return all(s.done for s in self._states)

    @property
    def pending(self) -> list[int]:
        """Indexes (into `specs`) of the variables not yet complete."""
        return [i for i, s in enumerate(self._states) if not s.done]

    def info(self, index: int) -> pb.TensorInfo | None:
        return self._states[index].info

    def note_positions(self, positions: dict[int, int]) -> None:
        """Record the session positions the server reported for the batch's variables (by index)."""
        for index, position in positions.items():
            self._positions.setdefault(index, position)

    def feed(self, index: int, chunk: wire.Chunk) -> Tensor | None:
        if not 0 <= index < len(self._states):
            raise ProtocolError(None, f"chunk for variable index {index}, the request has {len(self._states)}")
        state = self._states[index]
        spec = state.spec
        if state.done:
            raise ProtocolError(None, f"variable {spec.name!r}: a chunk after its last one")
        if chunk.info is not None:
            if state.info is None:
                _check_info(spec, chunk.info, self._verify)
                state.info = chunk.info
                algorithm = chunk.info.digest_algorithm or wire.DIGEST_ALGORITHM
                if algorithm == "none":
                    state.algorithm = self._local_digest or ""
                    state.hasher = wire.new_digest(state.algorithm) if state.algorithm else None
                else:
                    state.algorithm = algorithm
                    state.hasher = wire.new_digest(algorithm) if self._verify else None
                self._sink.open(state.key, chunk.info)
            elif not _same_info(state.info, chunk.info):
                raise ProtocolError(None, f"variable {spec.name!r}: the resumed stream reports a different tensor")
        info = state.info
        if info is None:
            raise ProtocolError(None, f"variable {spec.name!r}: its first chunk carries no info")
        size = len(chunk.data)
        if chunk.offset != state.received:
            raise ProtocolError(
                None, f"variable {spec.name!r}: chunk at offset {chunk.offset}, expected {state.received}"
            )
        if state.received + size > info.byte_size:
            raise ProtocolError(None, f"variable {spec.name!r}: chunks run past its byte_size {info.byte_size}")
        if size:
            self._sink.write(state.key, chunk.offset, chunk.data)
            if state.hasher is not None:
                state.hasher.update(chunk.data)
            state.received += size
            self.received += size
            if self._on_bytes is not None:
                self._on_bytes(size)
        if not chunk.last:
            return None
        if state.received != info.byte_size:
            raise ProtocolError(
                None, f"variable {spec.name!r}: last chunk at {state.received} bytes of {info.byte_size}"
            )
        digest = chunk.digest
        if (info.digest_algorithm or wire.DIGEST_ALGORITHM) == "none":
            if chunk.digest:
                raise ProtocolError(None, f"variable {spec.name!r}: a digest although its algorithm is 'none'")
            digest = state.hasher.digest() if state.hasher is not None else b""
        elif state.hasher is not None:
            actual = state.hasher.digest()
            if chunk.digest != actual:
                raise DigestMismatchError(spec.name, chunk.digest, actual, algorithm=state.algorithm)
        state.done = True
        return Tensor(spec.name, self._sink.finish(state.key), info, digest, state.algorithm)

    def resume_request(
        self, original: pb.MaterializeRequest, *, sequential: bool
    ) -> tuple[pb.MaterializeRequest, list[int]]:
        """The request that fetches what is missing, and the indexes (into `specs`) of its variables.

        Each started variable resumes at its contiguous prefix, at the sequence position the server
        reported (sequential sessions: in its info, or for a variable that never started, in the
        stream's first chunk). A request with seed 0 resumes with the seed the server picked. A
        sequential session's variable whose position is unknown cannot resume unless nothing at all
        arrived (the request was refused before it started, or its first chunk was lost).

        The original's ``sequence_start`` is kept: when nothing arrived, the variables are asked for
        as before and must take the same positions; otherwise every variable that takes a position
        has an explicit ``sequence_index`` (and the others take none), so it shifts nothing."""
        request = pb.MaterializeRequest(
            session_id=original.session_id,
            seed=original.seed,
            chunk_bytes=original.chunk_bytes,
            digest_algorithm=original.digest_algorithm,
        )
        if original.HasField("sequence_start"):
            request.sequence_start = original.sequence_start
        if not request.session_id and not request.seed:
            request.seed = next((s.info.seed for s in self._states if s.info is not None and not s.spec.seed), 0)
        nothing_arrived = all(s.info is None for s in self._states)
        pending = self.pending
        for i in pending:
            state = self._states[i]
            spec = pb.VariableSpec()
            spec.CopyFrom(state.spec)
            if state.info is not None:
                spec.resume_offset = state.received
                if state.info.HasField("sequence_index"):
                    spec.sequence_index = state.info.sequence_index
            elif i in self._positions:
                if self._positions[i] >= 0:
                    spec.sequence_index = self._positions[i]
            elif sequential and not spec.seed and not nothing_arrived:
                raise ResumeError(
                    None,
                    f"variable {spec.name!r} had not started when the stream broke; its position in the "
                    "sequential session is unknown, so a retry could not give the values the stream would have",
                )
            request.variables.append(spec)
        return request, pending


__all__ = ["ALIGNMENT", "Assembler", "MemorySink", "Sink", "Tensor", "aligned_empty", "destination"]
