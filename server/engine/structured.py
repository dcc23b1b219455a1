"""Initializers that are not elementwise: built whole from the variable's key, then sliced.

    orthogonal        scale * Q; A [max(r, c), min(r, c)] standard normal from the variable's
                      block stream, A = QR, Q *= sign(diag R) (phase for complex), transposed back
                      when r < c; r = prod(shape) / shape[column_axis], c = shape[column_axis]
                      (jax.nn.initializers.orthogonal)
    delta_orthogonal  orthogonal [in, out] matrix at spatial index (k - 1) // 2 of each spatial axis,
                      zeros elsewhere (jax.nn.initializers.delta_orthogonal; Xiao et al. 2018)
    identity          gain * eye(rows, cols), rank 2
    dirac             1 at (spatial index k // 2, in = d, out = g * out/groups + d) for d < min(out/groups, in)
                      (torch.nn.init.dirac_, whose centre is k // 2: for even k one past delta_orthogonal's)

The QR runs in float64 (LAPACK through numpy) whatever the dtype, so orthogonality is as good as
float64 allows before the single cast; its values are bit-stable on one machine and BLAS build, not
across BLAS builds (docs/determinism.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .dtypes import DTypeInfo, Kind, complex_of
from .fans import resolve_axes
from .spec import FanAxes, SpecError
from .values import representable

RANDOM_KINDS = ("orthogonal", "delta_orthogonal")

DrawNormal = Callable[[int], np.ndarray]
"""n standard normal values (complex for complex dtypes: parts of variance 1/2) from the variable's
key, in the compute precision: the first n elements of its normal block stream."""


def _orthogonal_matrix(rows: int, cols: int, draw: DrawNormal) -> np.ndarray:
    tall = (rows, cols) if rows >= cols else (cols, rows)
    a = draw(tall[0] * tall[1]).reshape(tall)
    a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    q, r = np.linalg.qr(a)
    d = np.diagonal(r)
    phase = np.where(d == 0, 1, d / np.where(d == 0, 1, np.abs(d)))
    q = q * phase[None, :]
    return q if rows >= cols else q.T


def _column_axis(params: Mapping[str, Any], rank: int, kind: str) -> int:
    axis = int(params["column_axis"])
    if not -rank <= axis < rank:
        raise SpecError(f"initializer.{kind}.column_axis", f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def orthogonal(shape: tuple[int, ...], scale: float, column_axis: int, draw: DrawNormal) -> np.ndarray:
    cols = shape[column_axis]
    rows = math.prod(shape) // cols if cols else 0
    q = _orthogonal_matrix(rows, cols, draw)
    rest = tuple(d for i, d in enumerate(shape) if i != column_axis)
    return np.moveaxis(scale * q.reshape((*rest, cols)), -1, column_axis)


def _in_out_spatial(shape: tuple[int, ...], axes: FanAxes, kind: str) -> tuple[int, int, list[int]]:
    if not 3 <= len(shape) <= 5:
        raise SpecError("shape", f"{kind} needs a convolution kernel of rank 3 to 5, got {list(shape)}")
    ins, outs, batch = resolve_axes(shape, axes)
    if len(ins) != 1 or len(outs) != 1 or batch:
        raise SpecError("initializer.fan_axes", f"{kind} needs exactly one in axis and one out axis")
    spatial = [i for i in range(len(shape)) if i not in (ins[0], outs[0])]
    return ins[0], outs[0], spatial


def check(kind: str, params: Mapping[str, Any], shape: tuple[int, ...], dtype: DTypeInfo, axes: FanAxes) -> None:
    """Everything `build` would refuse, found without building: called when the spec is resolved,
    so a bad structured variable fails its batch before any byte is sent."""
    path = f"initializer.{kind}"
    if kind in RANDOM_KINDS and dtype.is_inexact:
        # |Q| <= 1 elementwise, so scale bounds every value: one that overflows the dtype would
        # silently give infinities.
        representable(params["scale"], dtype, f"{path}.scale")
    if kind in ("orthogonal", "identity") and len(shape) < 2:
        raise SpecError("shape", f"{kind} needs rank >= 2, got {list(shape)}")
    if kind == "orthogonal":
        _column_axis(params, len(shape), kind)
    elif kind == "identity":
        if len(shape) != 2:
            raise SpecError("shape", f"identity needs rank 2, got {list(shape)}")
        representable(params["gain"], dtype, f"{path}.gain")
    elif kind == "delta_orthogonal":
        i, o, _ = _in_out_spatial(shape, axes, kind)
        if shape[i] > shape[o]:
            raise SpecError("shape", f"delta_orthogonal needs in channels ({shape[i]}) <= out channels ({shape[o]})")
        _column_axis(params, 2, kind)
    elif kind == "dirac":
        _, o, _ = _in_out_spatial(shape, axes, kind)
        if shape[o] % params["groups"]:
            raise SpecError(f"{path}.groups", f"out channels {shape[o]} are not divisible by groups {params['groups']}")
    else:
        raise SpecError(path, f"unknown structured initializer {kind!r}")


def matrix_elements(kind: str, shape: tuple[int, ...], axes: FanAxes) -> int:
    """Elements of the random matrix the kind orthogonalises: the whole tensor for orthogonal,
    in x out for delta_orthogonal, none for identity and dirac."""
    if kind == "orthogonal":
        return math.prod(shape)
    if kind == "delta_orthogonal":
        i, o, _ = _in_out_spatial(shape, axes, kind)
        return shape[i] * shape[o]
    return 0


def build_bytes(kind: str, shape: tuple[int, ...], dtype: DTypeInfo, axes: FanAxes) -> int:
    """An upper estimate of what `build` allocates besides its result (N = prod(shape) elements of
    the final dtype), generously counted:

        orthogonal        M * (2 * p + 4 * w) + N * p          M = N
        delta_orthogonal  M * (2 * p + 4 * w) + N * (w + p)    M = in * out
        identity          N * (2 * 16 + p)
        dirac             0                                    built in place, in the final dtype

    w = 8 bytes (16 for complex): a float64 (complex128) element; p = the compute precision's
    element (both parts for complex). The draw holds the normal matrix twice (its pieces, then
    their concatenation); the QR 4 float64 matrices at once (A, LAPACK's copy or R, Q, Q * phase);
    delta_orthogonal's zeros and identity's eye (complex128, then scaled) are full-size in float64
    or complex128; all but dirac are then rounded into the compute precision (N * p)."""
    n = math.prod(shape)
    parts = 2 if dtype.kind is Kind.COMPLEX else 1
    p, w = parts * dtype.compute.itemsize, 8 * parts
    if kind == "identity":
        return n * (2 * 16 + p)
    if kind == "dirac":
        return 0
    m = matrix_elements(kind, shape, axes)
    full = n * (w + p) if kind == "delta_orthogonal" else n * p
    return m * (2 * p + 4 * w) + full


def build(
    kind: str, params: Mapping[str, Any], shape: tuple[int, ...], dtype: DTypeInfo, axes: FanAxes, draw: DrawNormal
) -> np.ndarray:
    """The whole tensor, in the variable's dtype (of a spec `check` accepts)."""
    check(kind, params, shape, dtype, axes)
    if kind == "orthogonal":
        values = orthogonal(shape, params["scale"], _column_axis(params, len(shape), kind), draw)
    elif kind == "identity":
        value = representable(params["gain"], dtype, f"initializer.{kind}.gain")
        values = np.eye(shape[0], shape[1], dtype=np.complex128) * value
    elif kind == "delta_orthogonal":
        i, o, spatial = _in_out_spatial(shape, axes, kind)
        matrix = orthogonal((shape[i], shape[o]), params["scale"], _column_axis(params, 2, kind), draw)
        values = np.zeros(shape, matrix.dtype)
        index: list[Any] = [slice(None)] * len(shape)
        for s in spatial:
            index[s] = (shape[s] - 1) // 2  # JAX's and TensorFlow's centre: (k - 1) // 2, not k // 2
        # With integer indices on the spatial axes the remaining axes keep their order (in, out or out, in).
        values[tuple(index)] = matrix if i < o else matrix.T
    else:  # dirac
        i, o, spatial = _in_out_spatial(shape, axes, kind)
        groups = params["groups"]
        per_group = shape[o] // groups
        values = np.zeros(shape, dtype.numpy)
        d = np.arange(min(per_group, shape[i]))
        for g in range(groups):
            index = [np.asarray(shape[s] // 2) for s in range(len(shape))]
            index[i], index[o] = d, g * per_group + d
            values[tuple(index)] = 1
        return values
    # One rounding into the compute precision, then the final cast: a bfloat16 orthogonal matrix is
    # the float32 one rounded, as for every other initializer.
    compute = dtype.compute if dtype.kind is not Kind.COMPLEX else complex_of(dtype.compute)
    # C order: the tensor is served flat (an orthogonal matrix moved to its column axis is not).
    if dtype.kind in (Kind.INT, Kind.UINT, Kind.BOOL):
        return values.real.astype(dtype.numpy, order="C")
    if dtype.kind is not Kind.COMPLEX:
        values = values.real
    return values.astype(compute, order="C").astype(dtype.numpy, copy=False)
