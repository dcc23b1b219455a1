"""The gRPC service: WeightGen on grpc.aio, with health, reflection, metrics, auth and draining.

Materialize streams serialized TensorChunks straight from `VariableStream` (identity serializer:
no protobuf message object per chunk). Generation and chunking run on threads; the event loop only
moves bytes, and awaits each write, so a slow client holds back generation (backpressure) instead
of the server buffering the tensor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from weightgen.server import engine as eng
from weightgen.server.config import Config
from weightgen.server.digests import DigestBoard
from weightgen.server.metrics import Metrics
from weightgen.server.sessions import SessionNotFoundError, SessionStore, TooManySessionsError
from weightgen.server.validate import (
    RequestError,
    dtype_from_proto,
    initializer_from_proto,
    reject_unknown_fields,
    validate_request,
)
from weightgen.server.wire import VariableStream
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

log = logging.getLogger("weightgen.server")

SERVICE = pb.DESCRIPTOR.services_by_name["WeightGen"].full_name
LIVENESS = "weightgen.liveness"
"""Health service name that is SERVING as long as the process serves at all (Kubernetes liveness);
the overall "" and "weightgen.v1.WeightGen" names are SERVING only when warm and not draining."""


class _Auth(grpc.aio.ServerInterceptor):
    """Bearer-token authentication on every RPC except health checks."""

    def __init__(self, tokens: list[bytes], denied=None):
        self._tokens = tokens
        self._denied = denied  # called with the method's full name for every refused call (metrics)

    def _ok(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                if raw[:7].lower() == b"bearer ":
                    offered = raw[7:].strip()
                    # Compare against every token, always, so timing says nothing about which matched.
                    return any([hmac.compare_digest(offered, t) for t in self._tokens])
        return False

    async def intercept_service(self, continuation, details):
        if details.method.startswith("/grpc.health.v1.Health/") or self._ok(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)

        async def deny(request, context):
            if self._denied is not None:
                self._denied(details.method)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (authorization metadata)"
            )

        if handler is None:
            return None
        if handler.response_streaming:

            async def deny_stream(request, context):
                await deny(request, context)
                yield b""  # pragma: no cover - abort raises

            return grpc.unary_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)


def load_tokens(path: str) -> list[bytes]:
    tokens = [line.strip().encode() for line in Path(path).read_text().splitlines()]
    tokens = [t for t in tokens if t and not t.startswith(b"#")]
    if not tokens:
        raise SystemExit(f"weightgen: {path} holds no tokens")
    return tokens


class Malformed:
    """What the request deserializer gives for bytes that are not the RPC's request message (corrupt
    wire format, invalid UTF-8 in a string): the handler answers INVALID_ARGUMENT, as for any other
    malformed request, instead of gRPC's UNKNOWN for a deserializer that raised."""

    def __init__(self, message_type, error: Exception):
        self.message = f"request: not a valid {message_type.DESCRIPTOR.full_name}: {error}"


def _parse(message_type):
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except protobuf_message.DecodeError as error:
            return Malformed(message_type, error)

    return parse


