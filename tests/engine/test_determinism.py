"""The determinism contract (DESIGN.md section 4, `weightgen/2`), bit for bit."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from engine_helpers import CHANNELS_FIRST, base_tensor, digest, spec, streamed
from engine_probe import PROBE_CASES, digests, key_checks

from weightgen.server.engine import BLOCK_ELEMENTS, GENERATOR, VariableSpec, kernels, rng

SEED = 987654321
HERE = Path(__file__).parent

# A varied batch: every distribution family, fans, complex, a structured and a broadcast variable.
BATCH = [
    spec("random_normal", (40, 30), name="a", mean=0.5, stddev=2.0),
    spec("random_uniform", (1000,), name="b", min=-3.0, max=-1.0),
    spec("he_normal", (3, 3, 8, 16), name="c"),
    spec("kaiming_uniform", (16, 8, 3, 3), "float64", name="d", fan_axes=CHANNELS_FIRST),
    spec("glorot_normal", (33, 65), "complex64", name="e"),
    spec("truncated_normal", (257,), "bfloat16", name="f", stddev=1.0),
    spec("identity", (5, 5), name="g"),
    spec("broadcast", (4, 3), "int32", name="h", base=base_tensor([1, 2, 3])),
    spec("orthogonal", (20, 10), name="i"),
]


def test_contract_constants() -> None:
    assert GENERATOR == "weightgen/2"
    assert BLOCK_ELEMENTS == 256


def test_same_request_twice(engine) -> None:
    for variable in BATCH:
        first = engine.generate(variable, seed=SEED)
        assert digest(first) == digest(engine.generate(variable, seed=SEED)), variable.name
        assert digest(first) == digest(streamed(engine, variable, SEED)), variable.name


def test_batch_order_does_not_matter(engine) -> None:
    """By-name keys: a variable's tensor does not depend on what else is in the batch, nor on the
    order variables are prepared or streamed, nor on streams running interleaved."""
    alone = {v.name: digest(engine.generate(v, seed=SEED)) for v in BATCH}
    prepared = [engine.prepare(v, seed=SEED) for v in reversed(BATCH)]
    for p in prepared:
        assert p.key == rng.variable_key(SEED, p.spec.name)
    # Interleaved: one piece of each stream in turn.
    streams = {p.spec.name: engine.stream(p) for p in prepared}
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in streams}
    while streams:
        for name in list(streams):
            piece = next(streams[name], None)
            if piece is None:
                del streams[name]
            else:
                pieces[name].append(np.array(piece))
    by_name = {p.spec.name: p for p in prepared}
    for name, parts in pieces.items():
        values = np.concatenate(parts).reshape(by_name[name].info.out_shape)
        assert digest(values) == alone[name], name
    # A subset in another order, and a batch that adds new variables, change nothing.
    for v in (BATCH[4], BATCH[0], BATCH[2]):
        assert digest(engine.generate(v, seed=SEED)) == alone[v.name]


def test_seeds_and_names_matter(engine) -> None:
    for kind in ("random_normal", "random_uniform", "he_normal", "orthogonal"):
        base = engine.generate(spec(kind, (16, 16), name="x"), seed=SEED)
        other_seed = engine.generate(spec(kind, (16, 16), name="x"), seed=SEED + 1)
        other_name = engine.generate(spec(kind, (16, 16), name="y"), seed=SEED)
        assert not np.array_equal(base, other_seed) and not np.array_equal(base, other_name)
        # Nearly every element differs, not just a few.
        assert np.mean(base != other_seed) > 0.99 and np.mean(base != other_name) > 0.99
    # Seeds differing only in their high word (root key word 0) differ too.
    a = engine.generate(spec("random_normal", (64,)), seed=5)
    b = engine.generate(spec("random_normal", (64,)), seed=5 + (1 << 32))
    assert np.mean(a != b) > 0.99


def test_the_shape_is_part_of_the_tensor(engine) -> None:
    """Fans come from the full shape; the flat element stream does not (a uniform of one name and
    seed is the same stream whatever the shape)."""
    flat = engine.generate(spec("random_uniform", (120,)), seed=SEED)
    np.testing.assert_array_equal(engine.generate(spec("random_uniform", (10, 12)), seed=SEED).ravel(), flat)
    he_a = engine.generate(spec("he_uniform", (10, 12)), seed=SEED)
    he_b = engine.generate(spec("he_uniform", (12, 10)), seed=SEED)
    assert not np.array_equal(he_a.ravel(), he_b.ravel())  # fan_in 10 vs 12


# -- slices ------------------------------------------------------------------------------------


def _slice(variable: VariableSpec, ranges: tuple[tuple[int, int], ...]) -> VariableSpec:
    return VariableSpec(variable.name, variable.shape, variable.dtype, variable.initializer, variable.seed, ranges)


SLICE_CASES = [
    spec("random_normal", (97, 61), name="rows", stddev=1.0),
    spec("he_uniform", (97, 61), "float64", name="cols"),
    spec("glorot_normal", (33, 65), "complex64", name="cplx"),
    spec("he_uniform", (33, 65), "complex64", name="disk64"),  # JAX's complex uniform: a transform of both parts
    spec("variance_scaling", (33, 65), "complex128", name="disk128", distribution="uniform", mode="fan_out"),
    spec("truncated_normal", (97, 61), "bfloat16", name="half"),
    spec("orthogonal", (50, 12), name="orth"),
    spec("dirac", (3, 3, 4, 8), name="dirac"),
]


@pytest.mark.parametrize("variable", SLICE_CASES, ids=lambda v: v.name)
def test_whole_equals_union_of_slices(engine, variable) -> None:
    whole = engine.generate(variable, seed=SEED)
    rows, cols = variable.shape[0], variable.shape[1]
    rest = tuple((0, d) for d in variable.shape[2:])
    row_cuts = sorted({0, 1, min(7, rows), rows // 2, rows - 1, rows})
    by_rows = [
        engine.generate(_slice(variable, ((a, b), (0, cols), *rest)), seed=SEED)
        for a, b in itertools.pairwise(row_cuts)
    ]
    np.testing.assert_array_equal(np.concatenate(by_rows, axis=0), whole)
    col_cuts = sorted({0, min(3, cols), cols // 2, cols})
    by_cols = [
        engine.generate(_slice(variable, ((0, rows), (a, b), *rest)), seed=SEED)
        for a, b in itertools.pairwise(col_cuts)
    ]
    np.testing.assert_array_equal(np.concatenate(by_cols, axis=1), whole)
    # Empty slices are empty, with the right shape.
    empty = engine.generate(_slice(variable, ((2, 2), (0, cols), *rest)), seed=SEED)
    assert empty.shape == (0, cols, *variable.shape[2:]) and empty.dtype == whole.dtype


def test_hyperslab(engine) -> None:
    for variable, ranges in (
        (spec("random_normal", (6, 10, 50), name="slab", stddev=1.0), ((1, 5), (2, 9), (10, 40))),
        (spec("random_uniform", (6, 10, 50), "complex128", name="slab128"), ((0, 6), (9, 10), (0, 49))),
        (spec("lecun_normal", (2, 3, 3, 8, 16), "float16", name="slab5"), ((1, 2), (0, 3), (1, 3), (2, 7), (3, 16))),
    ):
        whole = engine.generate(variable, seed=SEED)
        part = engine.generate(_slice(variable, ranges), seed=SEED)
        np.testing.assert_array_equal(part, whole[tuple(slice(a, b) for a, b in ranges)])
        # Every single-element slice is the element (a few of them).
        for index in ((0,) * whole.ndim, tuple(d - 1 for d in whole.shape), tuple(d // 2 for d in whole.shape)):
            one = engine.generate(_slice(variable, tuple((i, i + 1) for i in index)), seed=SEED)
            assert one.reshape(()) == whole[index]


# -- dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("random_normal", {"stddev": 3.0, "mean": 1.0}),
        ("random_uniform", {"min": -2.0, "max": 5.0}),
        ("truncated_normal", {"stddev": 0.3}),
        ("he_normal", {}),
        ("xavier_uniform", {"gain": 1.7}),
        ("orthogonal", {"scale": 1.1}),
        ("identity", {"gain": 0.1}),
    ],
)
def test_half_precision_is_float32_rounded(engine, kind, params) -> None:
    """Computed in float32 and cast once with round-to-nearest-even: bit-equal to numpy's cast."""
    shape = (64, 48)
    f32 = engine.generate(spec(kind, shape, **params), seed=SEED)
    bf16 = engine.generate(spec(kind, shape, "bfloat16", **params), seed=SEED)
    f16 = engine.generate(spec(kind, shape, "float16", **params), seed=SEED)
    np.testing.assert_array_equal(bf16.view(np.uint16), f32.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(f16.view(np.uint16), f32.astype(np.float16).view(np.uint16))
    # And the float32 values are not all representable in half precision (the cast did something).
    assert not np.array_equal(f32, bf16.astype(np.float32)) or kind == "identity"


# -- the RNG derivation against jax.random ---------------------------------------------------------


def test_keys_equal_jax_random() -> None:
    checks = key_checks()
    assert checks["ours"] == checks["jax"]
    # By-name and sequential keys, from jax.random's fold_in and the SHA-256 words of the name.
    for seed, name in ((SEED, "layer/0/kernel"), (2**64 - 1, "é∂"), (1, "x" * 1024)):
        h = hashlib.sha256(name.encode("utf-8")).digest()
        h0, h1 = int.from_bytes(h[:4], "big"), int.from_bytes(h[4:8], "big")
        root = jax.random.PRNGKey(np.uint64(seed))
        expected = jax.random.fold_in(jax.random.fold_in(root, np.uint32(h0)), np.uint32(h1))
        assert list(rng.variable_key(seed, name)) == [int(w) for w in np.asarray(expected)]
        for n in (0, 1, 2**32 - 1):
            assert list(rng.sequential_key(seed, n)) == [
                int(w) for w in np.asarray(jax.random.fold_in(root, np.uint32(n)))
            ]
    with pytest.raises(ValueError):
        rng.root_key(2**64)
    with pytest.raises(ValueError):
        rng.root_key(-1)


# Random123's known answers for threefry2x32 with 20 rounds: (key, counter) -> output.
THREEFRY_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def test_threefry_is_threefry2x32_20_on_the_host_and_in_xla() -> None:
    from jax.extend.random import threefry2x32_p

    for (k0, k1), (x0, x1), expected in THREEFRY_ANSWERS:
        args = [np.array([w], np.uint32) for w in (k0, k1, x0, x1)]
        assert tuple(int(w[0]) for w in rng.threefry2x32(*args)) == expected
    # Random words, under a jit as the kernels run it, against JAX's own primitive.
    words = np.random.default_rng(5).integers(0, 2**32, size=(4, 100_000), dtype=np.uint32)
    words[:, :4] = [[0, 0, 0, 0], [2**32 - 1] * 4, [0, 2**32 - 1, 0, 2**32 - 1], [1, 2, 3, 4]]
    ours = jax.jit(rng.threefry2x32)(*words)
    theirs = jax.jit(threefry2x32_p.bind)(*words)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.stack(rng.threefry2x32(*words)), np.stack([np.asarray(a) for a in ours]))


