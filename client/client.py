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
variable's digest is verified (``verify=False`` skips it); the client asks for XXH3-128 (``digest=``
chooses: "xxh3_128", "sha256" or "none"), which costs a few milliseconds per GiB where SHA-256 cost
half a second on each side. A stream broken by the transport
(UNAVAILABLE, INTERNAL, UNKNOWN, or DEADLINE_EXCEEDED after progress) resumes where it stopped:
only unfinished variables are asked for again, from the first missing byte, with the seed and
sequence position the server reported, so the result is the bytes an unbroken stream would give.

Many replicas act as one server. A target that names several addresses (``ipv4:10.0.0.1:50051,
10.0.0.2:50051``, or ``10.0.0.1:50051,10.0.0.2:50051``) or a DNS name (``dns:///weightgen-headless:50051``)
balances RPCs over them with gRPC's ``round_robin``; a failed call is retried, on whichever replica
is up, until a stream has made no progress for `retry_seconds` (a replica's restart and warm-up
included), and a sequential session's position travels with the client (`Session.next_position`,
sent as ``sequence_start``), so any replica serves any request of it.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import queue
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc as pb_grpc
from weightgen.v1 import wire

from . import errors
from .assemble import Assembler, MemorySink, Sink, Tensor, destination
from .balance import balance
from .files import MANIFEST_KEY, Manifest, ManifestVariable, SafetensorsWriter, check_zero_rows
from .specs import (
    InitializerLike,
    VariableLike,
    delivered_shape,
    did_you_mean,
    dtype_value,
    enum_value,
    initializer,
    planned_bytes,
    variable_specs,
)

