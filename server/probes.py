"""Health and server reflection with limits, so that no client can stall or exhaust them.

Both are open or cheap by design, and both are streams a client may hold for as long as it likes:
a health Watch lasts until the client goes (it is how a client follows readiness), and a
reflection stream lasts until the client half-closes it. Each held stream is a task and a little
memory on the server; without a bound, one client opening streams in a loop grows the server
without end. Here:

- `HealthServicer`: grpc_health's asyncio servicer with at most `max_watchers` Watch streams at
  once (RESOURCE_EXHAUSTED past it, naming the limit); Check is unchanged.
- `ReflectionServicer`: grpcio-reflection's asyncio servicer with at most `max_streams` streams at
  once (RESOURCE_EXHAUSTED past it), a stream closed after `idle_seconds` without a request, and
  an immediate `error_response` (INVALID_ARGUMENT, saying what is wrong) for a request that sets
  no `message_request` or whose bytes are not a ServerReflectionRequest at all.
- `install`: both on a grpc.aio server, counted in the server's metrics when given them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

import grpc
from google.protobuf import message as protobuf_message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client.core import GaugeMetricFamily

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE = reflection.SERVICE_NAME

_REQUEST = reflection_pb2.ServerReflectionRequest.DESCRIPTOR
_KINDS = tuple(f.name for f in _REQUEST.oneofs_by_name["message_request"].fields)


class HealthServicer(health.aio.HealthServicer):
    """grpc_health's asyncio servicer with a bound on Watch streams in progress at once.

    `refused` (optional, also settable later) is called once for every Watch refused for the
    limit (a metric)."""

    def __init__(self, max_watchers: int = 256, refused: Callable[[], None] | None = None):
        if max_watchers <= 0:
            raise ValueError("max_watchers must be positive")
        super().__init__()
        self.max_watchers = max_watchers
        self.refused = refused
        self._watchers = 0

    @property
    def watchers(self) -> int:
        """Watch streams in progress."""
        return self._watchers

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:  # noqa: N802
        if self._watchers >= self.max_watchers:
            if self.refused is not None:
                self.refused()
            await context.abort(
                RESOURCE_EXHAUSTED,
                f"{self._watchers} health Watch streams are in progress, the server's limit is "
                f"{self.max_watchers} (--max-health-watchers); poll with Check instead",
            )
        self._watchers += 1
        try:
            await super().Watch(request, context)
        finally:
            self._watchers -= 1


class _Malformed:
    """What the request deserializer gives for bytes that are not a ServerReflectionRequest."""

    def __init__(self, error: Exception):
        self.message = f"request: not a valid {_REQUEST.full_name}: {error}"


def _parse(data: bytes):
    try:
        return reflection_pb2.ServerReflectionRequest.FromString(data)
    except protobuf_message.DecodeError as error:
        return _Malformed(error)


def _error(message: str, request=None) -> reflection_pb2.ServerReflectionResponse:
    return reflection_pb2.ServerReflectionResponse(
        error_response=reflection_pb2.ErrorResponse(error_code=INVALID_ARGUMENT.value[0], error_message=message),
        original_request=request,
    )


async def _one(request) -> AsyncIterator:
    yield request


class ReflectionServicer(reflection.aio.ReflectionServicer):
    """grpcio-reflection's asyncio servicer with a bound on streams in progress, an idle timeout,
    and a clear answer to a request that asks nothing.

    Every well-formed request that names what it asks for goes to the library's servicer, one at
    a time, and is answered exactly as before. `refused` (optional) is called once for every stream
    refused for the limit (a metric).

    What grpcio-reflection 1.85.1 does alone: a request with no `message_request` already gets an
    `error_response` at once, but with only gRPC's generic "invalid argument"; bytes that are not a
    request end the call with UNKNOWN ("Unexpected DecodeError"); and nothing ends a stream whose
    client sends nothing, or never half-closes after its last request (a client waiting for the
    call's end rather than for the response waits for its deadline, or for ever without one).
    """

    def __init__(
        self,
        service_names: Iterable[str],
        pool=None,
        *,
        max_streams: int = 16,
        idle_seconds: float = 60.0,
        refused: Callable[[], None] | None = None,
    ):
        if max_streams <= 0 or idle_seconds <= 0:
            raise ValueError("max_streams and idle_seconds must be positive")
        super().__init__(service_names, pool=pool)
        self.max_streams = max_streams
        self.idle_seconds = idle_seconds
        self._refused = refused
        self._streams = 0

    @property
    def streams(self) -> int:
        """Reflection streams in progress."""
        return self._streams

    async def ServerReflectionInfo(self, request_iterator, context):  # noqa: N802
        if self._streams >= self.max_streams:
            if self._refused is not None:
                self._refused()
            await context.abort(
                RESOURCE_EXHAUSTED,
                f"{self._streams} reflection streams are in progress, the server's limit is "
                f"{self.max_streams} (--max-reflection-streams)",
            )
        self._streams += 1
        try:
            requests = aiter(request_iterator)
            while True:
                try:
                    request = await asyncio.wait_for(anext(requests), self.idle_seconds)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no reflection request for {self.idle_seconds:g} s: idle reflection streams are closed",
                    )
                if isinstance(request, _Malformed):
                    yield _error(request.message)
                elif request.WhichOneof("message_request") is None:
                    yield _error("request: sets none of " + ", ".join(_KINDS), request)
                else:
                    async for response in super().ServerReflectionInfo(_one(request), context):
                        yield response
        finally:
            self._streams -= 1


def add_reflection(
    server: grpc.aio.Server,
    service_names: Iterable[str],
    *,
    max_streams: int = 16,
    idle_seconds: float = 60.0,
    refused: Callable[[], None] | None = None,
) -> ReflectionServicer:
    """Register server reflection (grpc.reflection.v1alpha, the only version grpcio-reflection
    serves) for `service_names`, plus reflection itself, with the limits of `ReflectionServicer`."""
    names = tuple(service_names)
    if REFLECTION_SERVICE not in names:
        names += (REFLECTION_SERVICE,)
    servicer = ReflectionServicer(names, max_streams=max_streams, idle_seconds=idle_seconds, refused=refused)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=_parse,  # corrupt bytes: an error_response, not UNKNOWN
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_SERVICE, handlers),))
    server.add_registered_method_handlers(REFLECTION_SERVICE, handlers)  # as generated code registers
    return servicer


def install(
    server: grpc.aio.Server,
    service_names: Iterable[str],
    *,
    max_reflection_streams: int = 16,
    max_health_watchers: int = 256,
    reflection_idle_seconds: float = 60.0,
    health_servicer: HealthServicer | None = None,
    metrics=None,
) -> HealthServicer:
    """Health and reflection on `server`, with their limits; returns the health servicer.

    `service_names` are the application's services; health and reflection are added to what
    reflection lists. Pass `health_servicer` to install one made earlier (its `max_watchers` then
    stands; `max_health_watchers` is ignored). With `metrics` (a `weightgen.server.metrics.Metrics`), refusals count in
    `weightgen_limit_rejections_total{limit="health_watchers"|"reflection_streams"}` and
    `weightgen_health_watchers` and `weightgen_reflection_streams` report the streams in progress.
    """

    def counter(limit: str):
        if metrics is None:
            return None
        return lambda: metrics.limit_rejections.labels(limit).inc()

    if health_servicer is None:
        health_servicer = HealthServicer(max_health_watchers, refused=counter("health_watchers"))
    elif health_servicer.refused is None:
        health_servicer.refused = counter("health_watchers")
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*service_names, HEALTH_SERVICE)
    reflector = add_reflection(
        server,
        names,
        max_streams=max_reflection_streams,
        idle_seconds=reflection_idle_seconds,
        refused=counter("reflection_streams"),
    )
    if metrics is not None:
        metrics.registry.register(_ProbeCollector(health_servicer, reflector))
    return health_servicer


class _ProbeCollector:
    def __init__(self, health_servicer: HealthServicer, reflector: ReflectionServicer):
        self._health = health_servicer
        self._reflector = reflector

    def collect(self):
        yield GaugeMetricFamily(
            "weightgen_health_watchers", "Health Watch streams in progress", value=self._health.watchers
        )
        yield GaugeMetricFamily(
            "weightgen_reflection_streams", "Server reflection streams in progress", value=self._reflector.streams
        )
