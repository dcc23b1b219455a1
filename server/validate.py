"""From a MaterializeRequest to prepared engine work, validating the whole batch first.

Every problem becomes a `RequestError` with its gRPC status and a message naming the variable index,
its name and the field, raised before a single byte is streamed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc
from google.protobuf import unknown_fields

from weightgen.server import engine as eng
from weightgen.server.config import Config
from weightgen.server.engine import rng
from weightgen.server.sessions import Session, SessionNotFoundError, SessionStore
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, limit: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.limit = limit  # the configured limit that refused it, for metrics


class _Limit(eng.LimitError):
    """A configured limit of the service, with the name its rejections are counted under."""

    def __init__(self, limit: str, field: str, message: str):
        super().__init__(field, message)
        self.limit = limit


@dataclass(frozen=True)
class Work:
    """One validated variable: what to generate and where to start sending."""

    index: int
    prepared: eng.Prepared
    resume_offset: int


def _unknown(message, path: str) -> None:
    fields = unknown_fields.UnknownFieldSet(message)
    if len(fields):
        numbers = sorted({f.field_number for f in fields})
        raise eng.SpecError(path, f"unknown field number(s) {numbers} (is the client newer than the server?)")


def reject_unknown_fields(message, path: str) -> None:
    """SpecError when `message` itself carries fields this server does not know."""
    _unknown(message, path)


def _enum_choice(field, value: int, path: str) -> str | None:
    """An enum parameter as the engine names it (FAN_MODE_FAN_IN -> 'fan_in'); None = default."""
    if value == 0:
        return None
    described = field.enum_type.values_by_number.get(value)
    if described is None:
        raise eng.SpecError(path, f"unknown {field.enum_type.name} value {value}")
    prefix = field.enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return described.name.removeprefix(prefix).lower()


def dtype_from_proto(value: int, default: str, path: str = "dtype") -> str:
    if value == pb.DTYPE_UNSPECIFIED:
        return default
    if value not in wire.DTYPES:
        raise eng.SpecError(path, f"unknown DType value {value}")
    return wire.dtype_name(value)


def initializer_from_proto(message: pb.Initializer, path: str = "initializer") -> eng.Initializer | None:
    """The engine's Initializer for `message`; None when no kind is set (use the default)."""
    _unknown(message, path)
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    body = getattr(message, kind)
    _unknown(body, f"{path}.{kind}")
    params = {}
    for field, value in body.ListFields():
        where = f"{path}.{kind}.{field.name}"
        if field.enum_type is not None:
            choice = _enum_choice(field, value, where)
            if choice is not None:
                params[field.name] = choice
        elif field.message_type is not None:  # the broadcast base
            _unknown(value, where)
            if value.dtype == pb.DTYPE_UNSPECIFIED:
                raise eng.SpecError(f"{where}.dtype", "is required")
            params[field.name] = eng.BaseTensor(
                dtype_from_proto(value.dtype, "", f"{where}.dtype"), tuple(value.shape), bytes(value.data)
            )
        else:
            params[field.name] = value
    axes = eng.FanAxes()
    if message.HasField("fan_axes"):
        f = message.fan_axes
        _unknown(f, f"{path}.fan_axes")
        layout = _enum_choice(pb.FanAxes.DESCRIPTOR.fields_by_name["layout"], f.layout, f"{path}.fan_axes.layout")
        axes = eng.FanAxes(tuple(f.in_axes), tuple(f.out_axes), tuple(f.batch_axes), layout or "channels_last")
    return eng.Initializer(kind, params, axes)


