"""PyTorch's ``sparse_`` as a function of each element alone, so a slice is computed by itself.

``torch.nn.init.sparse_(tensor, sparsity, std=0.01)``: a 2-D tensor of `rows` x `cols`; every
column gets ``k = ceil(sparsity * rows)`` zeros, at rows chosen at random (the first k of a random
permutation of the rows), and every other element is N(0, std).

weightgen draws the same distribution from the variable key, element by element:

    value(r, c)   the variable's random_normal(0, std) value at flat index r * cols + c (blocks,
                  words and transforms as every random initializer: docs/determinism.md), or
                  0 when P_c(r) < k
    mask key      M   = T(variable_key, (1, 0))     counter word x0 = 1: never a fold_in (x0 = 0),
                                                    so never a block key
    column key    K_c = fold_in(M, c) = T(M, (0, c))
    P_c           a permutation of [0, rows): an 8-round balanced Feistel network on [0, 2^(2h)),
                  2h the smallest even number >= max(2, bit_length(rows - 1)), with
                      x = (L, R), L = x >> h, R = x & (2^h - 1)
                      round i = 0..7:  (L, R) = (R, L ^ (w0 & (2^h - 1))),  (w0, w1) = T(K_c, (i + 1, R))
                  cycle-walked (Black and Rogaway, 2002): applied again while the result is >= rows

P_c is a bijection, so every column has exactly k zeros, at rows that are a pseudo-random k-subset
(the keyed threefry rounds make the Feistel network a pseudo-random permutation). Nothing depends on
other elements: a slice's bytes are the whole tensor's hyperslab, whoever computes them. Integer
arithmetic only, so the zero positions are bit for bit the same everywhere.
"""

from __future__ import annotations

import math

import numpy as np

from . import rng

ROUNDS = 8
"""Feistel rounds of the row permutations."""

MAX_ROWS = 1 << 32
"""Rows are permuted as uint32 words."""


def zeros_per_column(sparsity: float, rows: int) -> int:
    """PyTorch's ``math.ceil(sparsity * rows)``, at most `rows`."""
    return min(rows, math.ceil(sparsity * rows))


def _half_bits(rows: int) -> int:
    bits = max(2, (rows - 1).bit_length())
    return (bits + 1) // 2


def row_positions(key: rng.Key, rows: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """P_c(r) for each pair (uint32 arrays of equal shape): row r's place in column c's permutation."""
    u32 = np.uint32
    m0, m1 = rng.threefry2x32(np.array([key[0]], u32), np.array([key[1]], u32), np.ones(1, u32), np.zeros(1, u32))
    columns, which = np.unique(c, return_inverse=True)  # one column key per distinct column
    k0, k1 = rng.threefry2x32(m0, m1, np.zeros(columns.size, u32), columns.astype(u32))
    k0, k1 = k0[which], k1[which]
    h = _half_bits(rows)
    mask = u32((1 << h) - 1)
    x = r.astype(u32)
    todo = np.arange(x.size)
    while todo.size:
        a, b = k0[todo], k1[todo]
        left, right = x[todo] >> u32(h), x[todo] & mask
        for i in range(ROUNDS):
            w0, _ = rng.threefry2x32(a, b, np.full(right.size, i + 1, u32), right)
            left, right = right, left ^ (w0 & mask)
        x[todo] = (left << u32(h)) | right
        todo = todo[x[todo] >= rows]
    return x


def zero_mask(key: rng.Key, rows: int, cols: int, zeros: int, flat: np.ndarray) -> np.ndarray:
    """Whether each element (int64 flat indices of a rows x cols tensor) is one of the zeros."""
    if zeros == 0 or flat.size == 0:
        return np.zeros(flat.shape, bool)
    if zeros >= rows:
        return np.ones(flat.shape, bool)
    r, c = np.divmod(flat, cols)
    return row_positions(key, rows, r.astype(np.uint32), c.astype(np.uint32)) < zeros