def _block_words(variable_key: rng.Key, block: int, count: int) -> np.ndarray:
    """`count` 64-bit words T(block_key, (0, j)) = w0 << 32 | w1 for j < count, from jax.random:
    with jax_threefry_partitionable, bits(key, (n,), uint64)[j] is exactly that."""
    key = jax.random.wrap_key_data(np.asarray(variable_key, np.uint32), impl="threefry2x32")
    block_key = jax.random.fold_in(key, block)
    with jax.threefry_partitionable(True):
        return np.asarray(jax.random.bits(block_key, (count,), jnp.uint64))


def _uniform32(words64: np.ndarray, first_counter: int) -> np.ndarray:
    """A float32 block's U[0, 1) values: w0 of counters c..c+127, then their w1; u = (w >> 9) 2^-23."""
    counters = words64[first_counter : first_counter + BLOCK_ELEMENTS // 2]
    w = np.concatenate([(counters >> np.uint64(32)), counters & np.uint64(0xFFFFFFFF)]).astype(np.uint32)
    return (w >> np.uint32(9)).astype(np.float32) * np.float32(2.0**-23)


@pytest.mark.parametrize("block", [0, 1, 5, 1023, 1024, 4097])
def test_block_keys_and_words(engine, block) -> None:
    """Block b draws from fold_in(variable_key, b), whatever slice (and so whatever kernel call,
    starting at whatever block) it is generated in."""
    name = "blocks"
    key = rng.variable_key(SEED, name)
    n = (block + 2) * BLOCK_ELEMENTS
    at = slice(block * BLOCK_ELEMENTS, (block + 1) * BLOCK_ELEMENTS)
    words = _block_words(key, block, 2 * BLOCK_ELEMENTS)
    # float32 uniform [0, 1): u itself. Generated whole, and inside slices starting elsewhere.
    expected = _uniform32(words, 0)
    variable = spec("random_uniform", (n,), name=name)
    np.testing.assert_array_equal(engine.generate(variable, seed=SEED)[at], expected)
    for start in {0, max(0, block - 3) * BLOCK_ELEMENTS + 17, block * BLOCK_ELEMENTS, block * BLOCK_ELEMENTS + 100}:
        stop = min(n, (block + 1) * BLOCK_ELEMENTS + 5)
        part = engine.generate(_slice(variable, ((start, stop),)), seed=SEED)
        lo = max(start, at.start)
        np.testing.assert_array_equal(part[lo - start : at.stop - start], expected[lo - at.start :])
    # float64: element j is the 64-bit word j, u = (w >> 12) 2^-52.
    expected64 = (words[:BLOCK_ELEMENTS] >> np.uint64(12)).astype(np.float64) * 2.0**-52
    np.testing.assert_array_equal(
        engine.generate(spec("random_uniform", (n,), "float64", name=name), seed=SEED)[at], expected64
    )
    # complex64: the real part from counters 0..127, the imaginary part from counters 128..255.
    z = engine.generate(spec("random_uniform", (n,), "complex64", name=name), seed=SEED)[at]
    np.testing.assert_array_equal(z.real, expected)
    np.testing.assert_array_equal(z.imag, _uniform32(words, BLOCK_ELEMENTS // 2))


# -- processes, devices and JAX flags ----------------------------------------------------------


def _probe(devices: int, partitionable: bool) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"  # the same backend as cpu_engine: transforms are bit-identical per backend
    command = [sys.executable, str(HERE / "engine_probe.py"), "1" if partitionable else "0"]
    return subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_processes_devices_and_partitionable_flag(cpu_engine) -> None:
    """Two fresh processes, run side by side: 4 devices with jax_threefry_partitionable=True, and
    1 device with it False. Each differs from this process (1 device, the default flag) in one
    setting, so equal digests show that neither the device count, nor the flag, nor the process
    changes a byte."""
    launched = {"4 devices, partitionable": _probe(4, True), "1 device, not partitionable": _probe(1, False)}
    here = digests(cpu_engine)
    assert set(here) == {label for label, *_ in PROBE_CASES}
    keys = key_checks()
    try:
        outputs = {label: process.communicate(timeout=240) for label, process in launched.items()}
    finally:
        for process in launched.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for label, process in launched.items():
        out, err = outputs[label]
        assert process.returncode == 0, f"{label}: {err[-3000:]}"
        result = json.loads(out.strip().splitlines()[-1])
        assert result["platform"] == "cpu"
        assert result["devices"] == (4 if label.startswith("4") else 1), label
        assert result["partitionable"] is label.endswith(", partitionable"), label
        assert result["digests"] == here, label
        assert result["keys"]["ours"] == result["keys"]["jax"] == keys["ours"], label
        if result["devices"] == 4:
            assert result["devices_used"] >= 2  # the four-window tensor really was spread over devices


def test_kernel_buckets_cover_a_call() -> None:
    assert kernels.BUCKETS[-1] * BLOCK_ELEMENTS == kernels.CALL_ELEMENTS
    assert kernels.bucket(1) == 1 and kernels.bucket(kernels.MAX_CALL_BLOCKS) == kernels.MAX_CALL_BLOCKS


# -- seed 0 --------------------------------------------------------------------------------------


def test_seed_zero_picks_and_reports_a_seed(engine) -> None:
    variable = spec("random_normal", (32, 32), stddev=1.0)
    prepared = engine.prepare(variable, seed=0)
    chosen = prepared.info.seed
    assert 0 < chosen < 2**64
    values = np.concatenate(list(engine.stream(prepared))).reshape(32, 32)
    np.testing.assert_array_equal(values, engine.generate(variable, seed=chosen))
    assert prepared.key == rng.variable_key(chosen, variable.name)
    # Another request with seed 0 picks another seed.
    assert engine.prepare(variable, seed=0).info.seed != chosen
    assert engine.prepare(variable, seed=12).info.seed == 12
    assert prepared.info.generator == GENERATOR


def test_vectorised_variable_keys_equal_one_at_a_time() -> None:
    """The service keys a batch's by-name variables in one vectorised pass; each key must be the
    one `variable_key` derives (seeds at the uint64 edges, names empty, unicode and long)."""
    gen = np.random.default_rng(5)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**64 - 1, *(int(s) for s in gen.integers(0, 2**63, 20))]
    names = ["", "w", "é" * 300, "layers.0.attention.wq.weight", *(f"v{i}" for i in range(len(seeds) - 4))]
    assert rng.variable_keys(seeds, names) == [rng.variable_key(s, n) for s, n in zip(seeds, names, strict=True)]
    assert rng.variable_keys([], []) == []