class WeightGenService:
    def __init__(self, config: Config, engine: eng.Engine, metrics: Metrics, sessions: SessionStore):
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.sessions = sessions
        self.digests = DigestBoard(config.digest_cache_entries)
        metrics.watch_digests(self.digests)
        self.ready = False
        self.draining = False
        self._active = 0
        self._executor = ThreadPoolExecutor(
            max_workers=max(4, min(128, config.max_concurrent_streams + 4)), thread_name_prefix="weightgen-stream"
        )

    @property
    def active(self) -> int:
        """Materialize streams in progress."""
        return self._active

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _finish(self, method: str, code: grpc.StatusCode, started: float) -> None:
        name = code.name
        self.metrics.requests.labels(method, name).inc()
        if code is not grpc.StatusCode.OK:
            self.metrics.errors.labels(method, name).inc()
        self.metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

    async def _refuse_malformed(self, request, context, method: str, started: float, fields: bool = False) -> None:
        """Refuse bytes that are not the request message; with `fields`, also a request carrying
        fields this server does not know (from a newer client)."""
        if isinstance(request, Malformed):
            await self._refuse(
                context, method, started, RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            )
        if fields:
            try:
                reject_unknown_fields(request, "request")
            except eng.SpecError as e:
                await self._refuse(
                    context, method, started, RequestError(grpc.StatusCode.INVALID_ARGUMENT, e.describe())
                )

    async def _refuse(self, context, method: str, started: float, error: RequestError):
        self._finish(method, error.code, started)
        if error.limit:
            self.metrics.limit_rejections.labels(error.limit).inc()
        log.info(
            "refused", extra={"rpc": method, "code": error.code.name, "detail": error.message, "peer": context.peer()}
        )
        await context.abort(error.code, error.message)

    # -- Materialize ---------------------------------------------------------------------------

    async def Materialize(self, request: pb.MaterializeRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # Read now: after a cancellation the call's peer may be freed (context.peer() then segfaults).
        peer = context.peer()
        if self.draining or not self.ready:
            why = "the server is draining" if self.draining else "the server is warming up"
            await self._refuse(
                context,
                "Materialize",
                started,
                RequestError(grpc.StatusCode.UNAVAILABLE, f"{why}; retry on another replica or later"),
            )
        await self._refuse_malformed(request, context, "Materialize", started)
        if self._active >= self.config.max_concurrent_streams:
            await self._refuse(
                context,
                "Materialize",
                started,
                RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._active} streams are in progress, the server's limit is "
                    f"{self.config.max_concurrent_streams} (--max-concurrent-streams)",
                    "concurrent_streams",
                ),
            )
        self._active += 1
        self.metrics.active_streams.inc()
        code = grpc.StatusCode.OK
        sent = 0
        streams: list[VariableStream] = []
        try:
            try:
                work, session = await loop.run_in_executor(
                    self._executor, validate_request, request, self.engine, self.sessions, self.config
                )
            except RequestError as error:
                code = error.code
                await self._refuse(context, "Materialize", started, error)
            chunk_bytes = request.chunk_bytes or wire.DEFAULT_CHUNK_BYTES
            # The first chunk of a sequential session's stream tells every variable's position.
            positions = ()
            if session is not None and session.sequential:
                positions = tuple(w.prepared.info.sequence_index for w in work)
            for item in work:
                stream = VariableStream(
                    item.index, item.prepared, self.engine, chunk_bytes, item.resume_offset, positions, self.digests
                )
                positions = ()
                streams.append(stream)
                t0 = time.perf_counter()
                while True:
                    chunked = stream.bytes_chunked
                    batch = await loop.run_in_executor(self._executor, stream.next_batch)
                    if not batch:
                        break
                    for message in batch:
                        yield message
                    sent += stream.bytes_chunked - chunked  # tensor bytes, not message framing
                    if stream.done:
                        break
                self.metrics.variables_streamed.inc()
                self.metrics.elements_streamed.inc(item.prepared.plan.size)
                self.metrics.generation_seconds.observe(time.perf_counter() - t0)
        except (asyncio.CancelledError, GeneratorExit):
            # CancelledError when the cancellation finds us awaiting generation; GeneratorExit when it
            # finds gRPC awaiting a send (the generator is then closed at its yield).
            code = grpc.StatusCode.CANCELLED
            self.metrics.cancelled_streams.inc()
            raise
        except Exception as error:
            if code is not grpc.StatusCode.OK:  # an abort we raised ourselves
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("Materialize failed")
            await context.abort(code, f"internal error: {type(error).__name__}: {error}")
        finally:
            for stream in streams:
                if not stream.done:
                    loop.run_in_executor(self._executor, stream.close)
            self._active -= 1
            self.metrics.active_streams.dec()
            self.metrics.bytes_streamed.inc(sent)
            if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
                self._finish("Materialize", code, started)
            log.info(
                "Materialize",
                extra={
                    "rpc": "Materialize",
                    "code": code.name,
                    "peer": peer,
                    "variables": len(request.variables),
                    "bytes": sent,
                    "seconds": round(time.perf_counter() - started, 4),
                },
            )

    # -- sessions ------------------------------------------------------------------------------

    async def OpenSession(self, request: pb.OpenSessionRequest, context):  # noqa: N802
        started = time.perf_counter()
        await self._refuse_malformed(request, context, "OpenSession", started, fields=True)
        try:
            init = initializer_from_proto(request.default_initializer, "default_initializer")
            if init is not None:
                try:
                    eng.initializers.parameters(init)
                except eng.SpecError as e:  # the engine names the field of a variable's initializer
                    raise eng.SpecError("default_" + e.field, e.message) from None
            dtype = dtype_from_proto(request.default_dtype, "float32", "default_dtype")
        except eng.SpecError as e:
            await self._refuse(
                context, "OpenSession", started, RequestError(grpc.StatusCode.INVALID_ARGUMENT, e.describe())
            )
        if request.rng_mode not in (pb.RNG_MODE_UNSPECIFIED, pb.RNG_MODE_BY_NAME, pb.RNG_MODE_SEQUENTIAL):
            await self._refuse(
                context,
                "OpenSession",
                started,
                RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"rng_mode: unknown RngMode value {request.rng_mode}"),
            )
        ttl = request.ttl_seconds or self.config.session_ttl_seconds
        if ttl > self.config.max_session_ttl_seconds:
            await self._refuse(
                context,
                "OpenSession",
                started,
                RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"ttl_seconds: {ttl} exceeds the server's maximum {self.config.max_session_ttl_seconds}",
                ),
            )
        try:
            session = self.sessions.open(
                seed=request.seed or eng.rng.random_seed(),
                sequential=request.rng_mode == pb.RNG_MODE_SEQUENTIAL,
                default_initializer=init,
                default_initializer_proto=request.default_initializer if init is not None else None,
                default_dtype=dtype,
                ttl_seconds=ttl,
            )
        except TooManySessionsError as e:
            await self._refuse(
                context,
                "OpenSession",
                started,
                RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e} (--max-sessions)", "sessions"),
            )
        self.metrics.open_sessions.set(len(self.sessions))
        self._finish("OpenSession", grpc.StatusCode.OK, started)
        expire = timestamp_pb2.Timestamp()
        expire.FromSeconds(int(time.time() + ttl))
        return pb.Session(
            session_id=session.session_id,
            seed=session.seed,
            rng_mode=pb.RNG_MODE_SEQUENTIAL if session.sequential else pb.RNG_MODE_BY_NAME,
            default_initializer=session.default_initializer_proto,
            default_dtype=wire.dtype_enum(dtype),
            ttl_seconds=ttl,
            expire_time=expire,
        )

    async def CloseSession(self, request: pb.CloseSessionRequest, context):  # noqa: N802
        started = time.perf_counter()
        await self._refuse_malformed(request, context, "CloseSession", started, fields=True)
        try:
            session = self.sessions.close(request.session_id)
        except SessionNotFoundError:
            await self._refuse(
                context,
                "CloseSession",
                started,
                RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"session_id: no open session {request.session_id!r} (unknown, closed or expired)",
                ),
            )
        self.metrics.open_sessions.set(len(self.sessions))
        self._finish("CloseSession", grpc.StatusCode.OK, started)
        return pb.CloseSessionResponse(sequence_length=session.next_index if session.sequential else 0)

    async def expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sessions.expire()
            self.metrics.open_sessions.set(len(self.sessions))

    # -- discovery -----------------------------------------------------------------------------

    async def ListInitializers(self, request, context):  # noqa: N802
        started = time.perf_counter()
        await self._refuse_malformed(request, context, "ListInitializers", started)
        response = list_initializers()
        self._finish("ListInitializers", grpc.StatusCode.OK, started)
        return response


