"""Safetensors files written as the bytes arrive, and the manifest that makes them auditable.

`SafetensorsWriter` lays the file out before the first byte: the header is computed from the specs
(dtype and delivered shape of every tensor), with room reserved for the manifest in
``__metadata__``; chunks are written at their offsets (``os.pwrite``) as they come, in any order and
from any thread, so the model is never held in memory. At the end the header is rewritten with the
final manifest, padded with spaces to the reserved length (the format allows trailing spaces), and
the file is renamed into place; a failed fetch leaves no file that looks complete.

The manifest (``__metadata__["weightgen"]``, JSON) records the request in protobuf JSON form, the
session's parameters if one was used, the server, the generator (determinism contract), the digest
algorithm (``digestAlgorithm``: "xxh3_128" by default; manifests without it are "sha256") and, per
variable, the effective seed, sequence position, byte size and digest: enough to reproduce step 0
and to check every tensor bit for bit later (``weightgen verify``). The digests are the server's,
verified by the client as the bytes arrived (docs/determinism.md, "Digests").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .errors import ProtocolError
from .specs import delivered_shape

SAFETENSORS_DTYPES: dict[int, str] = {
    pb.DTYPE_FLOAT32: "F32",
    pb.DTYPE_FLOAT64: "F64",
    pb.DTYPE_FLOAT16: "F16",
    pb.DTYPE_BFLOAT16: "BF16",
    pb.DTYPE_COMPLEX64: "C64",
    pb.DTYPE_INT8: "I8",
    pb.DTYPE_INT16: "I16",
    pb.DTYPE_INT32: "I32",
    pb.DTYPE_INT64: "I64",
    pb.DTYPE_UINT8: "U8",
    pb.DTYPE_UINT16: "U16",
    pb.DTYPE_UINT32: "U32",
    pb.DTYPE_UINT64: "U64",
    pb.DTYPE_BOOL: "BOOL",
}
"""DType -> safetensors dtype name. complex128 has none: the safetensors format (0.8) knows only C64."""
BY_SAFETENSORS = {name: value for value, name in SAFETENSORS_DTYPES.items()}

MANIFEST_KEY = "weightgen"
MANIFEST_FORMAT = "weightgen-manifest/1"
_MAX_SEED = str((1 << 64) - 1)
_MAX_SEQUENCE = (1 << 32) - 1


def safetensors_dtype(dtype: int) -> str:
    """The safetensors name of a DType; ValueError for complex128, which safetensors cannot store."""
    if dtype == pb.DTYPE_COMPLEX128:
        raise ValueError(
            "safetensors has no complex128 dtype (only C64): fetch complex128 variables in memory "
            "(Client.materialize) or ask for complex64"
        )
    return SAFETENSORS_DTYPES[dtype]


# -- the manifest ------------------------------------------------------------------------------


@dataclass
class ManifestVariable:
    """What the manifest says about one variable."""

    name: str
    dtype: str  # the resolved dtype's engine name, e.g. "bfloat16"
    shape: list[int]  # the full tensor's shape
    slice: list[list[int]]  # [[start, stop], ...] per axis; [] for the whole tensor
    byte_size: int
    seed: int  # the effective seed
    digest: str  # the digest of the bytes (Manifest.digest_algorithm), hex
    sequence_index: int | None = None  # position in a sequential session
    zero_reason: str = ""  # ZeroReason name when a random initializer gave zeros
    zero_rows: list[int] = field(default_factory=list)
    """Rows (indices along axis 0 of the full tensor) the client set to zero after the fetch, as a
    model's own init zeroes an Embedding's padding row; `digest` is still that of the server's bytes."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": self.shape,
            "slice": self.slice,
            "byteSize": self.byte_size,
            "seed": str(self.seed),
            "digest": self.digest,
        }
        if self.sequence_index is not None:
            out["sequenceIndex"] = self.sequence_index
        if self.zero_reason:
            out["zeroReason"] = self.zero_reason
        if self.zero_rows:
            out["zeroRows"] = self.zero_rows
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestVariable:
        return cls(
            name=data["name"],
            dtype=data["dtype"],
            shape=list(data["shape"]),
            slice=[list(r) for r in data.get("slice", [])],
            byte_size=int(data["byteSize"]),
            seed=int(data["seed"]),
            digest=data["digest"],
            sequence_index=data.get("sequenceIndex"),
            zero_reason=data.get("zeroReason", ""),
            zero_rows=[int(r) for r in data.get("zeroRows", [])],
        )

    @classmethod
    def from_info(cls, info: pb.TensorInfo, digest: bytes) -> ManifestVariable:
        return cls(
            name=info.name,
            dtype=wire.dtype_name(info.dtype),
            shape=list(info.shape),
            slice=[[r.start, r.stop] for r in info.slice],
            byte_size=info.byte_size,
            seed=info.seed,
            digest=digest.hex(),
            sequence_index=info.sequence_index if info.HasField("sequence_index") else None,
            zero_reason=pb.ZeroReason.Name(info.zero_reason) if info.zero_reason else "",
        )