DEFAULT_TARGET = "localhost:50051"
MATERIALIZE = "/weightgen.v1.WeightGen/Materialize"
RECEIVE_LIMIT = wire.MAX_MESSAGE_BYTES + (64 << 10)
"""The largest message the client accepts: a maximal chunk with its framing, plus room to spare."""
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""Statuses after which a stream is resumed; DEADLINE_EXCEEDED too, once the stream made progress."""
SERVER_ERROR_RETRIES = 3
"""INTERNAL or UNKNOWN without progress this many times in a row is the server's answer, not a
hiccup: given up even within the time budget (UNAVAILABLE is retried for the whole budget)."""
ROUND_ROBIN = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": "weightgen.v1.WeightGen"}}
)
"""The service config of a channel to a fleet: every RPC to the next replica whose health service
says SERVING, so draining and warming replicas get no new calls (bench/README.md "Fleet": during a
drain, a third of new calls went to the draining replica and waited for a retry; with health
checking none did). The health service needs no token."""
SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"})
"""gRPC target schemes; anything else before the first colon is a host name."""

Variables = pb.MaterializeRequest | VariableLike | Iterable[VariableLike]
Progress = Callable[[int, int], None]
"""progress(bytes received so far, bytes in the whole fetch)."""
Interceptor = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)
"""A gRPC client interceptor, as `grpc.intercept_channel` takes them."""


class _Calls:
    """The calls in flight for one fetch, so that stopping the fetch cancels every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[Any] = set()
        self._stopping = threading.Event()
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
        self._stopping.set()
        for call in calls:
            call.cancel()

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds` (a backoff), or less if the fetch is stopped meanwhile; True if it was."""
        return self._stopping.wait(seconds)


class _Budget:
    """When a failed call is tried again, and when it is given up: once it has made no progress for
    `retry_seconds`, or (with `retries`) after that many failed attempts in a row. Waits between
    attempts grow exponentially from `backoff` to `max_backoff`, with jitter."""

    def __init__(self, client: Client):
        self.seconds = client.retry_seconds
        self.cap = client.retries
        self.base = client.backoff
        self.ceiling = client.max_backoff
        self.since = time.monotonic()  # the last progress (or the first attempt)
        self.failures = 0  # failed attempts in a row without progress
        self.server_errors = 0  # of which the latest ones in a row were INTERNAL or UNKNOWN
        self.attempts = 0

    def remaining(self) -> float:
        """Seconds left before the budget runs out (<= 0: it has)."""
        return self.seconds - (time.monotonic() - self.since)

    def delay(self, code: grpc.StatusCode, progressed: bool) -> float | None:
        """After a failed, retryable attempt: seconds to wait before the next one, or None to give up."""
        self.attempts += 1
        if progressed:
            self.since = time.monotonic()
            self.failures = self.server_errors = 0
        else:
            self.failures += 1
            server_error = code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
            self.server_errors = self.server_errors + 1 if server_error else 0
        if self.cap is not None:
            if self.failures > self.cap:
                return None
        elif self.server_errors > SERVER_ERROR_RETRIES:
            return None
        remaining = self.remaining()
        if remaining <= 0:
            return None
        return min(remaining, min(self.ceiling, self.base * 2**self.failures) * random.uniform(0.5, 1.0))

    def gave_up(self, error: errors.WeightgenError) -> errors.WeightgenError:
        """`error`, its message saying how long and how often it was tried."""
        waited = self.seconds - self.remaining()
        note = f" (given up after {self.attempts} failed attempt(s), {waited:.1f} s without progress"
        note += f"; retry_seconds={self.seconds:g}" + (f", retries={self.cap})" if self.cap is not None else ")")
        return type(error)(error.code, error.message + note)


class _Watchdog:
    """Cancels a call that has not answered within `seconds`: a retried call waits for a server
    (wait_for_ready), but no longer than the retry budget allows."""

    def __init__(self, call: Any, seconds: float):
        self._call = call
        self._lock = threading.Lock()
        self._answered = False
        self.fired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._answered:
                return
            self.fired = True
        self._call.cancel()

    def answered(self) -> None:
        with self._lock:
            self._answered = True
        self._timer.cancel()

    def stop(self) -> None:
        self._timer.cancel()


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
    client's, with the session applied; use it as a context manager, or call `close()`.

    A sequential session's position is the client's: `next_position` (0 for a new session) is sent
    with every request as ``sequence_start``, so the request's random variables take positions
    ``next_position, next_position + 1, ...`` in request order on whichever replica serves it, and
    it moves one past the last position the server reports (on the stream's first chunk: positions
    count as taken from then on, even if the stream later fails or is abandoned, so no two variables
    ever share one; `resume_at` asks for the same ones again). Requests of one sequential session
    therefore go one at a time. A session continued elsewhere (another process or rank, given the
    `message` and the position) starts with ``next_position=`` or `resume_at`."""

    def __init__(self, client: Client, message: pb.Session, *, next_position: int = 0):
        self.client = client
        self.message = message
        self.closed = False
        self.next_position = 0
        self.resume_at(next_position)

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

    def resume_at(self, position: int) -> Session:
        """Continue the session at `position`: its next random variable takes that position (a
        sequential session re-attached in another process, or after the positions another rank
        used). Returns the session."""
        if not 0 <= position < 1 << 32:
            raise ValueError(f"a sequential position is in [0, 2**32), got {position}")
        if position and not self.sequential:
            raise ValueError("only a sequential session has positions; this one is by name")
        self.next_position = position
        return self

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

    def materialize_into(
        self, variables: Variables, out: Mapping[str | int, Any] | Sequence[Any], **kwargs: Any
    ) -> dict[str, Tensor]:
        return self.client.materialize_into(variables, out, session=self, **kwargs)

    def stream(self, variables: Variables, **kwargs: Any) -> Iterator[Tensor]:
        return self.client.stream(variables, session=self, **kwargs)

    def iter_chunks(self, variables: Variables, **kwargs: Any) -> Iterator[wire.Chunk]:
        return self.client.iter_chunks(variables, session=self, **kwargs)

    def materialize_to_file(self, variables: Variables, path: str | Path, **kwargs: Any) -> Manifest:
        return self.client.materialize_to_file(variables, path, session=self, **kwargs)

    def close(self) -> int:
        """Close the session; returns how many sequential positions it used, as this client counted
        them (`next_position`; 0 in by-name mode). The id stays valid on every replica until it
        expires: closing tells the server it may forget what it holds for the session."""
        self.client._unary(self.client._stub.CloseSession, pb.CloseSessionRequest(session_id=self.id))
        self.closed = True
        return self.next_position if self.sequential else 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.close()

    def __repr__(self) -> str:
        mode = f"'sequential', next_position={self.next_position}" if self.sequential else "'by_name'"
        return f"Session(id={self.id!r}, seed={self.seed}, rng_mode={mode})"


class _Positions:
    """Moves a sequential session's `next_position` past the positions the server reports for a
    request's variables that took one (not those given a `sequence_index`, which take none)."""

    def __init__(self, session: Session, request: pb.MaterializeRequest):
        self._session = session
        self._given = [spec.HasField("sequence_index") for spec in request.variables]
        self._top = -1

    def report(self, index: int, position: int) -> None:
        """Variable `index` of the request is at `position` (-1: none)."""
        if position > self._top and not self._given[index]:
            self._top = position
            self._session.next_position = position + 1


def fleet_target(target: str) -> tuple[str, bool]:
    """(the gRPC target for `target`, whether it names a fleet to balance over). Several addresses
    (``ipv4:a:p,b:p``, ``ipv6:[a]:p,[b]:p``) and DNS names (``dns:///name:port``) are fleets; a
    list without a scheme is read as ``ipv4:``/``ipv6:`` when every entry is an IP literal with a
    port, and refused otherwise (gRPC resolves one name per channel)."""
    scheme, colon, rest = target.partition(":")
    if colon and scheme.lower() in SCHEMES:
        scheme = scheme.lower()
        if scheme == "dns":
            return target, True
        return target, scheme in ("ipv4", "ipv6") and "," in rest
    if "," not in target:
        return target, False
    entries = [entry.strip() for entry in target.split(",")]
    families = {_ip_family(entry) for entry in entries}
    if len(families) == 1 and None not in families:
        family = families.pop()
        return f"{family}:{','.join(entries)}", True
    raise ValueError(
        f"target {target!r}: a list of addresses is IP literals with ports, all IPv4 "
        "('ipv4:10.0.0.1:50051,10.0.0.2:50051', or without the 'ipv4:') or all IPv6 "
        "('ipv6:[fd00::1]:50051,[fd00::2]:50051'); for host names, use one DNS name that resolves to "
        "every replica ('dns:///weightgen-headless.weightgen.svc.cluster.local:50051', a headless "
        "Service), or one Client per host"
    )


def _ip_family(entry: str) -> str | None:
    """'ipv4' or 'ipv6' for an IP literal with a port (``10.0.0.1:50051``, ``[fd00::1]:50051``)."""
    host, colon, port = entry.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    if address.version == 6:
        return "ipv6" if bracketed else None
    return None if bracketed else "ipv4"


def _as_array(value: Any) -> np.ndarray:
    """A destination as a numpy array over the same memory (never a copy): an ndarray as it is, a
    torch tensor through `weightgen.client.torch.host_array`, anything else by the buffer protocol."""
    if isinstance(value, np.ndarray):
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        from .torch import host_array

        array = host_array(value)
        if array is None:
            raise ValueError(
                f"a torch tensor on {value.device} ({value.dtype}, contiguous: {value.is_contiguous()}) is not "
                "host memory numpy can write in place: pass a contiguous CPU tensor, or use materialize_module, "
                "which stages such tensors"
            )
        return array
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(
            "a destination is a numpy array, a CPU torch tensor or an object exporting a writable buffer; "
            f"got {type(value).__name__}"
        ) from None
    return np.asarray(view)


def _destinations(
    request: pb.MaterializeRequest,
    out: Mapping[str | int, Any] | Sequence[Any],
    session: Session | str | None,
    *,
    partial: bool = False,
) -> dict[int, np.ndarray]:
    """`materialize_into`'s `out` as checked destinations by request position, the dtype of each
    variable with one pinned in `request` to the one it resolves to (so the server cannot deliver
    another): the variable's own, else the session's default (unknown for a session given by its
    id alone: refused), else float32. `partial`: variables without a destination are allowed (they
    get buffers of their own; `fetch_shards` with some targets in place)."""
    by_id = session is not None and not isinstance(session, Session)
    default = session.default_dtype if isinstance(session, Session) else pb.DTYPE_FLOAT32
    specs = request.variables
    names = {spec.name: i for i, spec in enumerate(specs)}
    given: dict[int, Any] = {}
    if isinstance(out, Mapping):
        for key, value in out.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(f"out's keys are variable names or request positions, got {key!r}")
            if isinstance(key, int):
                if not 0 <= key < len(specs):
                    raise ValueError(f"out[{key}]: the request's positions are 0 to {len(specs) - 1}")
                index = key
            elif key in names:
                index = names[key]
            else:
                raise ValueError(f"out[{key!r}]: no variable of the request has that name{did_you_mean(key, names)}")
            if index in given:
                name = specs[index].name
                raise ValueError(f"variable {name!r} has two destinations in out (its name, position {index})")
            given[index] = value
    elif isinstance(out, Sequence) and not isinstance(out, str | bytes | bytearray | memoryview):
        if len(out) != len(specs):
            raise ValueError(f"out has {len(out)} destination(s), the request {len(specs)} variable(s)")
        given = dict(enumerate(out))
    else:
        kind = type(out).__name__
        raise TypeError(f"out is a mapping {{name: destination}} or a sequence in request order, not {kind}")
    missing = [spec.name for i, spec in enumerate(specs) if i not in given]
    if missing and not partial:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"out has no destination for {', '.join(map(repr, missing[:5]))}{more}")
    into: dict[int, np.ndarray] = {}
    spans = []
    for index, spec in enumerate(specs):
        if index not in given:
            continue
        if not spec.dtype:
            if by_id:
                raise ValueError(
                    f"variable {spec.name!r} names no dtype and the session is given by its id: its default "
                    "dtype is not known here; give the variable a dtype, or pass the Session"
                )
            spec.dtype = default
        array = _as_array(given[index])
        into[index] = destination(spec.name, array, delivered_shape(spec), wire.numpy_dtype(spec.dtype))
        if array.nbytes:
            spans.append((array.ctypes.data, array.ctypes.data + array.nbytes, spec.name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"the destinations of {first!r} and {second!r} overlap: each needs its own memory")
    return into


class Client:
    """A connection to a weightgen server, or to a fleet of its replicas.

    `target` is ``host:port``, or several replicas to balance RPCs over with gRPC's ``round_robin``:
    ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (the ``ipv4:`` may be left out; ``ipv6:[a]:p,[b]:p``
    likewise), or a DNS name that resolves to every replica, ``dns:///weightgen-headless:50051``
    (`fleet_target`). A ``grpc.service_config`` or ``grpc.lb_policy_name`` in `options` replaces
    that default; a plain ``host:port`` keeps gRPC's ``pick_first``. `tls` is False, True (system
    roots or `root_certificates`, PEM bytes) or a ready `grpc.ChannelCredentials` (mutual TLS).
    `token` is sent as a bearer token. `timeout` (seconds) bounds each call; `chunk_bytes` is the
    largest chunk asked for: by default the largest that fits gRPC's 4 MiB message limit, the
    fastest in bench/e2e_fetch.py (0 = the server's default, 1 MiB); `digest` is the algorithm
    asked for ("xxh3_128", the default: fast, not cryptographic; "sha256"; or "none"; a request
    that names its own keeps it); `verify` checks every digest.

    Failed calls are retried for `retry_seconds` without progress (default 120 s: a replica's
    restart and warm-up): a broken stream resumes from the first missing byte, UNAVAILABLE (a server
    down, warming up or draining) is retried for streams and for OpenSession, CloseSession and
    ListInitializers, with exponential backoff (`backoff` to `max_backoff` seconds, with jitter),
    and every retried call waits for a server to be ready (gRPC's wait_for_ready) for at most the
    budget left. INTERNAL and UNKNOWN without progress are given up after 3 in a row. `retries`,
    if given, also caps the failed attempts in a row (an attempt that delivers bytes resets the
    count); None: only the time budget.

    `interceptors` (gRPC client interceptors, applied with `grpc.intercept_channel`; the first
    sees a call first) see every call the client makes, retries included: for tracing, logging or
    metadata of one's own. Materialize's responses reach them as serialized TensorChunk messages
    (bytes; `weightgen.v1.wire.decode_chunk` reads them). What an interceptor returns for a
    Materialize call is what the client uses: a call object that it iterates for those bytes,
    cancels, and whose `grpc.RpcError` it reads as any gRPC call's."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        timeout: float | None = None,
        chunk_bytes: int = wire.MAX_CHUNK_BYTES,
        digest: str = wire.FAST_DIGEST,
        verify: bool = True,
        retries: int | None = None,
        retry_seconds: float = 120.0,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[Interceptor] = (),
    ):
        if chunk_bytes and not wire.MIN_CHUNK_BYTES <= chunk_bytes <= wire.MAX_CHUNK_BYTES:
            raise ValueError(
                f"chunk_bytes must be 0 (the server's default) or in [{wire.MIN_CHUNK_BYTES}, {wire.MAX_CHUNK_BYTES}], "
                f"got {chunk_bytes}"
            )
        if retries is not None and retries < 0:
            raise ValueError(f"retries must be None (no cap) or >= 0, got {retries}")
        if not retry_seconds >= 0:
            raise ValueError(f"retry_seconds must be >= 0, got {retry_seconds}")
        self.digest = wire.digest_name(wire.digest_enum(digest))
        if isinstance(interceptors, Interceptor):
            raise TypeError("interceptors is a sequence of gRPC client interceptors: interceptors=[interceptor]")
        target, fleet = fleet_target(target)
        self.target = target
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.verify = verify
        self.retries = retries
        self.retry_seconds = float(retry_seconds)
        self.backoff = 0.1
        self.max_backoff = 5.0
        given = {name for name, _ in options}
        channel_options = [
            ("grpc.max_receive_message_length", RECEIVE_LIMIT),
            ("grpc.max_send_message_length", -1),
            *options,
        ]
        if "grpc.max_reconnect_backoff_ms" not in given:
            # gRPC's default reaches 120 s between reconnections: a replica back after a minute
            # would wait that long for a call that is waiting for it.
            channel_options.append(("grpc.max_reconnect_backoff_ms", 5000))
        # True when this client balances with round_robin: a fleet, and no balancing option of the caller's.
        self.balanced = fleet and not given & {"grpc.service_config", "grpc.lb_policy_name"}
        if self.balanced:
            channel_options.append(("grpc.service_config", ROUND_ROBIN))
        if isinstance(tls, grpc.ChannelCredentials):
            channel = grpc.secure_channel(target, tls, options=channel_options)
        elif tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            channel = grpc.insecure_channel(target, options=channel_options)
        # Closing the intercepted channel closes the one it wraps.
        self._channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self._stub = pb_grpc.WeightGenStub(self._channel)
        self._materialize = self._channel.unary_stream(
            MATERIALIZE, request_serializer=pb.MaterializeRequest.SerializeToString, response_deserializer=None
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

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
        """One unary call; UNAVAILABLE is retried within the time budget, each retry waiting for a
        server (wait_for_ready) for at most the budget left."""
        budget = _Budget(self)
        waiting = False
        while True:
            timeout = self.timeout
            if waiting:
                left = max(budget.remaining(), 0.0)
                timeout = left if timeout is None else min(timeout, left)
            try:
                return method(
                    request, timeout=timeout, metadata=self._metadata, wait_for_ready=True if waiting else None
                )
            except grpc.RpcError as e:
                error, code = errors.from_rpc_error(e), e.code()
            if waiting and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # The call waited for a server to be ready all along: the servers are still unavailable.
                error = errors.Unavailable(None, f"no server was ready: {error.message}")
                code = grpc.StatusCode.UNAVAILABLE
            if code != grpc.StatusCode.UNAVAILABLE:
                raise error
            delay = budget.delay(code, progressed=False)
            if delay is None:
                raise budget.gave_up(error)
            time.sleep(delay)
            waiting = True

    def request(
        self, variables: Variables, *, seed: int = 0, session: Session | str | None = None
    ) -> pb.MaterializeRequest:
        """The MaterializeRequest for `variables` (or a copy of a given request, with `seed`,
        `session` and the client's chunk size and digest algorithm applied where it sets none). A
        sequential `Session` adds its position as ``sequence_start`` (unless the request has one); a
        session given by its id
        alone sends none, so the server that opened it counts its positions (elsewhere it refuses
        with FAILED_PRECONDITION): pass the `Session` to use any replica."""
        if isinstance(variables, pb.MaterializeRequest):
            request = pb.MaterializeRequest()
            request.CopyFrom(variables)
        else:
            request = pb.MaterializeRequest(variables=variable_specs(variables))
        if seed:
            request.seed = seed
        if session is not None:
            request.session_id = session.id if isinstance(session, Session) else session
        if isinstance(session, Session) and session.sequential and not request.HasField("sequence_start"):
            request.sequence_start = session.next_position
        if self.chunk_bytes and not request.chunk_bytes:
            request.chunk_bytes = self.chunk_bytes
        if not request.digest_algorithm:
            request.digest_algorithm = wire.digest_enum(self.digest)
        if not request.variables:
            raise ValueError("no variables to materialize")
        return request

    # -- Materialize -----------------------------------------------------------------------------

    def iter_chunks(
        self, variables: Variables, *, seed: int = 0, session: Session | str | None = None
    ) -> Iterator[wire.Chunk]:
        """The raw decoded TensorChunks of one Materialize call, as they arrive (no reassembly,
        no digest check, no resume; a sequential session's position still advances)."""
        request = self.request(variables, seed=seed, session=session)
        positions = _Positions(session, request) if isinstance(session, Session) and session.sequential else None
        call = self._materialize(request, timeout=self.timeout, metadata=self._metadata)
        try:
            for raw in call:
                chunk = wire.decode_chunk(raw)
                if positions is not None:
                    for i, position in enumerate(chunk.sequence_indexes[: len(request.variables)]):
                        positions.report(i, position)
                    info = chunk.info
                    if (
                        info is not None
                        and info.HasField("sequence_index")
                        and chunk.variable_index < len(request.variables)
                    ):
                        positions.report(chunk.variable_index, info.sequence_index)
                yield chunk
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
        many concurrent streams, with the variables split between them by bytes. To fill arrays
        or tensors that exist already, without a copy, use `materialize_into`."""
        request = self.request(variables, seed=seed, session=session)
        tensors = self._fetch_into(request, {}, session, streams, progress)
        return {tensor.name: tensor.array for tensor in tensors}

    def materialize_into(
        self,
        variables: Variables,
        out: Mapping[str | int, Any] | Sequence[Any],
        *,
        seed: int = 0,
        session: Session | str | None = None,
        streams: int = 1,
        progress: Progress | None = None,
    ) -> dict[str, Tensor]:
        """Write every variable straight into a destination of the caller's: the received bytes go
        from gRPC's message to their place, with no buffer in between (a model's preallocated CPU
        tensors, a pinned staging area, a shared-memory segment, a memory-mapped file).

            weights = {"w": np.empty((784, 256), np.float32), "b": model.bias}   # a CPU torch tensor
            client.materialize_into([Variable("w", (784, 256), "he_normal"),
                                     Variable("b", (256,), "zeros")], weights, seed=42)

        `out` maps each variable's name (or its position in the request) to its destination, or
        is a sequence in request order. A destination is a numpy array, anything exporting a
        writable buffer, or a CPU torch tensor (bfloat16 included). Each is checked before anything
        is requested (ValueError naming the variable and what is wrong): writable, C-contiguous,
        exactly the bytes of the delivered shape (the slice's, for a slice) and of the dtype the
        server resolves (the variable's own, else the session's default), and of that dtype and
        shape (or a same-width integer dtype: bit patterns; or plain uint8 bytes). Nothing is
        reshaped, cast or truncated, and no two destinations may overlap. A variable without a
        dtype in a session given by its id alone is refused: its default dtype is not known here.

        Everything `materialize` does still holds: digests are verified, a broken stream resumes
        (writes go to absolute offsets, so bytes sent again land where they were), `streams` > 1
        fetches concurrently, sessions apply. If the fetch fails, the destinations hold a part of
        the values. Returns ``{name: Tensor}`` in request order: each `Tensor.array` is the
        destination itself when it is a numpy array of the delivered dtype and shape (else a view
        of its memory as that array), with the effective seed and digest beside it."""
        request = self.request(variables, seed=seed, session=session)
        into = _destinations(request, out, session)
        tensors = self._fetch_into(request, into, session, streams, progress)
        return {tensor.name: tensor for tensor in tensors}

    def materialize_to_file(
        self,
        variables: Variables,
        path: str | Path,
        *,
        seed: int = 0,
        session: Session | str | None = None,
        streams: int = 1,
        progress: Progress | None = None,
        zero_rows: Mapping[str, Sequence[int]] | None = None,
        record_time: bool = False,
    ) -> Manifest:
        """Stream every variable into a safetensors file at `path` (never holding the model in
        memory) with a manifest in its metadata; returns the manifest. complex128 variables are
        refused (safetensors cannot store them). `zero_rows` (``{name: [row, ...]}``, rows of the
        full tensor's axis 0) are set to zero once fetched, as a model's init zeroes an Embedding's
        padding row; the manifest records them (`weightgen verify` applies them too).

        The file is a pure function of the request and the server address: two identical fetches
        write identical bytes. `record_time=True` adds when it was made and how long it took."""
        request = self.request(variables, seed=seed, session=session)
        zeroed = check_zero_rows(request.variables, zero_rows)
        default = session.default_dtype if isinstance(session, Session) else pb.DTYPE_FLOAT32
        dtypes = [spec.dtype or default for spec in request.variables]
        recorded = pb.MaterializeRequest()
        recorded.CopyFrom(request)
        if not (isinstance(variables, pb.MaterializeRequest) and variables.chunk_bytes):
            recorded.ClearField("chunk_bytes")  # how the bytes travelled is not part of what they are
        recorded.ClearField("digest_algorithm")  # the manifest names the algorithm of its digests
        manifest = Manifest(
            request=recorded,
            server=self.target,
            session=session.open_request() if isinstance(session, Session) else None,
        )
        reserve = {"format": "pt", MANIFEST_KEY: manifest.placeholder(dtypes, zeroed, timed=record_time).to_json()}
        writer = SafetensorsWriter(path, request.variables, dtypes, metadata_reserve=reserve)
        started = time.perf_counter()
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entries: dict[int, ManifestVariable] = {}
        generators: dict[str, None] = {}
        algorithms: dict[str, None] = {}
        try:
            # The manifest's digests are the server's, verified as the bytes arrived (no extra pass);
            # a fetch without them ("none") has the client compute XXH3-128 as it writes.
            for key, tensor in self._fetch(request, writer, session, streams, progress, local_digest=wire.FAST_DIGEST):
                entries[key] = ManifestVariable.from_info(tensor.info, tensor.digest)
                generators[tensor.info.generator] = None
                algorithms[tensor.digest_algorithm] = None
            if len(algorithms) > 1:
                raise errors.ProtocolError(None, f"the variables came with different digests: {', '.join(algorithms)}")
            manifest.digest_algorithm = next(iter(algorithms), wire.FAST_DIGEST)
            for key, spec in enumerate(request.variables):
                if spec.name in zeroed:
                    writer.zero_rows(key, zeroed[spec.name], spec.slice[0].start if spec.slice else 0)
                    entries[key].zero_rows = zeroed[spec.name]
            manifest.variables = [entries[i] for i in range(len(request.variables))]
            manifest.generator = ",".join(generators)
            if record_time:
                manifest.created = created
                manifest.seconds = time.perf_counter() - started
            writer.commit({"format": "pt", MANIFEST_KEY: manifest.to_json()})
        except BaseException:
            writer.abort()
            raise
        return manifest

    # -- the fetch machinery ---------------------------------------------------------------------

    def _fetch_into(
        self,
        request: pb.MaterializeRequest,
        into: Mapping[int, np.ndarray],
        session: Session | str | None,
        streams: int,
        progress: Progress | None,
    ) -> list[Tensor]:
        """Every variable of `request` as a Tensor, in request order: those with a destination in
        `into` (by position, checked by `assemble.destination`) written there in place, the others
        into buffers of their own. `materialize`, `materialize_into` and `fetch_shards` are this."""
        tensors: dict[int, Tensor] = {}
        for key, tensor in self._fetch(request, MemorySink(into), session, streams, progress):
            tensors[key] = tensor
        return [tensors[i] for i in range(len(request.variables))]

    def _fetch(
        self,
        request: pb.MaterializeRequest,
        sink: Sink,
        session: Session | str | None,
        streams: int,
        progress: Progress | None,
        local_digest: str | None = None,
    ) -> Iterator[tuple[int, Tensor]]:
        """(position in the request, Tensor) for every variable, over `streams` concurrent calls.
        `local_digest`: the algorithm to compute here for variables the server sends no digest for."""
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
            taken = _Positions(session, request) if isinstance(session, Session) and session.sequential else None
            try:
                yield from self._attempts(
                    request, list(range(len(request.variables))), sink, sequential, counter, calls, taken, local_digest
                )
            finally:
                calls.stop()
            return
        if isinstance(session, Session) and session.sequential:
            raise ValueError("a sequential session needs streams=1: its positions follow the order of requests")
        if not request.session_id and not request.seed:
            request = self.request(request, seed=secrets.randbits(64) or 1)  # one seed for every stream
        yield from self._parallel(request, groups, sink, sequential, counter, calls, local_digest)

    def _parallel(
        self,
        request: pb.MaterializeRequest,
        groups: list[list[int]],
        sink: Sink,
        sequential: bool,
        counter: _Counter,
        calls: _Calls,
        local_digest: str | None = None,
    ) -> Iterator[tuple[int, Tensor]]:
        results: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work(group: list[int]) -> None:
            sub = pb.MaterializeRequest(
                session_id=request.session_id,
                seed=request.seed,
                chunk_bytes=request.chunk_bytes,
                digest_algorithm=request.digest_algorithm,
                variables=[request.variables[i] for i in group],
            )
            try:
                for item in self._attempts(sub, group, sink, sequential, counter, calls, local_digest=local_digest):
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
        taken: _Positions | None = None,
        local_digest: str | None = None,
    ) -> Iterator[tuple[int, Tensor]]:
        """One Materialize call and as many resumed ones as a broken stream needs, within the
        retry budget. `taken` follows the positions a sequential session's variables take."""
        assembler = Assembler(
            request.variables, sink, verify=self.verify, keys=keys, on_bytes=counter, local_digest=local_digest
        )
        current, positions = request, list(range(len(request.variables)))
        budget = _Budget(self)
        attempt = 0
        while True:
            before = (assembler.received, len(assembler.pending))
            # A retry waits for a server to be ready (one restarting, or another replica), within the budget.
            waiting = attempt > 0
            call = self._materialize(
                current, timeout=self.timeout, metadata=self._metadata, wait_for_ready=True if waiting else None
            )
            calls.add(call)
            watchdog = _Watchdog(call, budget.remaining()) if waiting else None
            answered = False
            error: errors.WeightgenError
            code: grpc.StatusCode
            try:
                for raw in call:
                    if not answered:
                        answered = True
                        if watchdog is not None:
                            watchdog.answered()
                    chunk = wire.decode_chunk(raw)
                    if chunk.variable_index >= len(positions):
                        raise errors.ProtocolError(
                            None, f"chunk for variable index {chunk.variable_index}, the request has {len(positions)}"
                        )
                    index = positions[chunk.variable_index]
                    if chunk.sequence_indexes:
                        reported = {positions[i]: p for i, p in enumerate(chunk.sequence_indexes) if i < len(positions)}
                        assembler.note_positions(reported)
                        if taken is not None:
                            for i, p in reported.items():
                                taken.report(i, p)
                    if taken is not None and chunk.info is not None and chunk.info.HasField("sequence_index"):
                        taken.report(index, chunk.info.sequence_index)
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
                if watchdog is not None and watchdog.fired:
                    error = errors.Unavailable(None, "no server answered the resumed request in the retry budget")
                    code = grpc.StatusCode.UNAVAILABLE
                elif waiting and not answered and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # It waited for a server to be ready until its timeout: the servers are still unavailable.
                    error = errors.Unavailable(None, f"no server was ready: {error.message}")
                    code = grpc.StatusCode.UNAVAILABLE
            finally:
                if watchdog is not None:
                    watchdog.stop()
                call.cancel()
                calls.discard(call)
            progressed = (assembler.received, len(assembler.pending)) != before
            if not (code in RETRYABLE or (code == grpc.StatusCode.DEADLINE_EXCEEDED and progressed)):
                raise error
            delay = budget.delay(code, progressed)
            if delay is None:
                raise budget.gave_up(error)
            if calls.wait(delay):
                raise errors.Cancelled(None, "the fetch was stopped")
            attempt += 1
            # The same sequence_start, and every started or placed variable at its own position:
            # nothing shifts (Assembler.resume_request).
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
        and a TTL from the opening (0 = the server's default).

        The session's id carries the session (signed by the fleet), so any replica serves it. A
        sequential session's position is kept here, in `Session.next_position` (from 0), and sent
        with each request, so its requests may go to any replica too, one at a time; to continue
        it in another process, pass `session.message` and the position to `attach_session`. Give
        the `Session` to `materialize` and friends: a session given by its id string sends no
        position (the replica that opened it counts them, and resumes assume it is sequential)."""
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

    def attach_session(self, message: pb.Session | bytes, *, next_position: int = 0) -> Session:
        """A session opened elsewhere (its `Session.message`, or that serialized), continued here
        at `next_position` (sequential sessions: the position its next random variable takes)."""
        if isinstance(message, bytes):
            message = pb.Session.FromString(message)
        return Session(self, message, next_position=next_position)

    def close_session(self, session_id: str) -> int:
        """Close a session by id; returns the position counter the server kept for it (sequential
        sessions whose requests carried no position), else 0."""
        return self._unary(self._stub.CloseSession, pb.CloseSessionRequest(session_id=session_id)).sequence_length

    def list_initializers(self) -> pb.ListInitializersResponse:
        """Every initializer with its parameters and defaults, the dtypes and the generator."""
        return self._unary(self._stub.ListInitializers, pb.ListInitializersRequest())


__all__ = ["DEFAULT_TARGET", "Client", "Session", "Tensor", "fleet_target"]
