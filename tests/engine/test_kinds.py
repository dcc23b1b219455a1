"""weightgen.v1.initializers says which kinds read fan_axes; the engine is the authority. Every kind
of the API is generated with PyTorch's layout and with JAX's on a kernel whose fans differ between
the two: the values differ exactly for the kinds the catalogue lists."""

from __future__ import annotations

from engine_helpers import base_tensor, spec

from weightgen.server.engine import FanAxes
from weightgen.server.engine.initializers import REGISTRY
from weightgen.v1.initializers import FAN_AXES_KINDS, KINDS

SHAPE = (3, 3, 4, 6)  # channels_last: in 4, out 6; channels_first: out 3, in 3, spatial 4x6
PARAMS = {
    "constant": {"value": 0.5},
    "broadcast": {"base": base_tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])},
    "sparse": {"sparsity": 0.5},
}


def generated(engine, kind: str, layout: str) -> bytes:
    shape = (6, 6) if kind == "identity" else (36, 4) if kind == "sparse" else SHAPE  # both rank 2 only
    variable = spec(kind, shape, fan_axes=FanAxes(layout=layout), **PARAMS.get(kind, {}))
    return engine.generate(variable, seed=5).tobytes()


def test_the_kinds_that_read_fan_axes_are_those_the_catalogue_lists(engine):
    assert set(KINDS) <= set(REGISTRY), sorted(set(KINDS) - set(REGISTRY))  # every API kind is served
    reads = {k for k in KINDS if generated(engine, k, "channels_first") != generated(engine, k, "channels_last")}
    assert reads == FAN_AXES_KINDS
    assert all(REGISTRY[k].fan_based for k in FAN_AXES_KINDS - {"dirac", "delta_orthogonal"})
