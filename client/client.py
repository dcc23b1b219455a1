"""`Client`: one call from variable specs to arrays, and the streaming, file and session forms.

    with Client("localhost:50051") as client:
        arrays = client.materialize([Variable("w", (784, 256), "he_normal")], seed=42)
        for tensor in client.stream(variables, seed=42):      # each tensor as soon as it completes
            ...
        manifest = client.materialize_to_file(variables, "model.safetensors", seed=42)
        with client.open_session(seed=7, rng_mode="sequential") as session:
            arrays = session.materialize(variables)

Materialize responses take the fast path: the stream's messages arrive as bytes (identity
deserializer) and `weightgen.v1.wire.decode_chunk` reads them without copying the data. Every
variable's digest is verified (``verify=False`` skips it). A stream broken by the transport
(UNAVAILABLE, INTERNAL, UNKNOWN, or DEADLINE_EXCEEDED after progress) resumes where it stopped:
only unfinished variables are asked for again, from the first missing byte, with the seed and
sequence position the server reported, so the result is the bytes an unbroken stream would give.
"""

from __future__ import annotations

import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc as pb_grpc
from weightgen.v1 import wire

from . import errors
from .assemble import Assembler, MemorySink, Sink, Tensor
from .balance import balance
from .files import MANIFEST_KEY, Manifest, ManifestVariable, SafetensorsWriter
from .specs import InitializerLike, VariableLike, dtype_value, enum_value, initializer, planned_bytes, variable_specs

DEFAULT_TARGET = "localhost:50051"
MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
RECEIVE_LIMIT = wire.MAX_MESSAGE_BYTES + (64 << 10)
"""The largest message the client accepts: a maximal chunk with its framing, plus room to spare."""
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""Statuses after which a stream is resumed; DEADLINE_EXCEEDED too, once the stream made progress."""

Variables = pb.MaterializeRequest | VariableLike | Iterable[VariableLike]
Progress = Callable[[int, int], None]
"""progress(bytes received so far, bytes in the whole fetch)."""
Fault = Callable[[int, wire.Chunk], wire.Chunk | None]
"""Tests only: fault(attempt, chunk) -> the chunk to use, or None to cut the stream there."""


class _Calls:
    """The calls in flight for one fetch, so that stopping the fetch cancels every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[Any] = set()
        self.stopped = False

    def add(self, call: Any) -> None:
        with self._lock:
            if self.stopped:
                call.cancel()
            self._calls.add(call)

    def discard(self, call: Any) -> None:
        with self._lock:
            self._calls.discard(call)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            calls = list(self._calls)
        for call in calls:
            call.cancel()


class _Counter:
    """Bytes received across a fetch's threads, reported to a progress callback."""

    def __init__(self, total: int, progress: Progress | None):
        self.total = total
        self.received = 0
        self._progress = progress
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.received += n
            if self._progress is not None:
                self._progress(self.received, self.total)


class Session:
    """An open server session: a seed scope with an RNG mode and defaults. Its methods mirror the
    client's, with the session applied; use it as a context manager, or call `close()`."""

    def __init__(self, client: Client, message: pb.Session):
        self.client = client
        self.message = message
        self.closed = False

    @property
    def id(self) -> str:
        return self.message.session_id

    @property
    def seed(self) -> int:
        return self.message.seed

    @property
    def sequential(self) -> bool:
        return self.message.rng_mode == pb.RNG_MODE_SEQUENTIAL

    @property
    def default_dtype(self) -> int:
        return self.message.default_dtype or pb.DTYPE_FLOAT32

    def open_request(self) -> pb.OpenSessionRequest:
        """The OpenSessionRequest that opens an equivalent session (for manifests and `verify`)."""
        request = pb.OpenSessionRequest(
            seed=self.seed, rng_mode=self.message.rng_mode, default_dtype=self.message.default_dtype
        )
        if self.message.HasField("default_initializer"):
            request.default_initializer.CopyFrom(self.message.default_initializer)
        return request

    def materialize(self, variables: Variables, **kwargs: Any) -> dict[str, np.ndarray]:
        return self.client.materialize(variables, session=self, **kwargs)

    def stream(self, variables: Variables, **kwargs: Any) -> Iterator[Tensor]:
        return self.client.stream(variables, session=self, **kwargs)

    def iter_chunks(self, variables: Variables, **kwargs: Any) -> Iterator[wire.Chunk]:
        return self.client.iter_chunks(variables, session=self, **kwargs)

    def materialize_to_file(self, variables: Variables, path: str | Path, **kwargs: Any) -> Manifest:
        return self.client.materialize_to_file(variables, path, session=self, **kwargs)

    def close(self) -> int:
        """Close the session; returns how many sequential positions it used (0 in by-name mode)."""
        response = self.client._unary(self.client._stub.CloseSession, pb.CloseSessionRequest(session_id=self.id))
        self.closed = True
        return response.sequence_length

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.close()

    def __repr__(self) -> str:
        mode = "sequential" if self.sequential else "by_name"
        return f"Session(id={self.id!r}, seed={self.seed}, rng_mode={mode!r})"