def list_initializers() -> pb.ListInitializersResponse:
    """Every initializer of the Initializer oneof, described from the engine's registry."""
    kinds = pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields
    inexact = [v for v, (name, _) in wire.DTYPES.items() if eng.dtypes.lookup(name).is_inexact]
    infos = []
    for field in kinds:
        definition = eng.REGISTRY[field.name]
        defaults = {p.name: p for p in definition.params}
        params = []
        for f in field.message_type.fields:
            p = defaults[f.name]
            if f.enum_type is not None:
                type_name = f.enum_type.name
            elif f.message_type is not None:
                type_name = f.message_type.name
            else:
                type_name = {f.TYPE_DOUBLE: "double", f.TYPE_INT32: "int32"}.get(f.type, str(f.type))
            params.append(
                pb.ParameterInfo(
                    name=f.name,
                    type=type_name,
                    default_value="" if p.default is None else str(p.default),
                    description=p.doc,
                    choices=list(p.choices),
                )
            )
        infos.append(
            pb.InitializerInfo(
                name=field.name,
                json_name=field.json_name,
                formula=definition.formula,
                parameters=params,
                random=definition.random,
                fan_based=definition.fan_based,
                value_dtypes=inexact if definition.random else list(wire.DTYPES),
            )
        )
    return pb.ListInitializersResponse(initializers=infos, dtypes=list(wire.DTYPES), generator=eng.GENERATOR)


