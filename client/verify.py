"""Auditing a file against the server: re-fetch every tensor its manifest records, compare bit for bit.

The manifest holds each variable's effective seed (and sequential position), so the reproduction
asks for exactly those bytes: by-name variables with their seed as a per-variable override (the
same key derivation), sequential ones at their recorded position in a fresh session with the same
seed. Each tensor is compared three ways: the server's digest against the manifest's, the file's
bytes against the re-fetched ones, and (so a corrupted file is named even when bytes are equal
elsewhere) the file's digest against the manifest, with the manifest's algorithm (the re-fetch asks
the server for the same one). Rows the manifest says the client zeroed after the fetch
(``zeroRows``: Embedding padding rows) are zeroed in the fresh tensor before the file is compared
with it, and such a tensor's file digest is not expected to equal the server's digest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .client import Client
from .files import BY_SAFETENSORS, Manifest, read_header, read_manifest, tensor_view


@dataclass(frozen=True)
class Check:
    """The verdict on one variable: `problems` is empty when it matched in every way."""

    name: str
    byte_size: int
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def reproduction(manifest: Manifest) -> tuple[pb.MaterializeRequest, pb.OpenSessionRequest | None]:
    """The request that re-fetches every variable of `manifest`, and the session it needs (only
    for variables at a sequential position; None otherwise)."""
    session = manifest.session
    request = pb.MaterializeRequest(
        chunk_bytes=manifest.request.chunk_bytes, digest_algorithm=wire.digest_enum(manifest.digest_algorithm)
    )
    needs_session = False
    for spec, entry in zip(manifest.request.variables, manifest.variables, strict=True):
        if spec.name != entry.name:
            raise ValueError(f"manifest variables out of order: {spec.name!r} != {entry.name!r}")
        again = pb.VariableSpec()
        again.CopyFrom(spec)
        again.ClearField("resume_offset")
        again.ClearField("sequence_index")
        again.dtype = wire.BY_NAME[entry.dtype]
        if not again.HasField("initializer") and session is not None and session.HasField("default_initializer"):
            again.initializer.CopyFrom(session.default_initializer)
        if entry.sequence_index is not None:
            again.seed = 0
            again.sequence_index = entry.sequence_index
            needs_session = True
        else:
            again.seed = entry.seed
        request.variables.append(again)
    if needs_session and session is None:
        raise ValueError("the manifest has sequential positions but no session to reproduce them in")
    return request, session if needs_session else None


def _file_digest(view: np.ndarray, algorithm: str, block: int = 16 << 20) -> bytes:
    flat = view.reshape(-1).view(np.uint8) if view.size else np.zeros(0, np.uint8)
    digest = wire.new_digest(algorithm)
    for at in range(0, flat.size, block):
        digest.update(flat[at : at + block])
    return digest.digest()


def verify_file(
    client: Client, path: str | os.PathLike, *, on_check: Callable[[Check], None] | None = None
) -> list[Check]:
    """Check every tensor of a weightgen safetensors file against a fresh fetch, one tensor in
    memory at a time. Returns one Check per manifest variable (and one per unexpected tensor)."""
    manifest = read_manifest(path)
    _, tensors = read_header(path)
    in_file = {t.name: t for t in tensors}
    entries = {v.name: v for v in manifest.variables}
    request, session_request = reproduction(manifest)
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        if on_check is not None:
            on_check(check)

    session = None
    if session_request is not None:
        session = client.open_session(
            seed=session_request.seed,
            rng_mode=session_request.rng_mode,
            default_initializer=session_request.default_initializer
            if session_request.HasField("default_initializer")
            else None,
            default_dtype=session_request.default_dtype or None,
        )
    try:
        for tensor in client.stream(request, session=session):
            entry = entries[tensor.name]
            problems = []
            if manifest.generator and tensor.info.generator not in manifest.generator.split(","):
                # Another contract version may give other values (docs/determinism.md, "Version history").
                problems.append(
                    f"made under contract {manifest.generator}, the server speaks {tensor.info.generator}: "
                    "values may differ by design; verify against a server of the file's contract"
                )
            if tensor.digest.hex() != entry.digest:
                problems.append(f"server digest {tensor.digest.hex()[:16]}... != manifest {entry.digest[:16]}...")
            stored = in_file.pop(tensor.name, None)
            if stored is None:
                problems.append("missing from the file")
            elif BY_SAFETENSORS.get(stored.dtype) != tensor.info.dtype or stored.shape != tensor.array.shape:
                problems.append(f"file has {stored.dtype} {list(stored.shape)}, the server {list(tensor.array.shape)}")
            else:
                view = tensor_view(path, stored)
                expected = np.array(tensor.array, copy=True) if entry.zero_rows else tensor.array
                start = entry.slice[0][0] if entry.slice else 0
                for row in entry.zero_rows:
                    if start <= row < start + expected.shape[0]:
                        expected[row - start] = 0
                fresh = np.ascontiguousarray(expected).reshape(-1).view(np.uint8)
                on_disk = np.asarray(view).reshape(-1).view(np.uint8)
                if not np.array_equal(fresh, on_disk):
                    differing = int(np.count_nonzero(fresh != on_disk))
                    what = "the server's with the manifest's zero rows" if entry.zero_rows else "the server's"
                    problems.append(f"{differing} of {fresh.size} bytes in the file differ from {what}")
                if not entry.zero_rows and _file_digest(view, manifest.digest_algorithm).hex() != entry.digest:
                    problems.append(f"the file's {manifest.digest_algorithm} differs from the manifest's digest")
            record(Check(tensor.name, entry.byte_size, tuple(problems)))
    finally:
        if session is not None:
            session.close()
    for name in in_file:
        record(Check(name, 0, ("in the file but not in its manifest",)))
    return checks


__all__ = ["Check", "reproduction", "verify_file"]
