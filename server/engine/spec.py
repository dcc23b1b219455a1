"""What a client asks for, as plain immutable values, and the one error type for asking wrongly.

The service translates protobuf messages into these; the engine never sees protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MAX_NAME_BYTES = 1024
MAX_RANK = 32
ECHO_CHARS = 64
"""The most characters of a client's string that an error message or log line repeats."""


def echo(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` quoted for a message, cut to `limit` characters with its full length stated: a client
    string of any size (a 60 MB name) must not make a status undeliverable or a log line huge."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class SpecError(ValueError):
    """An invalid variable spec. `field` is the path of the offending field inside the variable
    (e.g. ``initializer.random_uniform.min``); the service maps this to INVALID_ARGUMENT."""

    def __init__(self, field: str, message: str, *, index: int | None = None, name: str | None = None):
        self.field = field
        self.message = message
        self.index = index
        self.name = name
        super().__init__(self.describe())

    def at(self, index: int, name: str) -> SpecError:
        """The same error, located at variable `index` called `name`."""
        return SpecError(self.field, self.message, index=index, name=name)

    def describe(self) -> str:
        where = ""
        if self.index is not None:
            where = f"variables[{self.index}]"
            if self.name is not None:
                where += f" ({echo(self.name)})"
            where += ": "
        return f"{where}{self.field}: {self.message}"


@dataclass(frozen=True)
class FanAxes:
    """Which axes hold the inputs and outputs of a weight, for fan computation.

    Empty axes mean "use the layout preset". `layout` is ``channels_last`` (GoMLX, JAX, Keras:
    ``[spatial..., in, out]``) or ``channels_first`` (PyTorch: ``[out, in, spatial...]``).
    Axes not named as in, out or batch are receptive-field axes; batch axes count in neither fan.
    """

    in_axes: tuple[int, ...] = ()
    out_axes: tuple[int, ...] = ()
    batch_axes: tuple[int, ...] = ()
    layout: str = "channels_last"


@dataclass(frozen=True)
class BaseTensor:
    """A tensor given by value (BroadcastTensorToShape's base): raw little-endian C-order bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class Initializer:
    """An initializer by name (`kind`, e.g. ``he_normal``) with its parameters; absent parameters
    take the defaults of `weightgen.server.engine.initializers`."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    fan_axes: FanAxes = FanAxes()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class VariableSpec:
    """One variable: its full shape and dtype, how to initialise it, and optionally the hyperslab
    to deliver (``slice``: one half-open ``(start, stop)`` per axis, or empty for the whole tensor).
    `seed` non-zero overrides the request's or session's seed for this variable."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    initializer: Initializer | None = None
    seed: int = 0
    slice: tuple[tuple[int, int], ...] = ()
