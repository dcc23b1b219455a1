"""The WeightGen servicer on grpc.aio: the path of each RPC, one stage per line.

    Materialize:  admit -> validate -> plan -> key -> generate + encode -> send

Requests arrive as raw bytes and are parsed off the event loop, after admission, so a refused call
costs no parsing. Every stage that computes (parsing, validation, planning, keying, generation,
encoding, hashing) runs on the executor or the worker pool; the event loop only moves bytes. Each
write is awaited, so a slow client holds back generation (backpressure) instead of the server
buffering the tensor; a client that reads nothing for --stream-idle-seconds is ended. A cancelled
call stops all its work: every stage checks the ticket's cancellation flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from weightgen.server import catalogue, seeds, validate
from weightgen.server import engine as eng
from weightgen.server.admission import PARSE_FACTOR, PER_VARIABLE_BYTES, Admission, Ticket
from weightgen.server.chunks import ChunkBoard
from weightgen.server.config import Config
from weightgen.server.digests import DigestBoard
from weightgen.server.encode import ChunkEncoder, EngineSource, Outgoing
from weightgen.server.metrics import Metrics
from weightgen.server.status import RequestError, exhausted, invalid, unavailable
from weightgen.v1 import weightgen_pb2 as pb

log = logging.getLogger("weightgen.server")

SERVICE = pb.DESCRIPTOR.services_by_name["WeightGen"].full_name


class _Call:
    """One RPC's bookkeeping: its status in the metrics and the log, and a `RequestError` raised by
    any stage turned into the call's gRPC status."""

    def __init__(self, metrics: Metrics, method: str, context: grpc.aio.ServicerContext):
        self.metrics = metrics
        self.method = method
        self.context = context
        # Read now: after a cancellation the call's peer may be freed (context.peer() then segfaults).
        self.peer = context.peer()
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.fields: dict[str, object] = {}

    async def __aenter__(self) -> _Call:
        return self

    async def __aexit__(self, kind, error, traceback) -> bool:
        refused = isinstance(error, RequestError)
        if refused:
            self.code = error.code
            if error.limit:
                self.metrics.limit_rejections.labels(error.limit).inc()
        elif isinstance(error, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
        elif error is not None and not isinstance(error, grpc.aio.AbortError):
            self.code = grpc.StatusCode.INTERNAL
            log.error("%s failed", self.method, exc_info=(kind, error, traceback))
        name = self.code.name
        self.metrics.requests.labels(self.method, name).inc()
        # A client that cancels (or whose deadline passes) is not a server error: those are counted
        # by weightgen_cancelled_streams and by weightgen_requests_total{code="CANCELLED"}.
        if self.code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            self.metrics.errors.labels(self.method, name).inc()
        seconds = time.perf_counter() - self.started
        self.metrics.request_seconds.labels(self.method).observe(seconds)
        extra = {"rpc": self.method, "code": name, "peer": self.peer, "seconds": round(seconds, 4), **self.fields}
        if refused:
            log.info("refused", extra={**extra, "detail": error.message})
            await self.context.abort(error.code, error.message)
        elif self.code is grpc.StatusCode.INTERNAL:
            await self.context.abort(self.code, f"internal error: {type(error).__name__}")
        elif self.method == "Materialize":
            log.info("Materialize", extra=extra)
        return False


class WeightGenService:
    def __init__(
        self, config: Config, engine: eng.Engine, metrics: Metrics, sessions: seeds.Sessions, admission: Admission
    ):
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.sessions = sessions
        metrics.open_sessions.set_function(lambda: len(sessions))  # read at scrape time
        self.admission = admission
        self.digests = DigestBoard(config.digest_cache_entries)
        metrics.watch_digests(self.digests)
        self.chunks = ChunkBoard(config.chunk_cache_bytes)
        metrics.watch_chunks(self.chunks)
        self.ready = False
        self.draining = False
        self._executor = ThreadPoolExecutor(
            max_workers=max(4, min(128, config.max_concurrent_streams + 4)), thread_name_prefix="weightgen-stream"
        )
        self._catalogue = catalogue.list_initializers()

    @property
    def active(self) -> int:
        """Materialize streams in progress."""
        return self.admission.active

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _offload(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _parse(self, message_type, raw: bytes):
        """A unary RPC's request, parsed off the loop once the budget has room for parsing it."""
        reservation = await self.admission.budget.reserve(len(raw) * PARSE_FACTOR, "requests", "parsing the request")
        try:
            return await self._offload(validate.parse, message_type, raw)
        finally:
            reservation.release()

    def _check_serving(self) -> None:
        if self.draining or not self.ready:
            why = "the server is draining" if self.draining else "the server is warming up"
            raise unavailable(f"{why}; retry on another replica or later")

    # -- Materialize ---------------------------------------------------------------------------

    async def Materialize(self, raw: bytes, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        async with _Call(self.metrics, "Materialize", context) as call:
            self._check_serving()
            async with self.admission.stream(call.peer, len(raw)) as ticket:
                self.metrics.active_streams.inc()
                try:
                    async with self.admission.validation():
                        request = await self._offload(validate.parse, pb.MaterializeRequest, raw)
                        call.fields["variables"] = len(request.variables)
                        batch = await self._offload(validate.materialize, request, self.config, ticket.cancelled)
                        del request
                        session = await self._offload(seeds.session_of, batch, self.sessions)
                        await ticket.reservation.grow_to(
                            ticket.reservation.nbytes + len(batch.variables) * PER_VARIABLE_BYTES, "planning the batch"
                        )
                        work = await self._offload(self._plan, batch, session, ticket.cancelled)
                        work = await self._offload(seeds.key, work, batch, session, self.sessions, ticket.cancelled)
                    holding = await self._offload(self._holding, work, batch.chunk_bytes)
                    await ticket.reservation.grow_to(ticket.reservation.nbytes + holding, "streaming the batch")
                    await self._send(call, context, ticket, batch, work, session)
                except asyncio.CancelledError:
                    if not ticket.evicted:
                        self.metrics.cancelled_streams.inc()
                        raise
                    # The idle watchdog cancelled us: end the call with a status it will read after
                    # the data already queued (an abort would wait for that data to be read).
                    getattr(asyncio.current_task(), "uncancel", int)()  # Python 3.11+: the cancel is spent
                    self.metrics.idle_streams_ended.inc()
                    call.code = grpc.StatusCode.DEADLINE_EXCEEDED
                    context.set_code(call.code)
                    context.set_details(
                        f"the server ended the stream: the client read nothing for "
                        f"{self.config.stream_idle_seconds:g} s (--stream-idle-seconds); resume with resume_offset"
                    )
                finally:
                    self.metrics.active_streams.dec()

    def _plan(self, batch: validate.Batch, session: seeds.Session | None, cancelled) -> list[eng.Prepared]:
        """Every variable resolved by the engine (its recipe, plan and sizes), or the first error."""
        work, total_bytes = [], 0
        for variable in batch.variables:
            validate.check_cancelled(cancelled)
            spec = seeds.with_defaults(variable.spec, session)
            try:
                prepared = self.engine.prepare(spec)
                if variable.resume_offset > prepared.info.byte_size:
                    raise eng.SpecError(
                        "resume_offset", f"{variable.resume_offset} is outside [0, {prepared.info.byte_size}]"
                    )
            except eng.LimitError as e:
                raise exhausted(e.limit, e.at(variable.index, spec.name).describe()) from None
            except eng.SpecError as e:
                raise invalid(e.at(variable.index, spec.name).describe()) from None
            total_bytes += prepared.info.byte_size
            work.append(prepared)
        if total_bytes > self.config.max_bytes_per_request:
            raise exhausted(
                "bytes_per_request",
                f"variables: the batch delivers {total_bytes} bytes, more than the server's limit of "
                f"{self.config.max_bytes_per_request} per request (--max-bytes-per-request)",
            )
        return work

    def _holding(self, work: list[eng.Prepared], chunk_bytes: int) -> int:
        """What streaming the batch holds at most: its largest variable's (they go one at a time)."""
        return max(self.engine.holding_bytes(p, chunk_bytes) for p in work)

    async def _send(
        self,
        call: _Call,
        context: grpc.aio.ServicerContext,
        ticket: Ticket,
        batch: validate.Batch,
        work: list[eng.Prepared],
        session: seeds.Session | None,
    ) -> None:
        """Generate, encode and write every variable in order."""
        # The first chunk of a sequential session's stream tells every variable's position.
        positions = tuple(p.info.sequence_index for p in work) if session is not None and session.sequential else ()
        call.fields["bytes"] = 0
        try:
            for variable, prepared in zip(batch.variables, work, strict=True):
                encoder = ChunkEncoder(
                    variable.index,
                    prepared,
                    batch.chunk_bytes,
                    EngineSource(self.engine, prepared, ticket.cancelled),
                    variable.resume_offset,
                    positions,
                    self.digests,
                    batch.digest,
                )
                positions = ()
                outgoing = Outgoing(encoder, self.chunks, ticket.cancelled)
                t0 = time.perf_counter()
                try:
                    sent = 0
                    # A message the board has ready goes without a trip to the executor.
                    while (message := outgoing.ready() or await self._offload(outgoing.next)) is not None:
                        ticket.writing_since = time.monotonic()
                        await _write(context, message)
                        ticket.writing_since = None
                        now = outgoing.sent_bytes()  # data, not framing
                        self.metrics.bytes_streamed.inc(now - sent)
                        call.fields["bytes"] += now - sent
                        sent = now
                finally:
                    if not outgoing.done:
                        # On a thread: a `next` in progress holds the stream until it returns.
                        with contextlib.suppress(RuntimeError):  # the executor is gone at shutdown
                            self._executor.submit(outgoing.close)
                self.metrics.variables_streamed.inc()
                self.metrics.elements_streamed.inc(prepared.plan.size)
                self.metrics.generation_seconds.observe(time.perf_counter() - t0)
        finally:
            ticket.writing_since = None

    # -- sessions ------------------------------------------------------------------------------

    async def OpenSession(self, raw: bytes, context) -> pb.Session:  # noqa: N802
        async with _Call(self.metrics, "OpenSession", context):
            if self.draining:
                raise unavailable("the server is draining; open the session on another replica or later")
            if len(raw) > self.config.max_session_bytes + OPEN_SESSION_FIELDS:  # not worth parsing
                raise invalid(
                    f"default_initializer: the request's {len(raw)} bytes exceed the server's limit of "
                    f"{self.config.max_session_bytes} per session (--max-session-bytes)"
                )
            request = await self._parse(pb.OpenSessionRequest, raw)
            payload = request.default_initializer.ByteSize()
            if payload > self.config.max_session_bytes:
                raise invalid(
                    f"default_initializer: {payload} bytes exceed the server's limit of "
                    f"{self.config.max_session_bytes} per session (--max-session-bytes)"
                )
            asked = await self._offload(validate.open_session, request, self.config)
            default = request.default_initializer if asked.default_initializer is not None else None
            # Nothing is stored: the id carries the session, signed (seeds.py).
            session = await self._offload(
                self.sessions.open, asked.seed, asked.sequential, default, asked.default_dtype, asked.ttl_seconds
            )
            return session

    async def CloseSession(self, raw: bytes, context) -> pb.CloseSessionResponse:  # noqa: N802
        async with _Call(self.metrics, "CloseSession", context):
            request = await self._parse(pb.CloseSessionRequest, raw)
            length = await self._offload(self.sessions.close, request.session_id)
            return pb.CloseSessionResponse(sequence_length=length)

    async def expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sessions.expire()

    # -- discovery -----------------------------------------------------------------------------

    async def ListInitializers(self, raw: bytes, context) -> pb.ListInitializersResponse:  # noqa: N802
        async with _Call(self.metrics, "ListInitializers", context):
            await self._parse(pb.ListInitializersRequest, raw)
            return self._catalogue


async def _write(context: grpc.aio.ServicerContext, message: bytes) -> None:
    try:
        await context.write(message)
    except asyncio.CancelledError:
        raise
    except Exception:
        # Writing bytes fails only when the call has ended under us (the client cancelled, its
        # deadline passed, its connection dropped); gRPC reports it as its internal
        # ExecuteBatchError, and its own streaming handlers treat that as a cancellation too.
        raise asyncio.CancelledError from None


OPEN_SESSION_FIELDS = 1 << 10
"""More than enough for an OpenSessionRequest's fields besides its default initializer."""


def handlers(service: WeightGenService) -> grpc.GenericRpcHandler:
    """The RPCs with identity deserializers (requests are parsed off the loop, after admission)
    and, for Materialize, writes of already serialized TensorChunks."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Materialize": grpc.unary_stream_rpc_method_handler(service.Materialize, None, None),
            "OpenSession": grpc.unary_unary_rpc_method_handler(service.OpenSession, None, pb.Session.SerializeToString),
            "CloseSession": grpc.unary_unary_rpc_method_handler(
                service.CloseSession, None, pb.CloseSessionResponse.SerializeToString
            ),
            "ListInitializers": grpc.unary_unary_rpc_method_handler(
                service.ListInitializers, None, pb.ListInitializersResponse.SerializeToString
            ),
        },
    )