def validate_request(
    request: pb.MaterializeRequest, engine: eng.Engine, sessions: SessionStore, config: Config
) -> tuple[list[Work], Session | None]:
    """The batch as prepared work, or RequestError for the first problem found."""
    bad = grpc.StatusCode.INVALID_ARGUMENT
    try:
        _unknown(request, "request")
    except eng.SpecError as e:
        raise RequestError(bad, e.describe()) from None
    if not request.variables:
        raise RequestError(bad, "variables: the batch is empty")
    if len(request.variables) > config.max_variables_per_request:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"variables: {len(request.variables)} variables exceed the server's limit of "
            f"{config.max_variables_per_request} per request (--max-variables-per-request)",
            "variables_per_request",
        )
    if request.chunk_bytes > wire.MAX_CHUNK_BYTES:
        raise RequestError(bad, f"chunk_bytes: {request.chunk_bytes} exceeds the maximum {wire.MAX_CHUNK_BYTES}")
    session = None
    if request.session_id:
        if request.seed:
            raise RequestError(bad, "seed: must be 0 when session_id names a session (the session's seed applies)")
        try:
            session = sessions.get(request.session_id)
        except SessionNotFoundError:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"session_id: no open session {request.session_id!r} (unknown, closed or expired)",
            ) from None
    batch_seed = session.seed if session else (request.seed or rng.random_seed())
    default_dtype = session.default_dtype if session else "float32"

    work: list[Work] = []
    names: dict[str, int] = {}
    total_bytes = 0
    sequential: list[int] = []  # positions in `work` that take the session's next sequence indexes
    for index, variable in enumerate(request.variables):
        name = variable.name
        try:
            _unknown(variable, "variable")
            if name in names:
                raise eng.SpecError("name", f"duplicates variables[{names[name]}]")
            names[name] = index
            shape = tuple(variable.shape)
            elements = eng.check_shape(shape)
            if elements > config.max_elements_per_variable:
                raise _Limit(
                    "elements_per_variable",
                    "shape",
                    f"{elements} elements exceed the server's limit of {config.max_elements_per_variable} per variable "
                    "(--max-elements-per-variable)",
                )
            dtype = dtype_from_proto(variable.dtype, default_dtype)
            init = initializer_from_proto(variable.initializer)
            if init is None and session is not None:
                init = session.default_initializer
            if variable.HasField("sequence_index") and not (session and session.sequential and not variable.seed):
                raise eng.SpecError("sequence_index", "applies only to a sequential session without a variable seed")
            spec = eng.VariableSpec(
                name=name,
                shape=shape,
                dtype=dtype,
                initializer=init,
                seed=variable.seed,
                slice=tuple((r.start, r.stop) for r in variable.slice),
            )
            seed = variable.seed or batch_seed
            placeholder = (0, 0) if session and session.sequential and not variable.seed else None
            prepared = engine.prepare(spec, seed=seed, key=placeholder)
            if not 0 <= variable.resume_offset <= prepared.info.byte_size:
                raise eng.SpecError(
                    "resume_offset", f"{variable.resume_offset} is outside [0, {prepared.info.byte_size}]"
                )
        except eng.LimitError as e:
            # The engine's own limit is that of whole-tensor (structured) initializers.
            limit = e.limit if isinstance(e, _Limit) else "structured_elements"
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, e.at(index, name).describe(), limit) from None
        except eng.SpecError as e:
            raise RequestError(bad, e.at(index, name).describe()) from None
        if placeholder is not None:
            if not prepared.is_random:
                prepared = replace(prepared, key=rng.variable_key(seed, name))  # unused: consumes no randomness
            elif variable.HasField("sequence_index"):
                prepared = _at_position(prepared, seed, variable.sequence_index)
            else:
                sequential.append(len(work))
        total_bytes += prepared.info.byte_size
        work.append(Work(index, prepared, variable.resume_offset))

    if total_bytes > config.max_bytes_per_request:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"variables: the batch delivers {total_bytes} bytes, more than the server's limit of "
            f"{config.max_bytes_per_request} per request (--max-bytes-per-request)",
            "bytes_per_request",
        )
    if sequential:
        try:
            start = session.reserve(len(sequential))
        except OverflowError as e:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"session_id: {e}", "session_sequence") from None
        for n, position in enumerate(sequential):
            w = work[position]
            work[position] = replace(w, prepared=_at_position(w.prepared, session.seed, start + n))
    return work, session


def _at_position(prepared: eng.Prepared, seed: int, index: int) -> eng.Prepared:
    info = replace(prepared.info, sequence_index=index)
    return replace(prepared, key=rng.sequential_key(seed, index), info=info)
