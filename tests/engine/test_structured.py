"""The initializers that are not elementwise: orthogonal, delta_orthogonal, identity and dirac."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import CHANNELS_FIRST, digest, spec

from weightgen.server.engine import SpecError

SEED = 77


def _matrix(x: np.ndarray, column_axis: int) -> np.ndarray:
    """JAX's orthogonal layout: the slices along `column_axis` are the columns."""
    cols = x.shape[column_axis]
    return np.moveaxis(x, column_axis, -1).reshape(-1, cols)


def _check_orthogonal(m: np.ndarray, scale: float, atol: float) -> None:
    """Q^T Q = scale^2 I for a tall (or square) matrix, Q Q^T = scale^2 I for a wide one."""
    m = m.astype(np.complex128 if np.iscomplexobj(m) else np.float64)
    gram = m.conj().T @ m if m.shape[0] >= m.shape[1] else m @ m.conj().T
    np.testing.assert_allclose(gram, scale**2 * np.eye(gram.shape[0]), rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("shape", "column_axis", "scale", "dtype", "atol"),
    [
        ((784, 256), -1, 1.0, "float32", 1e-5),  # dense, tall: Q^T Q = I
        ((3, 3, 64, 128), -1, 1.0, "float32", 1e-5),  # conv: rows 576, cols 128
        ((3, 3, 3, 16, 32), -1, 2.0, "float32", 4e-5),  # conv3d: rows 432, cols 32, scale 2
        ((16, 64), -1, 1.0, "float32", 1e-5),  # wide: Q Q^T = I
        ((40, 12), 0, 0.5, "float32", 1e-5),  # column_axis 0 makes it wide: 12 rows of 40
        ((4, 8, 6), 0, 1.0, "float32", 1e-5),  # rows 48, cols 4 along axis 0
        ((8, 3, 5), 1, 1.0, "float64", 1e-12),  # middle axis; float64 keeps QR's precision
        ((2, 9, 7), -2, 1.0, "float64", 1e-12),
        ((24, 10), -1, 1.0, "complex64", 1e-5),  # unitary: Q^H Q = I
        ((10, 24), -1, 1.0, "complex128", 1e-12),
        ((32, 32), -1, 1.0, "bfloat16", 3e-2),  # square: both products are I (bf16 has 8 bits)
    ],
)
def test_orthogonal(engine, shape, column_axis, scale, dtype, atol) -> None:
    x = engine.generate(spec("orthogonal", shape, dtype, scale=scale, column_axis=column_axis), seed=SEED)
    assert x.shape == shape and x.dtype.name == dtype
    _check_orthogonal(_matrix(x, column_axis), scale, atol)
    if shape[0] == shape[-1]:
        _check_orthogonal(_matrix(x, column_axis).T, scale, atol)


def test_orthogonal_is_random_and_deterministic(engine) -> None:
    """QR goes through LAPACK, so these are not golden digests: same bytes twice in one process, and
    different seeds or names give different matrices (not some fixed orthogonal matrix)."""
    for kind, shape in (("orthogonal", (50, 20)), ("delta_orthogonal", (3, 3, 8, 16))):
        first = engine.generate(spec(kind, shape), seed=SEED)
        assert digest(first) == digest(engine.generate(spec(kind, shape), seed=SEED))
        assert not np.array_equal(first, engine.generate(spec(kind, shape), seed=SEED + 1))
        assert not np.array_equal(first, engine.generate(spec(kind, shape, name="other"), seed=SEED))
    # Uniformly (Haar) distributed: entries of a tall 400 x 20 Q have mean 0 and variance 1/400.
    q = engine.generate(spec("orthogonal", (400, 20)), seed=SEED).astype(np.float64)
    assert abs(q.mean()) <= 6 * (1 / 20) / np.sqrt(q.size)
    # Sign convention (Q *= sign(diag R)): a Haar matrix has no preferred sign on its diagonal.
    assert 0 < np.sum(np.diagonal(q) > 0) < 20