@dataclass
class Manifest:
    """A fetch's record: the request, the session it ran in (as the OpenSessionRequest that makes
    an equivalent one; None without a session), the server, the generator, each variable in
    request order, and, when asked for, when it was made and how long the fetch took (`created` is ""
    otherwise: the file is then a pure function of the request)."""

    request: pb.MaterializeRequest
    server: str
    generator: str = ""
    variables: list[ManifestVariable] = field(default_factory=list)
    session: pb.OpenSessionRequest | None = None
    created: str = ""
    seconds: float = 0.0
    digest_algorithm: str = wire.FAST_DIGEST  # of every variable's digest

    @property
    def total_bytes(self) -> int:
        return sum(v.byte_size for v in self.variables)

    @property
    def seeds(self) -> list[int]:
        """The distinct effective seeds, in order of first use."""
        return list(dict.fromkeys(v.seed for v in self.variables))

    def variable(self, name: str) -> ManifestVariable:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "generator": self.generator,
            "server": self.server,
            # When and how long: only if asked for (materialize_to_file(record_time=True)), so that
            # two identical fetches write byte-identical files.
            **({"created": self.created, "seconds": round(self.seconds, 3)} if self.created else {}),
            "totalBytes": self.total_bytes,
            "digestAlgorithm": self.digest_algorithm,
            "request": json_format.MessageToDict(self.request),
        }
        if self.session is not None:
            out["session"] = json_format.MessageToDict(self.session)
        out["variables"] = [v.to_json() for v in self.variables]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a weightgen manifest (format {data.get('format')!r}, want {MANIFEST_FORMAT!r})")
        algorithm = data.get("digestAlgorithm", "sha256")
        if algorithm not in wire.DIGEST_SIZES or algorithm == "none":
            raise ValueError(f"a weightgen manifest with an unknown digest algorithm {algorithm!r}")
        session = data.get("session")
        return cls(
            request=json_format.ParseDict(data["request"], pb.MaterializeRequest()),
            server=data.get("server", ""),
            generator=data.get("generator", ""),
            variables=[ManifestVariable.from_json(v) for v in data.get("variables", [])],
            session=json_format.ParseDict(session, pb.OpenSessionRequest()) if session is not None else None,
            created=data.get("created", ""),
            seconds=float(data.get("seconds", 0.0)),
            digest_algorithm=algorithm,  # before there was a choice: SHA-256
        )

    def placeholder(
        self, dtypes: Sequence[int], zero_rows: Mapping[str, Sequence[int]] | None = None, *, timed: bool = False
    ) -> Manifest:
        """This manifest with every variable at its widest values (what a header must make room for)."""
        sequential = self.session is not None and self.session.rng_mode == pb.RNG_MODE_SEQUENTIAL
        variables = []
        for spec, dtype in zip(self.request.variables, dtypes, strict=True):
            variables.append(
                ManifestVariable(
                    name=spec.name,
                    dtype=wire.dtype_name(dtype),
                    shape=list(spec.shape),
                    slice=[[r.start, r.stop] for r in spec.slice],
                    byte_size=0,
                    seed=int(_MAX_SEED),
                    digest="f" * 64,
                    sequence_index=_MAX_SEQUENCE if sequential else None,
                    zero_reason=max(pb.ZeroReason.keys(), key=len),
                    zero_rows=list((zero_rows or {}).get(spec.name, [])),
                )
            )
        return Manifest(
            request=self.request,
            server=self.server,
            generator="g" * 64,
            variables=variables,
            session=self.session,
            created="0000-00-00T00:00:00.000000Z" if timed else "",
            seconds=9_999_999.999 if timed else 0.0,
            digest_algorithm=max(wire.DIGEST_BY_NAME, key=len),
        )


