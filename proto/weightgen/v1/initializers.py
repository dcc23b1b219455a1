"""The initializer kinds of the API, and the one fact about them that clients need before asking:
which kinds read ``Initializer.fan_axes``.

A client that fills a model in its framework's layout (PyTorch's ``[out, in, spatial...]``) sets
``fan_axes.layout`` on exactly these kinds: the fan-based ones (fans from the in/out axes) and the
convolution-kernel ones (``dirac``, ``delta_orthogonal``: which axes are in, out and spatial).
tests/engine/test_kinds.py checks this list against what the server's engine does with a layout.
"""

from __future__ import annotations

from . import weightgen_pb2 as pb

KINDS: tuple[str, ...] = tuple(f.name for f in pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields)
"""Every initializer kind: the fields of the Initializer oneof, in the .proto's order."""

FAN_AXES_KINDS: frozenset[str] = frozenset(
    {
        "glorot_uniform",
        "glorot_normal",
        "xavier_uniform",
        "xavier_normal",
        "he",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "lecun_uniform",
        "variance_scaling",
        "kaiming_uniform",
        "kaiming_normal",
        "dirac",
        "delta_orthogonal",
    }
)
"""The kinds whose values depend on ``fan_axes`` (its layout or explicit axes)."""

if not set(KINDS) >= FAN_AXES_KINDS:  # pragma: no cover - a renamed kind fails at import
    raise ImportError(f"FAN_AXES_KINDS names kinds the API lacks: {sorted(FAN_AXES_KINDS - set(KINDS))}")