@pytest.mark.parametrize(
    ("shape", "fan_axes", "centre", "scale"),
    [
        ((3, 3, 64, 128), None, (1, 1), 1.0),  # conv, channels-last [kh, kw, in, out]: wide in x out
        ((3, 3, 3, 16, 32), None, (1, 1, 1), 1.5),  # conv3d
        ((5, 8, 8), None, (2,), 1.0),  # conv1d, square
        ((4, 4, 6), None, (1,), 1.0),  # even kernel: the centre is (k - 1) // 2, as JAX's
        ((4, 6, 8, 8), None, (1, 2), 1.0),  # even and even
        ((2, 3, 4, 4, 8), None, (0, 1, 1), 1.0),  # even, odd, even
        ((32, 16, 3, 3), CHANNELS_FIRST, (1, 1), 1.0),  # PyTorch [out, in, kh, kw]
    ],
)
def test_delta_orthogonal(engine, shape, fan_axes, centre, scale) -> None:
    x = engine.generate(spec("delta_orthogonal", shape, fan_axes=fan_axes, scale=scale), seed=SEED)
    assert x.shape == shape
    if fan_axes is None:  # spatial axes first, then [in, out]
        index = (*centre, Ellipsis)
        matrix = x[index]  # [in, out]
    else:  # [out, in, spatial...]
        matrix = x[(Ellipsis, *centre)].T
    rest = x.copy()
    rest[index if fan_axes is None else (Ellipsis, *centre)] = 0
    assert not rest.any()  # zeros everywhere but the spatial centre
    assert matrix.shape[0] <= matrix.shape[1]
    _check_orthogonal(matrix, scale, 1e-5)  # rows orthonormal: M M^T = scale^2 I_in


def test_identity(engine) -> None:
    np.testing.assert_array_equal(engine.generate(spec("identity", (5, 7)), seed=SEED), np.eye(5, 7, dtype=np.float32))
    np.testing.assert_array_equal(
        engine.generate(spec("identity", (7, 5), gain=2.5), seed=SEED), 2.5 * np.eye(7, 5, dtype=np.float32)
    )
    np.testing.assert_array_equal(
        engine.generate(spec("identity", (784, 256)), seed=SEED), np.eye(784, 256, dtype=np.float32)
    )
    ints = engine.generate(spec("identity", (3, 4), "int32", gain=3), seed=SEED)
    assert ints.dtype == np.int32
    np.testing.assert_array_equal(ints, 3 * np.eye(3, 4, dtype=np.int32))
    booleans = engine.generate(spec("identity", (3, 3), "bool"), seed=SEED)
    np.testing.assert_array_equal(booleans, np.eye(3, dtype=bool))
    # Not random: the seed and the name do not matter.
    assert digest(engine.generate(spec("identity", (6, 6), name="a"), seed=1)) == digest(
        engine.generate(spec("identity", (6, 6), name="b"), seed=2)
    )


def _torch_dirac(shape: tuple[int, ...], ones: list[tuple[int, int]]) -> np.ndarray:
    """What torch.nn.init.dirac_(w, groups) leaves in `w` of shape [out, in, spatial...]: a 1 at
    (o, i, centre...) for each listed (o, i), where the centre of each spatial axis is k // 2."""
    expected = np.zeros(shape, np.float32)
    centre = tuple(k // 2 for k in shape[2:])
    for o, i in ones:
        expected[(o, i, *centre)] = 1
    return expected


# torch's loop: for g in range(groups): for d in range(min(out // groups, in)): w[g * out // groups + d, d, centre] = 1
DIRAC_CASES = [
    ((4, 2, 3), 2, [(0, 0), (1, 1), (2, 0), (3, 1)]),
    ((6, 4, 3, 3), 3, [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0), (5, 1)]),
    ((2, 3, 5), 1, [(0, 0), (1, 1)]),  # fewer out than in channels
    ((5, 3, 3, 3), 1, [(0, 0), (1, 1), (2, 2)]),  # more out than in: out channels 3 and 4 stay zero
    ((4, 2, 4), 2, [(0, 0), (1, 1), (2, 0), (3, 1)]),  # even kernel: centre index 2
    ((8, 1, 3, 3, 3), 4, [(0, 0), (2, 0), (4, 0), (6, 0)]),  # 3-D, depthwise-like: 2 per group, 1 in
    # The conv and conv3d kernels of test_statistics.py (channels-last [3, 3, 64, 128], [3, 3, 3, 16, 32]).
    ((128, 64, 3, 3), 1, [(d, d) for d in range(64)]),
    ((32, 16, 3, 3, 3), 2, [(g * 16 + d, d) for g in range(2) for d in range(16)]),
]


@pytest.mark.parametrize(("shape", "groups", "ones"), DIRAC_CASES, ids=[str(c[0]) for c in DIRAC_CASES])
def test_dirac_channels_first_is_torch(engine, shape, groups, ones) -> None:
    x = engine.generate(spec("dirac", shape, fan_axes=CHANNELS_FIRST, groups=groups), seed=SEED)
    np.testing.assert_array_equal(x, _torch_dirac(shape, ones))


