"""Requests from bytes to plain values: parse, then check everything that needs no session, no key
and no engine state. Pure functions of the request (and the configured limits), run off the event loop.

Every problem becomes a `RequestError` whose message names the variable index, its name and the
field. A request carrying fields this server does not know (a newer client) is refused rather than
half-understood.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from google.protobuf import message as protobuf_message
from google.protobuf import unknown_fields

from weightgen.server import engine as eng
from weightgen.server.config import Config
from weightgen.server.status import exhausted, invalid
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

MAX_LISTED_FIELDS = 8
"""Unknown field numbers named in a message (a hostile request may carry thousands)."""


def check_cancelled(cancelled: threading.Event | None) -> None:
    """Stop work for a request whose client has gone (called between variables)."""
    if cancelled is not None and cancelled.is_set():
        raise eng.Cancelled


def parse(message_type, raw: bytes):
    """The request message in `raw`; INVALID_ARGUMENT for bytes that are not one (corrupt wire
    format, invalid UTF-8 in a string) or that carry fields this server does not know."""
    try:
        request = message_type.FromString(raw)
    except protobuf_message.DecodeError as error:
        raise invalid(f"request: not a valid {message_type.DESCRIPTOR.full_name}: {error}") from None
    try:
        _unknown(request, "request")
    except eng.SpecError as e:
        raise invalid(e.describe()) from None
    return request


def _unknown(message, path: str) -> None:
    fields = unknown_fields.UnknownFieldSet(message)
    if len(fields):
        numbers = sorted({f.field_number for f in fields})
        listed = ", ".join(map(str, numbers[:MAX_LISTED_FIELDS])) + (
            ", ..." if len(numbers) > MAX_LISTED_FIELDS else ""
        )
        raise eng.SpecError(path, f"unknown field number(s) [{listed}] (is the client newer than the server?)")


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
    """The engine's Initializer for `message`, its parameters checked; None when no kind is set
    (the session's default applies)."""
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
    init = eng.Initializer(kind, params, axes)
    try:
        eng.initializers.parameters(init)
    except eng.SpecError as e:  # the engine names the field inside a variable's "initializer"
        raise eng.SpecError(path + e.field.removeprefix("initializer"), e.message) from None
    return init


# -- Materialize ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One variable as asked: `spec.dtype` is "" and `spec.initializer` None where the request
    leaves them to the session's defaults."""

    index: int
    spec: eng.VariableSpec
    resume_offset: int
    sequence_index: int | None  # an explicit position in a sequential session


@dataclass(frozen=True)
class Batch:
    session_id: str
    seed: int  # the request's seed (0: the session's, or pick one)
    chunk_bytes: int  # the largest data field of a chunk (0 in the request = the default)
    variables: tuple[Variable, ...]
    sequence_start: int | None = None  # a sequential session's position, carried by the client
    digest: str = wire.DIGEST_ALGORITHM  # "sha256" (the default), "xxh3_128" or "none"


def materialize(request: pb.MaterializeRequest, config: Config, cancelled: threading.Event | None = None) -> Batch:
    """The batch as plain values, or RequestError for the first problem found."""
    if not request.variables:
        raise invalid("variables: the batch is empty")
    if len(request.variables) > config.max_variables_per_request:
        raise exhausted(
            "variables_per_request",
            f"variables: {len(request.variables)} variables exceed the server's limit of "
            f"{config.max_variables_per_request} per request (--max-variables-per-request)",
        )
    chunk_bytes = request.chunk_bytes or wire.DEFAULT_CHUNK_BYTES
    if not wire.MIN_CHUNK_BYTES <= chunk_bytes <= wire.MAX_CHUNK_BYTES:
        raise invalid(
            f"chunk_bytes: {request.chunk_bytes} is outside [{wire.MIN_CHUNK_BYTES}, {wire.MAX_CHUNK_BYTES}] "
            "(0 = the default, 1 MiB)"
        )
    if request.session_id and request.seed:
        raise invalid("seed: must be 0 when session_id names a session (the session's seed applies)")
    try:
        digest = wire.digest_name(request.digest_algorithm)
    except KeyError:
        raise invalid(
            f"digest_algorithm: unknown value {request.digest_algorithm} "
            f"(0 = sha256, or one of {', '.join(f'{v} = {n}' for v, n in wire.DIGESTS.items())})"
        ) from None
    if request.HasField("sequence_start") and not request.session_id:
        raise invalid("sequence_start: applies only to a sequential session")
    variables = []
    names: dict[str, int] = {}
    for index, variable in enumerate(request.variables):
        check_cancelled(cancelled)
        try:
            variables.append(_variable(index, variable, names, config))
        except eng.LimitError as e:
            raise exhausted(e.limit, e.at(index, variable.name).describe()) from None
        except eng.SpecError as e:
            raise invalid(e.at(index, variable.name).describe()) from None
    start = request.sequence_start if request.HasField("sequence_start") else None
    return Batch(request.session_id, request.seed, chunk_bytes, tuple(variables), start, digest)


def _variable(index: int, variable: pb.VariableSpec, names: dict[str, int], config: Config) -> Variable:
    _unknown(variable, "variable")
    name = variable.name
    eng.validate_name(name)
    if name in names:
        raise eng.SpecError("name", f"duplicates variables[{names[name]}]")
    names[name] = index
    shape = tuple(variable.shape)
    elements = eng.check_shape(shape)
    if elements > config.max_elements_per_variable:
        raise eng.LimitError(
            "shape",
            f"{elements} elements exceed the server's limit of {config.max_elements_per_variable} per variable "
            "(--max-elements-per-variable)",
            limit="elements_per_variable",
        )
    spec = eng.VariableSpec(
        name=name,
        shape=shape,
        dtype=dtype_from_proto(variable.dtype, ""),
        initializer=initializer_from_proto(variable.initializer),
        seed=variable.seed,
        slice=tuple((r.start, r.stop) for r in variable.slice),
    )
    if variable.resume_offset < 0:
        raise eng.SpecError("resume_offset", f"{variable.resume_offset} is negative")
    sequence_index = variable.sequence_index if variable.HasField("sequence_index") else None
    if sequence_index is not None and variable.seed:
        raise eng.SpecError("sequence_index", "applies only to a sequential session without a variable seed")
    return Variable(index, spec, variable.resume_offset, sequence_index)


# -- OpenSession ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionRequest:
    seed: int  # 0: pick one
    sequential: bool
    default_initializer: eng.Initializer | None
    default_dtype: str
    ttl_seconds: int


def open_session(request: pb.OpenSessionRequest, config: Config) -> SessionRequest:
    try:
        init = initializer_from_proto(request.default_initializer, "default_initializer")
        dtype = dtype_from_proto(request.default_dtype, "float32", "default_dtype")
    except eng.SpecError as e:
        raise invalid(e.describe()) from None
    if request.rng_mode not in (pb.RNG_MODE_UNSPECIFIED, pb.RNG_MODE_BY_NAME, pb.RNG_MODE_SEQUENTIAL):
        raise invalid(f"rng_mode: unknown RngMode value {request.rng_mode}")
    ttl = request.ttl_seconds or config.session_ttl_seconds
    if ttl > config.max_session_ttl_seconds:
        raise invalid(f"ttl_seconds: {ttl} exceeds the server's maximum {config.max_session_ttl_seconds}")
    return SessionRequest(request.seed, request.rng_mode == pb.RNG_MODE_SEQUENTIAL, init, dtype, ttl)
