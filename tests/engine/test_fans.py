"""Fans, exactly: GoMLX/JAX channels-last, PyTorch channels-first, and explicit in/out/batch axes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engine_helpers import spec

from weightgen.server.engine import FanAxes, SpecError
from weightgen.server.engine.fans import compute_fans

LAST = FanAxes()
FIRST = FanAxes(layout="channels_first")


@pytest.mark.parametrize(
    ("shape", "axes", "fan_in", "fan_out"),
    [
        # rank 0 and 1: Keras's convention (the fan-based initializers give zeros there anyway)
        ((), LAST, 1, 1),
        ((), FIRST, 1, 1),
        ((5,), LAST, 5, 5),
        ((5,), FIRST, 5, 5),
        # dense: GoMLX/JAX [in, out]; PyTorch Linear [out, in]
        ((3, 4), LAST, 3, 4),
        ((3, 4), FIRST, 4, 3),
        # conv2d: [kh, kw, in, out] -> in * 9, out * 9; PyTorch [out=3, in=3, 8, 16] -> receptive 128
        ((3, 3, 8, 16), LAST, 72, 144),
        ((3, 3, 8, 16), FIRST, 384, 384),
        # conv3d: receptive 2 * 3 * 3 = 18; PyTorch [out=2, in=3, 3, 8, 16]: receptive 384
        ((2, 3, 3, 8, 16), LAST, 144, 288),
        ((2, 3, 3, 8, 16), FIRST, 1152, 768),
        # zero-size dimensions
        ((0,), LAST, 0, 0),
        ((0, 5), LAST, 0, 5),
        ((0, 5), FIRST, 5, 0),
        ((3, 3, 0, 16), LAST, 0, 144),
        ((3, 0, 8, 16), LAST, 0, 0),  # receptive field 0
        ((0, 4, 3), FIRST, 12, 0),
        # explicit axes
        ((64, 8, 32), FanAxes(in_axes=(0,), out_axes=(1, 2)), 64, 256),  # multi-head dense [in, heads, dim]
        ((8, 32, 64), FanAxes(in_axes=(0, 1), out_axes=(2,)), 256, 64),  # output projection [heads, dim, out]
        ((4, 3, 3, 8, 16), FanAxes(batch_axes=(0,)), 72, 144),  # a stack of 4 conv kernels
        ((5, 6, 7), FanAxes(in_axes=(-3,), out_axes=(-1,)), 30, 42),  # negative axes, receptive 6
        ((5, 6, 7), FanAxes(in_axes=(0,), out_axes=(2,), batch_axes=(1,)), 5, 7),
        ((3, 4), FanAxes(in_axes=(0,)), 3, 4),  # out axis from the channels-last preset
        ((3, 4, 5), FanAxes(out_axes=(2,), layout="channels_first"), 12, 15),  # in = 1 from the preset
    ],
)
def test_compute_fans(shape, axes, fan_in, fan_out) -> None:
    fans = compute_fans(shape, axes)
    assert (fans.fan_in, fans.fan_out) == (fan_in, fan_out)


def test_fan_modes() -> None:
    fans = compute_fans((3, 3, 8, 16))  # (72, 144)
    assert fans.denominator("fan_in") == 72
    assert fans.denominator("fan_out") == 144
    assert fans.denominator("fan_avg") == 108
    assert fans.denominator("fan_geo_avg") == pytest.approx(math.sqrt(72 * 144), rel=1e-15)


@pytest.mark.parametrize(
    ("shape", "axes", "field"),
    [
        ((3, 4), FanAxes(in_axes=(2,)), "initializer.fan_axes.in_axes"),
        ((3, 4), FanAxes(in_axes=(-3,)), "initializer.fan_axes.in_axes"),
        ((3, 4, 5), FanAxes(in_axes=(0, 0)), "initializer.fan_axes.in_axes"),
        ((3, 4, 5), FanAxes(in_axes=(0, -3)), "initializer.fan_axes.in_axes"),  # the same axis twice
        ((3, 4), FanAxes(out_axes=(7,)), "initializer.fan_axes.out_axes"),
        ((3, 4, 5), FanAxes(batch_axes=(3,)), "initializer.fan_axes.batch_axes"),
        ((3, 4), FanAxes(in_axes=(1,)), "initializer.fan_axes"),  # in = out = 1
        ((3, 4, 5), FanAxes(batch_axes=(1,)), "initializer.fan_axes"),  # batch = in (preset -2)
        ((3, 4, 5), FanAxes(in_axes=(0,), out_axes=(1, 0)), "initializer.fan_axes"),
        ((3, 4, 5), FanAxes(out_axes=(1,), layout="channels_first"), "initializer.fan_axes"),  # preset in = 1
        ((3, 4), FanAxes(layout="channels_middle"), "initializer.fan_axes.layout"),
    ],
)
def test_invalid_axes(engine, shape, axes, field) -> None:
    with pytest.raises(SpecError) as error:
        compute_fans(shape, axes)
    assert error.value.field == field
    # The engine refuses the spec up front, for every fan-based initializer.
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("he_normal", shape, fan_axes=axes), seed=1)
    assert error.value.field == field


def test_engine_uses_the_named_axes(engine) -> None:
    """he (untruncated, std sqrt(2 / fan_in)) on a multi-head dense weight [in=64, heads=8, dim=32]:
    channels-last would take fan_in = 8 * 64; the named axes give 64. 6 standard errors of the std."""
    shape = (64, 8, 32)
    named = engine.generate(spec("he", shape, fan_axes=FanAxes(in_axes=(0,), out_axes=(1, 2))), seed=3)
    preset = engine.generate(spec("he", shape), seed=3)
    for x, fan_in in ((named, 64), (preset, 8 * 64)):
        std = math.sqrt(2 / fan_in)
        assert abs(float(np.std(x.astype(np.float64))) - std) <= 6 * std / math.sqrt(2 * x.size)
