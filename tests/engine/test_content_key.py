"""Prepared.content_key: equal only where the delivered bytes are equal by construction (it keys
the digests that streams of the same bytes share)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import base_tensor, spec

BASE = ("random_normal", (4, 8))


@pytest.mark.parametrize(
    "other",
    [
        spec(*BASE, name="v", stddev=1.0),
        spec("random_normal", (8, 4), stddev=1.0),
        spec(*BASE, "bfloat16", stddev=1.0),
        spec(*BASE, slice=((0, 2), (0, 8)), stddev=1.0),
        spec(*BASE, stddev=2.0),
        spec("random_uniform", (4, 8)),
    ],
    ids=["name", "shape", "dtype", "slice", "stddev", "family"],
)
def test_content_keys_differ_where_the_bytes_can(engine, other):
    base = engine.prepare(spec(*BASE, stddev=1.0), seed=1)
    assert base.content_key == engine.prepare(spec(*BASE, stddev=1.0), seed=1).content_key
    assert base.content_key != engine.prepare(spec(*BASE, stddev=1.0), seed=2).content_key
    assert base.content_key != engine.prepare(other, seed=1).content_key


def test_content_keys_tell_minus_zero_from_zero_and_skip_what_they_cannot_key(engine):
    def key(kind, **params):
        return engine.prepare(spec(kind, (4, 8), **params), seed=1).content_key

    assert key("constant", value=0.0) != key("constant", value=-0.0)
    assert key("random_normal", mean=0.0, stddev=0.0) != key("random_normal", mean=-0.0, stddev=0.0)
    assert key("broadcast", base=base_tensor(np.arange(8.0))) is None  # its base is the request's bytes


def test_structured_tensors_are_keyed_by_their_whole_tensor_and_slice(engine):
    def key(kind, seed=1, **kwargs):
        return engine.prepare(spec(kind, (8, 8), **kwargs), seed=seed).content_key

    assert key("orthogonal") == key("orthogonal") is not None
    assert key("orthogonal") != key("orthogonal", seed=2)
    assert key("orthogonal") != key("orthogonal", scale=2.0)
    assert key("orthogonal") != key("orthogonal", slice=((0, 4), (0, 8)))
    assert key("orthogonal", slice=((0, 4), (0, 8))) == key("orthogonal", slice=((0, 4), (0, 8)))
    # identity draws nothing: every seed and name gives the same bytes
    assert key("identity") == key("identity", seed=2) == key("identity", name="other")


def test_disk_uniforms_are_keyed_apart_from_the_uniforms_they_transform(engine):
    """A complex he_uniform draws the same raw uniforms as random_uniform [0, 1) of the same variable,
    then maps them onto a disk: different bytes, so different keys (and equal for equal radii)."""

    def key(kind, shape=(4, 8), **params):
        return engine.prepare(spec(kind, shape, "complex64", **params), seed=1).content_key

    disk = key("he_uniform")
    assert disk == key("variance_scaling", scale=2.0, distribution="uniform")  # the same disk, radius sqrt(2 * 2 / 4)
    assert disk != key("random_uniform")
    assert disk != key("lecun_uniform")
    assert disk != key("he_uniform", (4, 8, 1))
    a = engine.generate(spec("he_uniform", (4, 8), "complex64"), seed=1)
    b = engine.generate(spec("variance_scaling", (4, 8), "complex64", scale=2.0, distribution="uniform"), seed=1)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != engine.generate(spec("random_uniform", (4, 8), "complex64"), seed=1).tobytes()