def check_zero_rows(
    specs: Sequence[pb.VariableSpec], zero_rows: Mapping[str, Sequence[int]] | None
) -> dict[str, list[int]]:
    """`zero_rows` (``{variable name: [row, ...]}``, rows of the full tensor's axis 0) checked
    against the request's variables, sorted and without repeats; ValueError naming the variable."""
    if not zero_rows:
        return {}
    if not isinstance(zero_rows, Mapping):
        raise ValueError(f"zero rows: expected {{variable name: [row, ...]}}, got {type(zero_rows).__name__}")
    shapes = {spec.name: list(spec.shape) for spec in specs}
    out: dict[str, list[int]] = {}
    for name, rows in zero_rows.items():
        if name not in shapes:
            raise ValueError(f"zero rows: {name!r} is not a variable of the request")
        shape = shapes[name]
        if not shape:
            raise ValueError(f"variable {name!r}: zero rows need a tensor of rank >= 1, it is a scalar")
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            raise ValueError(f"variable {name!r}: zero rows must be a list of row indices, got {rows!r}")
        for row in rows:
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= row < shape[0]:
                raise ValueError(f"variable {name!r}: zero row {row!r} is not a row index in [0, {shape[0]})")
        if rows:
            out[name] = sorted({int(r) for r in rows})
    return out


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileTensor:
    """One tensor's place in a safetensors file."""

    name: str
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute file offset of its first byte
    end: int

    @property
    def numpy_dtype(self) -> np.dtype:
        if self.dtype not in BY_SAFETENSORS:
            raise ValueError(f"tensor {self.name!r}: weightgen cannot read safetensors dtype {self.dtype}")
        return wire.numpy_dtype(BY_SAFETENSORS[self.dtype])


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], list[FileTensor]]:
    """A safetensors file's metadata and tensors (in file order), from its header alone."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    start = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    tensors = [
        FileTensor(name, v["dtype"], tuple(v["shape"]), start + v["data_offsets"][0], start + v["data_offsets"][1])
        for name, v in header.items()
    ]
    return metadata, sorted(tensors, key=lambda t: t.begin)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The weightgen manifest of a safetensors file (ValueError if it has none)."""
    metadata, _ = read_header(path)
    if MANIFEST_KEY not in metadata:
        raise ValueError(f"{path}: no weightgen manifest in its metadata (not written by weightgen?)")
    return Manifest.from_json(metadata[MANIFEST_KEY])


