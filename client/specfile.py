"""Spec files for ``weightgen fetch``: a MaterializeRequest in protobuf JSON, or a compact shorthand.

The form is detected from ``variables``: a list is protobuf JSON (the API's own form, what every
language's protobuf library reads)::

    {"seed": "42", "variables": [{"name": "fc1.weight", "shape": ["256", "784"], "dtype": "DTYPE_FLOAT32",
      "initializer": {"heNormal": {}, "fanAxes": {"layout": "FAN_LAYOUT_CHANNELS_FIRST"}}}]}

an object is the shorthand, one entry per variable, in file order::

    {
      "seed": 42,                       # optional; 0 or absent: the server picks one
      "dtype": "bfloat16",              # optional default dtype (else float32)
      "layout": "channels_first",       # optional default fan layout for fan-based initializers
      "init": "zeros",                  # optional default initializer
      "variables": {
        "wte.weight": "50257x768 normal(stddev=0.02)",
        "h.0.ln_1.weight": "768 ones",
        "conv1.weight": "64x3x7x7 kaiming_normal(mode=fan_out, nonlinearity=relu) float32 channels_first",
        "bn1.num_batches_tracked": "scalar zeros int64",
        "fc.weight": {"shape": [1000, 2048], "init": {"heNormal": {}}, "slice": [[0, 500], [0, 2048]], "seed": 7}
      }
    }

A shorthand string is ``SHAPE [INITIALIZER] [DTYPE] [LAYOUT] [seed=N]``: SHAPE is ``AxBxC``, one
number, or ``scalar``; INITIALIZER is a name or ``name(param=value, ...)`` (as `specs.parse_initializer`
reads it), and may be left out when there is a default ``init``. The object form takes ``shape``,
``init`` (string or protobuf JSON), ``dtype``, ``layout``, ``seed`` and ``slice`` ([start, stop] per axis).

Either form may have a top-level ``"zeroRows": {"name": [row, ...]}``: rows (of the full tensor's
axis 0) the client sets to zero after the fetch, as a model's own init zeroes an Embedding's padding
row (``weightgen spec --hf-config`` writes them). They are not part of the request: `read_spec`
returns them beside it, and the file's manifest records them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire
from weightgen.v1.initializers import FAN_AXES_KINDS, KINDS

from .files import check_zero_rows
from .specs import as_int, did_you_mean, dtype_value, enum_value, initializer, reject_booleans, slice_ranges

_LAYOUTS = ("channels_first", "channels_last")
_WITHOUT_FANS = frozenset(KINDS) - FAN_AXES_KINDS
"""Initializer kinds a default layout does not apply to (they use no fans)."""
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\([^)]*\)|\S+")
_SHAPE = re.compile(r"^(scalar|\d+(?:x\d+)*)$")


class SpecFileError(ValueError):
    """A spec file that cannot be read as a request; the message names the variable and problem."""


@dataclass(frozen=True)
class Spec:
    """A spec file: its `request`, and the `zero_rows` (``{name: [row, ...]}``) to zero after the fetch."""

    request: pb.MaterializeRequest
    zero_rows: dict[str, list[int]] = field(default_factory=dict)


def read_spec(path: str | os.PathLike) -> Spec:
    """The request in a spec file (either form) and its zero rows."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SpecFileError(f"{path}: not valid JSON: {e}") from None
    try:
        return spec_from_dict(data)
    except SpecFileError as e:
        raise SpecFileError(f"{path}: {e}") from None


def load_spec(path: str | os.PathLike) -> pb.MaterializeRequest:
    """The MaterializeRequest in a spec file (either form); SpecFileError if the file has zero
    rows, which a request cannot hold (read it with `read_spec`)."""
    return _request_only(read_spec(path), path)


def parse_spec(data: Mapping[str, Any]) -> pb.MaterializeRequest:
    """A MaterializeRequest from a decoded spec file (either form); see `load_spec`."""
    return _request_only(spec_from_dict(data), "the spec")


def _request_only(spec: Spec, where: Any) -> pb.MaterializeRequest:
    if spec.zero_rows:
        raise SpecFileError(
            f"{where}: has zeroRows ({', '.join(spec.zero_rows)}), which a MaterializeRequest cannot hold: "
            "read it with read_spec (weightgen fetch does)"
        )
    return spec.request


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """A Spec from a decoded spec file (either form)."""
    if not isinstance(data, Mapping):
        raise SpecFileError("the spec must be a JSON object")
    data = dict(data)
    rows = data.pop("zeroRows", None)
    request = _request(data)
    try:
        return Spec(request, check_zero_rows(request.variables, rows))
    except ValueError as e:
        raise SpecFileError(str(e)) from None