class Client:
    """A connection to a weightgen server.

    `target` is ``host:port``. `tls` is False, True (system roots or `root_certificates`, PEM
    bytes) or a ready `grpc.ChannelCredentials` (mutual TLS). `token` is sent as a bearer token.
    `timeout` (seconds) bounds each call; `chunk_bytes` is the largest chunk asked for: by default
    the largest that fits gRPC's 4 MiB message limit, the fastest in bench/e2e_fetch.py (0 = the
    server's default, 1 MiB); `verify` checks every digest; `retries` is how many failed attempts in a row
    a stream may have before the error is raised (an attempt that delivers bytes resets the count)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        timeout: float | None = None,
        chunk_bytes: int = wire.MAX_CHUNK_BYTES,
        verify: bool = True,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ):
        if chunk_bytes and not wire.MIN_CHUNK_BYTES <= chunk_bytes <= wire.MAX_CHUNK_BYTES:
            raise ValueError(
                f"chunk_bytes must be 0 (the server's default) or in [{wire.MIN_CHUNK_BYTES}, {wire.MAX_CHUNK_BYTES}], "
                f"got {chunk_bytes}"
            )
        self.target = target
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.verify = verify
        self.retries = retries
        self.backoff = 0.1
        channel_options = [
            ("grpc.max_receive_message_length", RECEIVE_LIMIT),
            ("grpc.max_send_message_length", -1),
            *options,
        ]
        if isinstance(tls, grpc.ChannelCredentials):
            self._channel = grpc.secure_channel(target, tls, options=channel_options)
        elif tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self._stub = pb_grpc.WeightGenStub(self._channel)
        self._materialize = self._channel.unary_stream(
            MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString, response_deserializer=None
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._fault: Fault | None = None

    # -- plumbing --------------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"

    def _unary(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def request(
        self, variables: Variables, *, seed: int = 0, session: Session | str | None = None
    ) -> pb.MaterializeRequest:
        """The MaterializeRequest for `variables` (or a copy of a given request, with `seed`,
        `session` and the client's chunk size applied where set)."""
        if isinstance(variables, pb.MaterializeRequest):
            request = pb.MaterializeRequest()
            request.CopyFrom(variables)
        else:
            request = pb.MaterializeRequest(variables=variable_specs(variables))
        if seed:
            request.seed = seed
        if session is not None:
            request.session_id = session.id if isinstance(session, Session) else session
        if self.chunk_bytes and not request.chunk_bytes:
            request.chunk_bytes = self.chunk_bytes
        if not request.variables:
            raise ValueError("no variables to materialize")
        return request

    # -- Materialize -----------------------------------------------------------------------------

    def iter_chunks(
        self, variables: Variables, *, seed: int = 0, session: Session | str | None = None
    ) -> Iterator[wire.Chunk]:
        """The raw decoded TensorChunks of one Materialize call, as they arrive (no reassembly,
        no digest check, no resume)."""
        call = self._materialize(
            self.request(variables, seed=seed, session=session), timeout=self.timeout, metadata=self._metadata
        )
        try:
            for raw in call:
                yield wire.decode_chunk(raw)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None
        finally:
            call.cancel()

    def stream(
        self,
        variables: Variables,
        *,
        seed: int = 0,
        session: Session | str | None = None,
        streams: int = 1,
        progress: Progress | None = None,
    ) -> Iterator[Tensor]:
        """Each variable as a `Tensor` (name, array, info, digest) as soon as its last byte arrived."""
        request = self.request(variables, seed=seed, session=session)
        for _, tensor in self._fetch(request, MemorySink(), session, streams, progress):
            yield tensor

    def materialize(
        self,
        variables: Variables,
        *,
        seed: int = 0,
        session: Session | str | None = None,
        streams: int = 1,
        progress: Progress | None = None,
    ) -> dict[str, np.ndarray]:
        """Every variable as a numpy array shaped as delivered (the slice's shape for a slice),
        of the dtype the server resolved, in request order. `seed` 0 lets the server pick one
        (see `stream` for the effective seed, or use a manifest). `streams` > 1 fetches over that
        many concurrent streams, with the variables split between them by bytes."""
        request = self.request(variables, seed=seed, session=session)
        arrays: dict[int, tuple[str, np.ndarray]] = {}
        for key, tensor in self._fetch(request, MemorySink(), session, streams, progress):
            arrays[key] = (tensor.name, tensor.array)
        return dict(arrays[i] for i in range(len(request.variables)))

    def materialize_to_file(
        self,
        variables: Variables,
        path: str | Path,
        *,
        seed: int = 0,
        session: Session | str | None = None,
        streams: int = 1,
        progress: Progress | None = None,
    ) -> Manifest:
        """Stream every variable into a safetensors file at `path` (never holding the model in
        memory) with a manifest in its metadata; returns the manifest. complex128 variables are
        refused (safetensors cannot store them)."""
        request = self.request(variables, seed=seed, session=session)
        default = session.default_dtype if isinstance(session, Session) else pb.DTYPE_FLOAT32
        dtypes = [spec.dtype or default for spec in request.variables]
        recorded = pb.MaterializeRequest()
        recorded.CopyFrom(request)
        if not (isinstance(variables, pb.MaterializeRequest) and variables.chunk_bytes):
            recorded.ClearField("chunk_bytes")  # how the bytes travelled is not part of what they are
        manifest = Manifest(
            request=recorded,
            server=self.target,
            session=session.open_request() if isinstance(session, Session) else None,
        )
        reserve = {"format": "pt", MANIFEST_KEY: manifest.placeholder(dtypes).to_json()}
        writer = SafetensorsWriter(path, request.variables, dtypes, metadata_reserve=reserve)
        started = time.perf_counter()
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entries: dict[int, ManifestVariable] = {}
        generators: dict[str, None] = {}
        try:
            for key, tensor in self._fetch(request, writer, session, streams, progress):
                entries[key] = ManifestVariable.from_info(tensor.info, tensor.digest)
                generators[tensor.info.generator] = None
            manifest.variables = [entries[i] for i in range(len(request.variables))]
            manifest.generator = ",".join(generators)
            manifest.created = created
            manifest.seconds = time.perf_counter() - started
            writer.commit({"format": "pt", MANIFEST_KEY: manifest.to_json()})
        except BaseException:
            writer.abort()
            raise
        return manifest

    # -- the fetch machinery ---------------------------------------------------------------------

    def _fetch(
        self,
        request: pb.MaterializeRequest,
        sink: Sink,
        session: Session | str | None,
        streams: int,
        progress: Progress | None,
    ) -> Iterator[tuple[int, Tensor]]:
        """(position in the request, Tensor) for every variable, over `streams` concurrent calls."""
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        # A session given by id only may be sequential: assume so, so a resume never guesses positions.
        sequential = session.sequential if isinstance(session, Session) else session is not None
        default = session.default_dtype if isinstance(session, Session) else pb.DTYPE_FLOAT32
        sizes = [planned_bytes(spec, default) for spec in request.variables]
        counter = _Counter(sum(sizes), progress)
        groups = balance(sizes, streams)
        calls = _Calls()
        if len(groups) <= 1:
            try:
                yield from self._attempts(
                    request, list(range(len(request.variables))), sink, sequential, counter, calls
                )
            finally:
                calls.stop()
            return
        if isinstance(session, Session) and session.sequential:
            raise ValueError("a sequential session needs streams=1: its positions follow the order of requests")
        if not request.session_id and not request.seed:
            request = self.request(request, seed=secrets.randbits(64) or 1)  # one seed for every stream
        yield from self._parallel(request, groups, sink, sequential, counter, calls)

    def _parallel(
        self,
        request: pb.MaterializeRequest,
        groups: list[list[int]],
        sink: Sink,
        sequential: bool,
        counter: _Counter,
        calls: _Calls,
    ) -> Iterator[tuple[int, Tensor]]:
        results: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work(group: list[int]) -> None:
            sub = pb.MaterializeRequest(
                session_id=request.session_id,
                seed=request.seed,
                chunk_bytes=request.chunk_bytes,
                variables=[request.variables[i] for i in group],
            )
            try:
                for item in self._attempts(sub, group, sink, sequential, counter, calls):
                    results.put(("tensor", item))
                results.put(("done", None))
            except BaseException as e:
                results.put(("error", e))

        threads = [threading.Thread(target=work, args=(g,), daemon=True, name="weightgen-fetch") for g in groups]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                kind, value = results.get()
                if kind == "tensor":
                    yield value
                elif kind == "done":
                    running -= 1
                else:
                    raise value
        finally:
            calls.stop()
            for thread in threads:
                thread.join()

    def _attempts(
        self,
        request: pb.MaterializeRequest,
        keys: list[int],
        sink: Sink,
        sequential: bool,
        counter: _Counter,
        calls: _Calls,
    ) -> Iterator[tuple[int, Tensor]]:
        """One Materialize call and as many resumed ones as a broken stream needs."""
        assembler = Assembler(request.variables, sink, verify=self.verify, keys=keys, on_bytes=counter)
        current, positions = request, list(range(len(request.variables)))
        failures = attempt = 0
        while True:
            before = (assembler.received, len(assembler.pending))
            call = self._materialize(current, timeout=self.timeout, metadata=self._metadata)
            calls.add(call)
            error: errors.WeightgenError
            code: grpc.StatusCode
            try:
                for raw in call:
                    chunk = wire.decode_chunk(raw)
                    if self._fault is not None:
                        chunk = self._fault(attempt, chunk)
                        if chunk is None:  # the test hook cut the stream here
                            raise _CutError()
                    if chunk.variable_index >= len(positions):
                        raise errors.ProtocolError(
                            None, f"chunk for variable index {chunk.variable_index}, the request has {len(positions)}"
                        )
                    if chunk.sequence_indexes:
                        assembler.note_positions(
                            {positions[i]: p for i, p in enumerate(chunk.sequence_indexes) if i < len(positions)}
                        )
                    index = positions[chunk.variable_index]
                    tensor = assembler.feed(index, chunk)
                    if tensor is not None:
                        yield keys[index], tensor
                if not assembler.complete:
                    missing = ", ".join(repr(request.variables[i].name) for i in assembler.pending[:5])
                    raise errors.ProtocolError(
                        None, f"the stream ended before these variables were complete: {missing}"
                    )
                return
            except grpc.RpcError as e:
                if calls.stopped:
                    raise errors.Cancelled(None, "the fetch was stopped") from None
                error, code = errors.from_rpc_error(e), e.code()
            except _CutError:
                error = errors.Unavailable(None, "the stream was cut (test fault)")
                code = grpc.StatusCode.UNAVAILABLE
            finally:
                call.cancel()
                calls.discard(call)
            progressed = (assembler.received, len(assembler.pending)) != before
            retryable = code in RETRYABLE or (code == grpc.StatusCode.DEADLINE_EXCEEDED and progressed)
            failures = 0 if progressed else failures + 1
            if not retryable or failures > self.retries:
                raise error
            attempt += 1
            time.sleep(min(2.0, self.backoff * 2**failures) * random.uniform(0.5, 1.0))
            current, positions = assembler.resume_request(request, sequential=sequential)

    # -- sessions and discovery ------------------------------------------------------------------

    def open_session(
        self,
        seed: int = 0,
        rng_mode: str | int = "by_name",
        default_initializer: InitializerLike = None,
        default_dtype: Any = None,
        ttl_seconds: int = 0,
    ) -> Session:
        """Open a session: `seed` (0 = the server picks), `rng_mode` ``by_name`` or ``sequential``
        (GoMLX's order-dependent stream), defaults for variables that name no initializer or dtype,
        and an idle TTL (0 = the server's default)."""
        request = pb.OpenSessionRequest(
            seed=seed,
            rng_mode=enum_value(pb.RngMode.DESCRIPTOR, rng_mode),
            default_dtype=dtype_value(default_dtype),
            ttl_seconds=ttl_seconds,
        )
        message = initializer(default_initializer)
        if message is not None:
            request.default_initializer.CopyFrom(message)
        return Session(self, self._unary(self._stub.OpenSession, request))

    def close_session(self, session_id: str) -> int:
        """Close a session by id; returns its sequence length."""
        return self._unary(self._stub.CloseSession, pb.CloseSessionRequest(session_id=session_id)).sequence_length

    def list_initializers(self) -> pb.ListInitializersResponse:
        """Every initializer with its parameters and defaults, the dtypes and the generator."""
        return self._unary(self._stub.ListInitializers, pb.ListInitializersRequest())


class _CutError(Exception):
    """Raised inside a fetch when the test fault hook cuts the stream."""


__all__ = ["DEFAULT_TARGET", "Client", "Session", "Tensor"]