def tensor_view(path: str | os.PathLike, tensor: FileTensor) -> np.ndarray:
    """A read-only memory map of one tensor, shaped; its bytes stay on disk until touched."""
    count = math.prod(tensor.shape)
    if count == 0:
        return np.zeros(tensor.shape, tensor.numpy_dtype)
    return np.memmap(path, dtype=tensor.numpy_dtype, mode="r", offset=tensor.begin, shape=tensor.shape)


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of one tensor, computed in float64 (complex: over both parts)."""

    count: int
    min: float
    max: float
    mean: float
    std: float


def tensor_stats(path: str | os.PathLike, tensor: FileTensor, block_bytes: int = 16 << 20) -> TensorStats:
    """Statistics of one tensor, streaming over the file a block at a time (memory stays flat)."""
    view = tensor_view(path, tensor).reshape(-1)
    if np.iscomplexobj(view):
        view = view.view(np.float32 if view.dtype == np.complex64 else np.float64)
    n, mean, m2 = 0, 0.0, 0.0
    low, high = math.inf, -math.inf
    step = max(1, block_bytes // max(1, view.dtype.itemsize))
    for at in range(0, view.size, step):
        block = np.asarray(view[at : at + step]).astype(np.float64)
        k = block.size
        block_mean = float(block.mean())
        block_m2 = float(((block - block_mean) ** 2).sum())
        delta = block_mean - mean
        total = n + k
        mean += delta * k / total
        m2 += block_m2 + delta * delta * n * k / total
        n = total
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if n == 0:
        return TensorStats(0, math.nan, math.nan, math.nan, math.nan)
    return TensorStats(n, low, high, mean, math.sqrt(m2 / n))


# -- writing -----------------------------------------------------------------------------------


def _align(n: int, to: int = 8) -> int:
    return -(-n // to) * to


def _header_bytes(metadata: Mapping[str, str], entries: Sequence[tuple[str, str, tuple[int, ...], int, int]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    for name, dtype, shape, begin, end in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    return json.dumps(header, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    begin: int  # offset in the data section
    size: int


class SafetensorsWriter:
    """A `Sink` that writes each variable straight into its place in a safetensors file.

    `dtypes` are the resolved dtypes of `specs` (an unspecified one takes the session's default).
    Tensors are laid out by decreasing item size, so each starts aligned to its element size.
    Call `commit(metadata)` when every variable is complete, or `abort()`."""

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Sequence[pb.VariableSpec],
        dtypes: Sequence[int],
        *,
        metadata_reserve: Mapping[str, str],
    ):
        self.path = Path(path)
        self._partial = self.path.with_name(self.path.name + ".partial")
        for spec, dtype in zip(specs, dtypes, strict=True):
            try:
                safetensors_dtype(dtype)
            except ValueError as e:
                raise ValueError(f"variable {spec.name!r}: {e}") from None
        order = sorted(range(len(specs)), key=lambda i: (-wire.numpy_dtype(dtypes[i]).itemsize, i))
        entries: dict[int, _Entry] = {}
        at = 0
        for i in order:
            shape = delivered_shape(specs[i])
            size = (
                math.prod(max(0, d) for d in shape) * wire.numpy_dtype(dtypes[i]).itemsize
            )  # the server refuses d < 0
            entries[i] = _Entry(specs[i].name, dtypes[i], shape, at, size)
            at += size
        self._entries = entries
        self._order = order
        self.data_bytes = at
        reserve = len(_header_bytes(metadata_reserve, self._header_entries()))
        self._header_size = _align(reserve + 256 + reserve // 50)
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self._partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, 8 + self._header_size + self.data_bytes)
        self._write_header({})

    def _header_entries(self) -> list[tuple[str, str, tuple[int, ...], int, int]]:
        return [
            (e.name, SAFETENSORS_DTYPES[e.dtype], e.shape, e.begin, e.begin + e.size)
            for e in (self._entries[i] for i in self._order)
        ]

    def _write_header(self, metadata: Mapping[str, str]) -> bool:
        """Write the header padded to the reserved size; False if it does not fit."""
        header = _header_bytes(metadata, self._header_entries())
        if len(header) > self._header_size:
            return False
        padded = struct.pack("<Q", self._header_size) + header + b" " * (self._header_size - len(header))
        self._pwrite(padded, 0)
        return True

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    # -- the Sink protocol --

    def open(self, key: int, info: pb.TensorInfo) -> None:
        entry = self._entries[key]
        if info.dtype != entry.dtype or delivered_shape(info) != entry.shape:
            raise ProtocolError(
                None,
                f"variable {entry.name!r}: the server delivers {pb.DType.Name(info.dtype)} "
                f"{list(delivered_shape(info))}, the file was laid out for {pb.DType.Name(entry.dtype)} "
                f"{list(entry.shape)}",
            )

    def write(self, key: int, offset: int, data: memoryview) -> None:
        self._pwrite(data, 8 + self._header_size + self._entries[key].begin + offset)

    def finish(self, key: int) -> None:
        return None

    def zero_rows(self, key: int, rows: Sequence[int], start: int) -> None:
        """Set rows of variable `key` to zero: `rows` index axis 0 of the full tensor, whose rows
        from `start` on the file holds (a slice); rows outside what it holds are skipped."""
        entry = self._entries[key]
        if not entry.shape or entry.size == 0:
            return
        row_bytes = entry.size // entry.shape[0]
        for row in rows:
            if start <= row < start + entry.shape[0]:
                self._pwrite(bytes(row_bytes), 8 + self._header_size + entry.begin + (row - start) * row_bytes)

    # -- completion --

    def commit(self, metadata: Mapping[str, str]) -> Path:
        """Write the final header and move the file into place."""
        with self._lock:
            if not self._write_header(metadata):
                self._relocate(metadata)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self._partial, self.path)
        return self.path

    def _relocate(self, metadata: Mapping[str, str]) -> None:
        """The metadata outgrew the reserved header (an unexpectedly long generator or server
        string): copy the data behind a bigger header."""
        old_start = 8 + self._header_size
        self._header_size = _align(len(_header_bytes(metadata, self._header_entries())) + 256)
        moved = self._partial.with_name(self._partial.name + ".moved")
        with open(self._partial, "rb") as src, open(moved, "wb") as dst:
            dst.truncate(8 + self._header_size + self.data_bytes)
            src.seek(old_start)
            dst.seek(8 + self._header_size)
            shutil.copyfileobj(src, dst, 16 << 20)
        os.close(self._fd)
        os.replace(moved, self._partial)
        self._fd = os.open(self._partial, os.O_RDWR)
        if not self._write_header(metadata):  # pragma: no cover - sized to fit just above
            raise RuntimeError("safetensors header does not fit after relocation")

    def abort(self) -> None:
        """Close and delete the partial file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self._partial.unlink(missing_ok=True)


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[FileTensor, np.ndarray]]:
    """Every tensor of a safetensors file with a memory-mapped view of it, in file order."""
    _, tensors = read_header(path)
    for tensor in tensors:
        yield tensor, tensor_view(path, tensor)


__all__ = [
    "SAFETENSORS_DTYPES",
    "FileTensor",
    "Manifest",
    "ManifestVariable",
    "SafetensorsWriter",
    "TensorStats",
    "check_zero_rows",
    "iter_tensors",
    "read_header",
    "read_manifest",
    "safetensors_dtype",
    "tensor_stats",
    "tensor_view",
]