@pytest.mark.parametrize(("shape", "groups", "ones"), DIRAC_CASES, ids=[str(c[0]) for c in DIRAC_CASES])
def test_dirac_channels_last(engine, shape, groups, ones) -> None:
    """Channels-last [spatial..., in, out] is the PyTorch tensor with its axes moved."""
    rank = len(shape)
    last = (*range(2, rank), 1, 0)  # [out, in, spatial...] -> [spatial..., in, out]
    shape_last = tuple(shape[a] for a in last)
    x = engine.generate(spec("dirac", shape_last, groups=groups), seed=SEED)
    np.testing.assert_array_equal(x, np.transpose(_torch_dirac(shape, ones), last))


def test_dirac_dtypes_and_slices(engine) -> None:
    full = engine.generate(spec("dirac", (3, 3, 4, 8), groups=2), seed=SEED)
    for dtype in ("bfloat16", "int8", "bool", "complex64"):
        x = engine.generate(spec("dirac", (3, 3, 4, 8), dtype, groups=2), seed=SEED)
        assert x.dtype.name == dtype
        np.testing.assert_array_equal(np.real(x).astype(np.float32), full)
        assert not np.imag(x).any()
    part = engine.generate(spec("dirac", (3, 3, 4, 8), groups=2, slice=((1, 2), (0, 3), (1, 4), (2, 8))), seed=SEED)
    np.testing.assert_array_equal(part, full[1:2, 0:3, 1:4, 2:8])


def test_structured_rank_errors(engine) -> None:
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("delta_orthogonal", (8, 8)), seed=SEED)
    assert error.value.field == "shape"
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("delta_orthogonal", (3, 3, 16, 8)), seed=SEED)  # in > out
    assert error.value.field == "shape"
    with pytest.raises(SpecError) as error:
        engine.prepare(spec("identity", (2, 3, 4)), seed=SEED)
    assert error.value.field == "shape"


def _nonzero_spatial(x: np.ndarray, spatial: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The spatial positions (indices along `spatial` axes) where `x` has a non-zero value."""
    where = np.argwhere(x != 0)
    return {tuple(int(row[a]) for a in spatial) for row in where}


DELTA_SHAPES = [(3, 8, 8), (4, 8, 8), (2, 4, 6), (1, 4, 4), (3, 3, 4, 8), (4, 4, 4, 8), (2, 5, 4, 8), (6, 3, 4, 4, 8)]


@pytest.mark.parametrize("shape", DELTA_SHAPES, ids=[str(s) for s in DELTA_SHAPES])
def test_delta_orthogonal_position_is_jax(engine, shape) -> None:
    """The orthogonal slice sits where jax.nn.initializers.delta_orthogonal puts it, for odd and
    even kernel sizes, 1-D to 3-D kernels (the values differ: JAX draws with jax.random)."""
    jax = pytest.importorskip("jax")
    spatial = tuple(range(len(shape) - 2))
    reference = np.asarray(jax.nn.initializers.delta_orthogonal()(jax.random.PRNGKey(0), shape, np.float32))
    ours = engine.generate(spec("delta_orthogonal", shape), seed=SEED)
    expected = {tuple((k - 1) // 2 for k in shape[:-2])}
    assert _nonzero_spatial(reference, spatial) == expected
    assert _nonzero_spatial(ours, spatial) == expected
    # The slice there is orthogonal in both: rows orthonormal ([in, out] with in <= out).
    _check_orthogonal(ours[expected.pop()], 1.0, 1e-5)


@pytest.mark.parametrize("shape", [(4, 2, 4), (4, 4, 2, 2), (6, 2, 3, 4), (4, 2, 2, 4, 3)])
def test_dirac_even_kernels_are_torch(engine, shape) -> None:
    """torch.nn.init.dirac_ itself (its centre is k // 2, also for even kernel sizes), PyTorch layout."""
    torch = pytest.importorskip("torch")
    for groups in (1, 2):
        reference = torch.empty(shape)
        torch.nn.init.dirac_(reference, groups=groups)
        ours = engine.generate(spec("dirac", shape, fan_axes=CHANNELS_FIRST, groups=groups), seed=SEED)
        np.testing.assert_array_equal(ours, reference.numpy())
        assert _nonzero_spatial(ours, tuple(range(2, len(shape)))) == {tuple(k // 2 for k in shape[2:])}