def _handlers(service: WeightGenService) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            # The identity response serializer: Materialize yields already serialized TensorChunks.
            "Materialize": grpc.unary_stream_rpc_method_handler(
                service.Materialize, request_deserializer=_parse(pb.MaterializeRequest), response_serializer=None
            ),
            "OpenSession": grpc.unary_unary_rpc_method_handler(
                service.OpenSession, _parse(pb.OpenSessionRequest), pb.Session.SerializeToString
            ),
            "CloseSession": grpc.unary_unary_rpc_method_handler(
                service.CloseSession, _parse(pb.CloseSessionRequest), pb.CloseSessionResponse.SerializeToString
            ),
            "ListInitializers": grpc.unary_unary_rpc_method_handler(
                service.ListInitializers,
                _parse(pb.ListInitializersRequest),
                pb.ListInitializersResponse.SerializeToString,
            ),
        },
    )


class Server:
    """A running weightgen server: gRPC, health, reflection, metrics, warm-up and draining."""

    def __init__(self, config: Config, engine: eng.Engine | None = None):
        self.config = config
        self._engine = engine
        self.metrics = Metrics.create()
        self.port = 0
        self.metrics_port = 0
        self.health = health.aio.HealthServicer()
        self.exit_code = 0
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        c = self.config
        if self._engine is None:
            devices = None
            if c.devices != "auto":
                import jax

                devices = jax.devices()[: int(c.devices)]
            self._engine = eng.Engine(
                eng.WorkerPool(devices, threads_per_device=c.threads_per_device, cache_bytes=c.cache_bytes),
                max_structured_elements=c.max_structured_elements,
            )
        self.service = WeightGenService(c, self._engine, self.metrics, SessionStore(c.max_sessions))
        self.metrics.watch_pool(self._engine.pool)
        interceptors = [_Auth(load_tokens(c.auth_token_file), self._denied)] if c.auth_token_file else []
        options = [
            ("grpc.max_receive_message_length", c.max_request_bytes),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(
            interceptors=interceptors, options=options, compression=grpc.Compression.NoCompression
        )
        self.server.add_generic_rpc_handlers((_handlers(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.server
        )
        address = f"{c.host}:{c.port}" if ":" not in c.host else f"[{c.host.strip('[]')}]:{c.port}"
        if c.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())],
                root_certificates=Path(c.tls_client_ca).read_bytes() if c.tls_client_ca else None,
                require_client_auth=bool(c.tls_client_ca),
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise SystemExit(f"weightgen: cannot bind {address}")
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        if c.metrics_port:
            self.metrics_port = self.metrics.serve(c.host.strip("[]"), max(0, c.metrics_port))
        if c.port_file:
            Path(c.port_file).write_text(json.dumps({"port": self.port, "metrics_port": self.metrics_port}))
        log.info(
            "listening",
            extra={
                "address": f"{c.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "devices": [str(d) for d in self._engine.pool.devices],
                "tls": bool(c.tls_cert),
                "auth": bool(c.auth_token_file),
            },
        )
        self._tasks.append(asyncio.create_task(self._warm()))
        self._tasks.append(asyncio.create_task(self.service.expire_sessions()))

    def _denied(self, method: str) -> None:
        """Count a call refused for its token, like any other RPC that ended in an error."""
        name = method.rsplit("/", 1)[-1]
        self.metrics.requests.labels(name, "UNAUTHENTICATED").inc()
        self.metrics.errors.labels(name, "UNAUTHENTICATED").inc()

    async def _warm(self) -> None:
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            count = await loop.run_in_executor(None, self._engine.warm, self.config.warm_list())
        except Exception:
            # Serving wrong values, or never becoming ready, is worse than exiting where it shows.
            log.critical("warm-up failed; stopping", exc_info=True)
            self.exit_code = 1
            asyncio.get_running_loop().create_task(self.stop(grace=0))
            return
        if self.service.draining:
            return
        self.service.ready = True
        self.metrics.ready.set(1)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready", extra={"programs": count, "seconds": round(time.perf_counter() - t, 3)})

    async def wait_ready(self) -> None:
        while not self.service.ready:
            await asyncio.sleep(0.05)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING at once, refuse new streams, let in-flight ones finish within `grace`."""
        if self._stopped.is_set():
            return
        self.service.draining = True
        self.service.ready = False
        self.metrics.ready.set(0)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.config.grace_seconds if grace is None else grace
        log.info("draining", extra={"grace_seconds": grace, "active_streams": self.service.active})
        # Keep answering while streams finish, so health checks read NOT_SERVING (and new streams get
        # UNAVAILABLE from the service) instead of finding the port closed; then stop the server
        # with what is left of the grace period for anything still running.
        deadline = asyncio.get_running_loop().time() + grace
        while self.service.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.server.stop(max(0.0, deadline - asyncio.get_running_loop().time()))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.service.close()
        self.metrics.stop()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
