"""Golden digests: SHA-256 of the little-endian C-order bytes of fixed requests (CPU backend).

These pin the values of the determinism contract ``weightgen/2`` (``rng.GENERATOR``): the key
derivation, the block layout, the bits-to-float transforms, every formula and the final casts.
A failure here means every user's initialisation would silently change. Updating a digest is a
breaking change: it needs a new contract version (``rng.GENERATOR = "weightgen/3"``), documented in
docs/determinism.md's version history, never an edit of these constants to make the test pass.

weightgen/2 changed no digest of weightgen/1 (none of them covered the two values it changed: complex
fan-based uniforms with JAX's names, and delta_orthogonal with an even kernel size) and added the
three complex fan-based uniform digests below, and one of the new `sparse` initializer. The disk
values go through the C library's cos and sin (docs/determinism.md, section 7), so those are
bit-stable per C library.
"""

from __future__ import annotations

import pytest
from engine_helpers import CHANNELS_FIRST, base_tensor, digest, spec

from weightgen.server.engine import GENERATOR, VariableSpec, rng

SEED = 20250101

GOLDEN: list[tuple[str, VariableSpec, int, str]] = [
    (
        "uniform_f32",
        spec("random_uniform", (64, 48), name="dense/uniform", min=-0.5, max=0.5),
        SEED,
        "d21dfabb8792b5b268004b7093defc7c7f19c541dc61ae6425af2d8f8b51728b",
    ),
    (
        "normal_f32",
        spec("random_normal", (33, 17), name="dense/normal", mean=0.1, stddev=0.2),
        SEED,
        "05ae2714bef65328bb49437b66aca4929fe54edddffe1cf0b1976889bbd0a5d7",
    ),
    (
        "truncated_normal_f32",
        spec("truncated_normal", (1000,), name="trunc", stddev=1.0, lower=-1.5, upper=2.0),
        SEED,
        "370b5a9e2b3da4a589bcb972e996033ce284020bd4442ec76a2819a610df425f",
    ),
    (
        "he_normal_conv_f32",
        spec("he_normal", (3, 3, 16, 32), name="conv/kernel"),
        SEED,
        "343c376e82c20a4e9daadbb70f2220822c4cbfccfc8d79c6cd0906e18a4f6b7f",
    ),
    (
        "he_dense_f32_multi_call",
        spec("he", (600, 500), name="big/kernel"),  # 300000 elements: more than one kernel call
        SEED,
        "ab0659f0d8471da26d0fed08fefd3799c4a5d6c7c251c7181b8e38110492b4d3",
    ),
    (
        "glorot_uniform_bf16",
        spec("glorot_uniform", (128, 64), "bfloat16", name="bf16/kernel"),
        SEED,
        "a050c75e457ab190239afe5c52c25b8477a83c5eba872aed7bf733308cba3a82",
    ),
    (
        "xavier_normal_f16",
        spec("xavier_normal", (40, 30), "float16", name="f16/kernel", gain=1.5),
        SEED,
        "7ccf373a0a128f880a8948d6bd7f32cc27c00601940b6612ecd34ae38b5abbee",
    ),
    (
        "kaiming_uniform_f64_channels_first",
        spec("kaiming_uniform", (32, 16, 3, 3), "float64", name="torch/conv", fan_axes=CHANNELS_FIRST, a=0.2),
        SEED,
        "22e5472e4524696c0d4d6acf94c28857b8463a1a485f692e84bd4f44ecfab27c",
    ),
    (
        "normal_f64",
        spec("random_normal", (17, 19), "float64", name="f64/normal", stddev=1.0),
        SEED,
        "8ce082c59b763662c05464aa82f42c001940827a044eea7b386216b68f4e61f5",
    ),
    (
        "variance_scaling_c64",
        spec("variance_scaling", (20, 10), "complex64", name="c64", scale=2.0, mode="fan_avg", distribution="normal"),
        SEED,
        "43d471c9472dda4f76184c9b2e53ad26de875533ad9632956596bd83a76c7e8c",
    ),
    (
        "uniform_c128",
        spec("random_uniform", (16, 16), "complex128", name="c128", min=-1.0, max=1.0),
        SEED,
        "b542ee73b6cf05b326eafa5e18c3c4fd6c144f223ba78faa2d46ad9dc80951f3",
    ),
    (
        "he_uniform_c64_disk",  # weightgen/2: JAX's complex uniform, on a disk
        spec("he_uniform", (24, 40), "complex64", name="c64/disk"),
        SEED,
        "e7427cdf2d55b2938c7bc0dc4e94cb68474051d301e51e2705fe7e75caff62b9",
    ),
    (
        "variance_scaling_uniform_c128_disk",  # weightgen/2
        spec(
            "variance_scaling",
            (3, 5, 8, 6),
            "complex128",
            name="c128/disk",
            scale=0.5,
            mode="fan_avg",
            distribution="uniform",
        ),
        SEED,
        "fa0f8cb39fc6dfa784731825102e9c44217174c81521e4839cd606895f1e07f1",
    ),
    (
        "kaiming_uniform_c64_parts",  # PyTorch's complex uniform, each part in [-L, L): as in weightgen/1
        spec("kaiming_uniform", (16, 8, 3), "complex64", name="c64/kaiming", fan_axes=CHANNELS_FIRST),
        SEED,
        "73c86f54f84f71ea1fcb9e70c44dd26c9c6815f233e7eda4a72b7c9007393cb7",
    ),
    (
        "sparse_f32",  # weightgen/2 added sparse: the normal family with integer zero positions
        spec("sparse", (40, 24), name="sparse", sparsity=0.3, stddev=0.5),
        SEED,
        "e2794f5743a42819bd73df4b943bc6a422aa63e3a00b25fadfd45cd07c30df87",
    ),
    (
        "lecun_uniform_seed_2_64_minus_1",
        spec("lecun_uniform", (3, 3, 3, 4, 8), name="conv3d/kernel"),
        2**64 - 1,
        "ae588376591fcd4bc8981f16ee72e623ea541a29dc8e7f9ff490ce2c9ee6823e",
    ),
    (
        "normal_slice_f32",
        spec("random_normal", (50, 70), name="sliced", stddev=1.0, slice=((10, 30), (5, 66))),
        SEED,
        "5d27c161930a476916b06ab28602712d1b5f238dafb36ec747c66304cf9243e5",
    ),
    (
        "random_int8_zeros",
        spec("he_normal", (4, 4), "int8", name="int8/zeros"),
        SEED,
        "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb",
    ),
    (
        "constant_int8",
        spec("constant", (5, 7), "int8", name="int8/constant", value=-3),
        SEED,
        "42cfcff0e5eb152e8fdd08ba14e79a47ba56ec9be65830578eb5e2e4b516b9cf",
    ),
    (
        "ones_f32",
        spec("ones", (10, 10), name="ones"),
        SEED,
        "e985c32fd28bde405da64bc903c85250a82a0fa3d2291eca21abbd52b26f503d",
    ),
    (
        "constant_bf16",
        spec("constant", (9,), "bfloat16", name="bf16/constant", value=0.1),
        SEED,
        "608d696ec8e36a0cf56e877c2a9c4e12f9a7831770ad39d6e90d03bcdbfc7afb",
    ),
    (
        "broadcast_f32",
        spec("broadcast", (4, 3), name="broadcast", base=base_tensor([7, 11, 17])),
        SEED,
        "8a39cdad12076a6ad548f66a759cdc6a636c36574f9b186219d99774cc8c5b87",
    ),
    (
        "identity_f32",
        spec("identity", (6, 9), name="identity", gain=2.0),
        SEED,
        "4877fe27e5c8360ae354c4855ba1cb2da587dac13ff0de7cedd84776bddf5993",
    ),
    (
        "dirac_f32_groups",
        spec("dirac", (3, 3, 4, 8), name="dirac", groups=2),
        SEED,
        "98a306b7eaf5f45ce78b2d7b793bd82ab01849c8c55872376d65307cd59ca2b5",
    ),
]


def test_contract_version() -> None:
    assert GENERATOR == rng.GENERATOR == "weightgen/2"
    assert rng.BLOCK_ELEMENTS == 256


@pytest.mark.parametrize(("label", "variable", "seed", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_digest(cpu_engine, label, variable, seed, expected) -> None:
    assert digest(cpu_engine.generate(variable, seed=seed)) == expected, label