def _enum_hint(message: str) -> str:
    """For protobuf's "Invalid enum value X for enum type weightgen.v1.E": the valid names."""
    found = re.search(r"Invalid enum value (\S+) for enum type (weightgen\.v1\.\w+)", message)
    if not found:
        return ""
    value, enum_name = found.groups()
    enum = pb.DESCRIPTOR.enum_types_by_name.get(enum_name.rsplit(".", 1)[1])
    if enum is None:
        return ""
    names = [v.name for v in enum.values if v.number]
    hint = did_you_mean(value.strip('"'), names)
    return f"{hint}; valid names: {', '.join(names)}"


def _request(data: Mapping[str, Any]) -> pb.MaterializeRequest:
    variables = data.get("variables")
    if isinstance(variables, list):
        try:
            reject_booleans(data, pb.MaterializeRequest.DESCRIPTOR)
        except ValueError as e:
            raise SpecFileError(str(e)) from None
        try:
            return json_format.ParseDict(dict(data), pb.MaterializeRequest())
        except json_format.ParseError as e:
            raise SpecFileError(f"not a valid MaterializeRequest in protobuf JSON: {e}{_enum_hint(str(e))}") from None
    if isinstance(variables, Mapping):
        return _shorthand(data)
    raise SpecFileError('"variables" must be a list (protobuf JSON) or an object (shorthand)')


def _shape(value: Any) -> list[int]:
    if isinstance(value, str):
        if not _SHAPE.match(value):
            raise ValueError(f"shape {value!r}: expected e.g. 768x2304, 768 or scalar")
        return [] if value == "scalar" else [int(d) for d in value.split("x")]
    return [as_int(d, "shape") for d in value]


def _variable(name: str, value: Any, defaults: Mapping[str, Any]) -> pb.VariableSpec:
    fields: dict[str, Any] = {}
    if isinstance(value, str):
        tokens = _TOKEN.findall(value)
        if not tokens:
            raise ValueError("empty spec")
        fields["shape"] = tokens[0]
        for token in tokens[1:]:
            if token in _LAYOUTS:
                fields["layout"] = token
            elif token.startswith("seed="):
                fields["seed"] = int(token[5:])
            elif token in wire.BY_NAME or token.lower() in ("bf16", "f16", "f32", "f64"):
                fields["dtype"] = token
            elif "init" not in fields:
                fields["init"] = token
            else:
                raise ValueError(f"unexpected {token!r} (after the initializer: a dtype, a layout or seed=N)")
    elif isinstance(value, Mapping):
        fields = dict(value)
        if "initializer" in fields:
            fields["init"] = fields.pop("initializer")
        unknown = set(fields) - {"shape", "init", "dtype", "layout", "seed", "slice"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
    else:
        raise ValueError(f"expected a string or an object, got {type(value).__name__}")
    if "shape" not in fields:
        raise ValueError("no shape")
    shape = _shape(fields["shape"])
    spec = pb.VariableSpec(
        name=name,
        shape=shape,
        dtype=dtype_value(fields.get("dtype", defaults.get("dtype"))),
        seed=as_int(fields.get("seed", 0), "seed"),
        slice=slice_ranges([tuple(r) for r in fields["slice"]], shape) if fields.get("slice") else [],
    )
    message = initializer(fields.get("init", defaults.get("init")))
    if message is not None:
        message = _with_layout(message, fields.get("layout", defaults.get("layout")))
        spec.initializer.CopyFrom(message)
    return spec


def _with_layout(message: pb.Initializer, layout: str | None) -> pb.Initializer:
    if layout is None or message.HasField("fan_axes") or message.WhichOneof("kind") in _WITHOUT_FANS:
        return message
    out = pb.Initializer()
    out.CopyFrom(message)
    out.fan_axes.layout = enum_value(pb.FanLayout.DESCRIPTOR, layout)
    return out


def _shorthand(data: Mapping[str, Any]) -> pb.MaterializeRequest:
    unknown = set(data) - {"seed", "dtype", "layout", "init", "variables", "chunkBytes", "chunk_bytes", "comment"}
    if unknown:
        raise SpecFileError(f"unknown top-level keys {sorted(unknown)}")
    try:
        request = pb.MaterializeRequest(
            seed=as_int(data.get("seed", 0), "seed"),
            chunk_bytes=as_int(data.get("chunkBytes", data.get("chunk_bytes", 0)), "chunkBytes"),
        )
    except (ValueError, TypeError) as e:
        raise SpecFileError(str(e)) from None
    for name, value in data["variables"].items():
        try:
            request.variables.append(_variable(name, value, data))
        except (ValueError, TypeError) as e:
            raise SpecFileError(f"variable {name!r}: {e}") from None
    return request


__all__ = ["Spec", "SpecFileError", "load_spec", "parse_spec", "read_spec", "spec_from_dict"]
