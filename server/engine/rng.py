"""The RNG derivation of the determinism contract ``weightgen/2`` (docs/determinism.md).

Every random bit comes from the threefry2x32 block cipher (Salmon et al., 2011; 20 rounds, the
function JAX's threefry2x32 primitive computes), evaluated by `threefry2x32` below: integer adds,
rotations and xors only, so no JAX or XLA flag (``jax_threefry_partitionable``,
``jax_default_prng_impl``, fast math) can change a value. With ``T(k, (x0, x1))`` the cipher of the
counter pair ``(x0, x1)`` under key ``k``, and ``fold_in(k, d) = T(k, (0, d))`` (as
``jax.random.fold_in``):

    root key        (seed >> 32, seed & 0xffffffff)            == jax.random.PRNGKey(seed)
    by-name key     fold_in(fold_in(root, h0), h1)   h0, h1 = first two big-endian uint32
                                                      words of SHA-256(UTF-8 name)
    sequential key  fold_in(root, n)                  n-th random variable of a session
    block key       fold_in(variable_key, b)          block b = flat elements [b*B, (b+1)*B)
    block words     T(block_key, (0, j)) = (w0[j], w1[j])   for counters j = base .. base+C-1

A 32-bit element i of a block (float32 and narrower) is ``w0[i]`` for i < B/2 and ``w1[i - B/2]``
otherwise (C = B/2 counters); a 64-bit element i is ``w0[i] << 32 | w1[i]`` (C = B counters).
Complex parts are two sub-streams of the block: the real part uses counters from base 0, the
imaginary part counters from base C.
"""

from __future__ import annotations

import hashlib
import secrets

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from weightgen.v1.version import CONTRACT

GENERATOR = CONTRACT
"""Name and version of the determinism contract (named once, in weightgen.v1.version); part of every
TensorInfo."""

BLOCK_ELEMENTS = 256
"""B: elements per block. Part of the contract: fixed for weightgen/2 (bench/block_size.py)."""

MAX_BLOCKS = 1 << 32
"""Block indices are one uint32 counter word."""

Key = tuple[int, int]


def root_key(seed: int) -> Key:
    """The threefry key of a 64-bit seed: the key words of ``jax.random.PRNGKey(seed)``."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed {seed} is not a uint64")
    return (seed >> 32, seed & 0xFFFFFFFF)


ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
"""Threefry-2x32's rotation distances, rounds 1-4 and 5-8 (then again)."""

KEY_PARITY = 0x1BD11BDA
"""Threefry's constant C240 (the third key word is k0 ^ k1 ^ C240)."""


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32-20: the counter words ``(x0, x1)`` enciphered under the key ``(k0, k1)``.

    Arguments are uint32 arrays (numpy or jax.numpy; they broadcast). With ``k2 = k0 ^ k1 ^ C240``
    and the key injected every 4 rounds, each round is ``x0 += x1; x1 = rotl(x1, r) ^ x0``:

        (x0, x1) = (x0 + k0, x1 + k1)
        for i in 0..4:  4 rounds with ROTATIONS[i % 2];  x0 += k[(i + 1) % 3];  x1 += k[(i + 2) % 3] + i + 1

    Written out rather than taken from JAX: on the CPU JAX lowers its primitive to a rolled loop
    that writes both words back to memory every 4 rounds, 4.5x slower than this straight-line
    form, which XLA fuses into one vectorised pass. Same values bit for bit
    (tests/engine/test_determinism.py checks it against the primitive and Random123's answers).
    """
    u32 = np.uint32
    keys = (k0, k1, k0 ^ k1 ^ u32(KEY_PARITY))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for r in ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << u32(r)) | (x1 >> u32(32 - r))) ^ x0
        x0 = x0 + keys[(i + 1) % 3]
        x1 = x1 + (keys[(i + 2) % 3] + u32(i + 1))  # the key part once per key, not per counter
    return x0, x1


def fold_in(key: Key, data: int) -> Key:
    """``jax.random.fold_in`` on raw threefry key words (on the host: one cipher call)."""
    k0, k1, d = (np.array([w], np.uint32) for w in (key[0], key[1], data))
    y0, y1 = threefry2x32(k0, k1, np.zeros(1, np.uint32), d)
    return (int(y0[0]), int(y1[0]))


def name_words(name: str) -> tuple[int, int]:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[0:4], "big"), int.from_bytes(digest[4:8], "big")


def variable_key(seed: int, name: str) -> Key:
    """By-name mode: independent of every other variable and of request order."""
    h0, h1 = name_words(name)
    return fold_in(fold_in(root_key(seed), h0), h1)


def variable_keys(seeds: list[int], names: list[str]) -> list[Key]:
    """`variable_key` of many variables at once: the same two fold_ins, each one vectorised cipher
    pass over all of them (a 100,000-variable batch in milliseconds, not seconds)."""
    s = np.asarray(seeds, np.uint64).reshape(-1)
    k0, k1 = (s >> np.uint64(32)).astype(np.uint32), (s & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    words = np.asarray([name_words(name) for name in names], np.uint32).reshape(-1, 2)
    zeros = np.zeros(len(words), np.uint32)
    for data in (words[:, 0], words[:, 1]):
        k0, k1 = threefry2x32(k0, k1, zeros, data)
    return list(zip(k0.tolist(), k1.tolist(), strict=True))


def sequential_key(seed: int, n: int) -> Key:
    """Sequential mode (GoMLX's order-dependent state): the n-th random variable of a session."""
    if not 0 <= n < 1 << 32:
        raise ValueError(f"sequence position {n} is not a uint32")
    return fold_in(root_key(seed), n)


def random_seed() -> int:
    """A fresh non-zero 64-bit seed, for requests that ask for seed 0 ("pick one")."""
    while True:
        seed = secrets.randbits(64)
        if seed:
            return seed


def counters_per_block(bits: int, block: int = BLOCK_ELEMENTS) -> int:
    """C: counter pairs one sub-stream of a block consumes (B/2 for 32-bit elements, B for 64)."""
    return block // 2 if bits == 32 else block


def block_words(
    key: jax.Array, block0: jax.Array, counter_base: jax.Array, n_blocks: int, bits: int, block: int = BLOCK_ELEMENTS
) -> jax.Array:
    """Traced: the raw words of `n_blocks` consecutive blocks from `block0`, as a flat array of
    ``n_blocks * B`` uint32 (bits=32) or uint64 (bits=64) elements in block order. (`block` other
    than B is for bench/block_size.py only.)"""
    blocks = block0 + lax.iota(jnp.uint32, n_blocks)
    zeros = jnp.zeros_like(blocks)
    bk0, bk1 = threefry2x32(key[0], key[1], zeros, blocks)
    shape = (n_blocks, counters_per_block(bits, block))
    counters = counter_base + lax.broadcasted_iota(jnp.uint32, shape, 1)
    w0, w1 = threefry2x32(bk0[:, None], bk1[:, None], jnp.zeros(shape, jnp.uint32), counters)
    if bits == 32:
        return jnp.concatenate([w0, w1], axis=1).reshape(n_blocks * block)
    wide = (w0.astype(jnp.uint64) << jnp.uint64(32)) | w1.astype(jnp.uint64)
    return wide.reshape(n_blocks * block)
