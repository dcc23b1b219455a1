"""Every initializer: its parameters with defaults, and its formula.

The fan-based initializers are all thin cases of one mechanism, JAX's and Keras's

    variance_scaling(scale, mode, distribution):
        variance = scale / max(1, denominator(mode))      mode in fan_in | fan_out | fan_avg | fan_geo_avg
        truncated_normal: std = sqrt(variance) / .87962566103423978, truncated to [-2, 2] std
        normal:           std = sqrt(variance)
        uniform:          uniform in [-L, L), L = sqrt(3 * variance); complex: uniform on the disk
                          |z| < sqrt(2 * variance) (JAX's _complex_uniform), so E|z|^2 = variance

GoMLX rules (docs/initializers.md): random initializers give zeros for non-float, non-complex
dtypes; fan-based ones give zeros for rank <= 1 (biases). Complex values have independent real and
imaginary parts: `random_uniform` draws each part in [low, high); a normal draws each part with
standard deviation std / sqrt(2), so that E|z - mean|^2 = std^2 (the JAX convention), and the mean
applies to both parts. The fan-based uniforms with JAX's names (variance_scaling, glorot_uniform,
he_uniform, lecun_uniform) are JAX's complex variance_scaling uniform instead (`Disk`), E|z|^2 =
variance: each part in [-L, L) would make it 2 * variance. PyTorch's names (kaiming_uniform,
xavier_uniform) keep PyTorch's complex uniform, each part in [-L, L), as torch.nn.init does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dtypes, sparse, structured
from .dtypes import DTypeInfo, Kind
from .fans import Fans, compute_fans
from .plan import check_shape
from .spec import BaseTensor, FanAxes, Initializer, SpecError
from .values import representable

TRUNCATED_NORMAL_STDDEV = 0.87962566103423978
"""Standard deviation of a unit normal truncated to [-2, 2] (JAX's variance_scaling correction)."""

# ---------------------------------------------------------------------------------------------
# What an initializer resolves to.


@dataclass(frozen=True)
class Fill:
    """Every element equals `value` (already representable in the variable's dtype)."""

    value: complex
    zero_reason: str = ""  # non-empty when a random initializer was replaced by zeros (GoMLX rule)


@dataclass(frozen=True)
class Uniform:
    """Each element (each part, for complex) uniform in [low, high)."""

    low: float
    high: float


@dataclass(frozen=True)
class Normal:
    """mean + stddev * z with z standard normal, truncated to [lower, upper] (in units of stddev)."""

    mean: float
    stddev: float
    lower: float = -math.inf
    upper: float = math.inf


@dataclass(frozen=True)
class Structured:
    """A tensor that is not elementwise (orthogonal, identity, Dirac): built whole by `structured`."""

    kind: str
    params: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Broadcast:
    """GoMLX's BroadcastTensorToShape: `base` repeated over the leading axes. A suffix repeated
    over leading axes in C order is a tiling, so the variable's flat element i is
    ``convert(base[i % base.size])``; `base` is kept flat in its own dtype `source` and converted
    a piece at a time (`convert`)."""

    base: np.ndarray  # flat, read-only
    source: DTypeInfo


@dataclass(frozen=True)
class Disk:
    """Complex values uniform on the disk |z| < radius, as jax.nn.initializers.variance_scaling
    draws complex uniforms (its _complex_uniform, scaled): z = radius * sqrt(u) * exp(2 pi i v), u
    and v uniform in [0, 1) from the real and imaginary sub-streams. E|z|^2 = radius^2 / 2."""

    radius: float


@dataclass(frozen=True)
class Sparse:
    """PyTorch's sparse_ on a rank-2 tensor: Normal(0, stddev) values, `zeros` of each column's
    elements set to 0, at rows chosen by the variable's key (server/engine/sparse.py)."""

    stddev: float
    zeros: int


Recipe = Fill | Uniform | Normal | Disk | Sparse | Structured | Broadcast

ZERO_NON_FLOAT = "non_float_dtype"
ZERO_RANK_LE_1 = "rank_le_1"

# ---------------------------------------------------------------------------------------------
# Parameters.


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    exclusive: bool = False  # minimum excluded
    integer: bool = False
    kind: str = "number"  # number | string | tensor


def _check(init_name: str, p: Param, value: Any) -> Any:
    path = f"initializer.{init_name}.{p.name}"
    if value is None and p.default is None and p.kind == "number":
        raise SpecError(path, "is required")
    if p.kind == "tensor":
        if not isinstance(value, BaseTensor):
            raise SpecError(path, "a base tensor is required")
        return value
    if p.choices:
        if value not in p.choices:
            raise SpecError(path, f"{value!r} is not one of {', '.join(p.choices)}")
        return value
    if isinstance(value, bool | np.bool_):  # float(True) is 1.0: a boolean is not a number
        raise SpecError(path, f"{value!r} is a boolean, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(path, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise SpecError(path, f"{value} is not finite")
    if p.integer:
        if number != int(number):
            raise SpecError(path, f"{value} is not an integer")
        number = int(number)
    if p.minimum is not None and (number < p.minimum or (p.exclusive and number == p.minimum)):
        raise SpecError(path, f"{value} must be {'>' if p.exclusive else '>='} {p.minimum}")
    return number


# ---------------------------------------------------------------------------------------------
# Formulas.


@dataclass(frozen=True)
class Context:
    """What a formula may look at besides its parameters."""

    shape: tuple[int, ...]
    dtype: DTypeInfo
    fan_axes: FanAxes

    @property
    def fans(self) -> Fans:
        return compute_fans(self.shape, self.fan_axes)

    @property
    def complex_(self) -> bool:
        return self.dtype.kind is Kind.COMPLEX


MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def variance_scaling(
    scale: float, mode: str, distribution: str, fans: Fans, complex_: bool = False
) -> Uniform | Normal | Disk:
    """The general fan-based initializer (see the module docstring); `complex_` for complex dtypes."""
    variance = scale / max(1.0, fans.denominator(mode))
    if distribution == "truncated_normal":
        return Normal(0.0, math.sqrt(variance) / TRUNCATED_NORMAL_STDDEV, -2.0, 2.0)
    if distribution == "normal":
        return Normal(0.0, math.sqrt(variance))
    if complex_:
        return Disk(math.sqrt(2.0 * variance))
    limit = math.sqrt(3.0 * variance)
    return Uniform(-limit, limit)


NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
)


def gain(nonlinearity: str, a: float = 0.0) -> float:
    """PyTorch's ``torch.nn.init.calculate_gain``."""
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a * a))
    if nonlinearity == "selu":
        return 3.0 / 4
    return 1.0


@dataclass(frozen=True)
class InitializerDef:
    """An initializer: its name, parameters, one-line formula and how it resolves."""

    name: str
    formula: str
    params: tuple[Param, ...]
    resolve: Callable[[dict[str, Any], Context], Recipe]
    random: bool = True  # draws random values (so zeros for non-float dtypes)
    fan_based: bool = False  # zeros for rank <= 1


REGISTRY: dict[str, InitializerDef] = {}


def _define(name: str, formula: str, *params: Param, random: bool = True, fan_based: bool = False):
    def register(resolve: Callable[[dict[str, Any], Context], Recipe]):
        REGISTRY[name] = InitializerDef(name, formula, params, resolve, random, fan_based)
        return resolve

    return register


def _fan_case(
    name: str, formula: str, scale: float, mode: str, distribution: str, *extra: Param, torch: bool = False
) -> None:
    """Register a named case of variance_scaling; a `gain` parameter multiplies the scale by gain^2.
    `torch`: PyTorch's name, so a complex uniform is PyTorch's (each part in [-L, L)), not JAX's disk."""

    def resolve(p: dict[str, Any], ctx: Context) -> Recipe:
        g = p.get("gain", 1.0)
        # g ** 2 raises OverflowError
        return variance_scaling(scale * g * g, mode, distribution, ctx.fans, ctx.complex_ and not torch)

    _define(name, formula, *extra, fan_based=True)(resolve)


_DISK = "; complex: uniform on the disk |z| < sqrt(2 * variance) (JAX)"
_PARTS = "; complex: each part so (PyTorch)"
_STDDEV = Param("stddev", 0.01, "standard deviation (JAX's default 1e-2)", minimum=0.0)
_MEAN = Param("mean", 0.0, "mean, added to both parts of a complex value")
_GAIN = Param("gain", 1.0, "multiplies the standard deviation or limit (PyTorch's gain)", minimum=0.0)
_COLUMN_AXIS = Param("column_axis", -1, "axis whose slices are orthonormal columns", integer=True)
_SCALE = Param("scale", 1.0, "multiplies the orthogonal matrix", minimum=0.0)


@_define("zeros", "0 (false for bool)", random=False)
def _zeros(p, ctx):
    return Fill(0)


@_define("ones", "1 (true for bool, 1+0i for complex)", random=False)
def _ones(p, ctx):
    return Fill(1)


@_define(
    "constant",
    "value + imag*i",
    Param("value", 0.0, "the value"),
    Param("imag", 0.0, "imaginary part, for complex dtypes"),
    random=False,
)
def _constant(p, ctx):
    # Checked here so that an error names the parameter (resolve() checks the value again).
    representable(p["value"], ctx.dtype, "initializer.constant.value")
    representable(complex(0, p["imag"]), ctx.dtype, "initializer.constant.imag")
    return Fill(complex(p["value"], p["imag"]) if p["imag"] else p["value"])


@_define("random_normal", "mean + stddev * N", _STDDEV, _MEAN)
def _random_normal(p, ctx):
    return Normal(p["mean"], p["stddev"])


@_define(
    "random_uniform",
    "min + (max - min) * U, U in [0, 1)",
    Param("min", 0.0, "inclusive lower bound"),
    Param("max", 1.0, "exclusive upper bound, >= min"),
)
def _random_uniform(p, ctx):
    if p["min"] > p["max"]:
        raise SpecError("initializer.random_uniform.min", f"min {p['min']} > max {p['max']}")
    return Uniform(p["min"], p["max"])


@_define(
    "truncated_normal",
    "mean + stddev * N truncated to [lower, upper] (JAX's truncated_normal)",
    _STDDEV,
    _MEAN,
    Param("lower", -2.0, "lower truncation bound, in standard deviations"),
    Param("upper", 2.0, "upper truncation bound, in standard deviations, > lower"),
)
def _truncated_normal(p, ctx):
    if p["lower"] >= p["upper"]:
        raise SpecError("initializer.truncated_normal.lower", f"lower {p['lower']} >= upper {p['upper']}")
    return Normal(p["mean"], p["stddev"], p["lower"], p["upper"])


@_define(
    "variance_scaling",
    "see variance_scaling: variance = scale / denominator(mode)" + _DISK,
    Param("scale", 1.0, "variance scale, > 0", minimum=0.0, exclusive=True),
    Param("mode", "fan_in", "fan used as denominator", choices=MODES, kind="string"),
    Param("distribution", "truncated_normal", "distribution", choices=DISTRIBUTIONS, kind="string"),
    fan_based=True,
)
def _variance_scaling(p, ctx):
    return variance_scaling(p["scale"], p["mode"], p["distribution"], ctx.fans, ctx.complex_)


_fan_case("glorot_uniform", "U[-L, L), L = sqrt(6 / (fan_in + fan_out))" + _DISK, 1.0, "fan_avg", "uniform")
_fan_case(
    "glorot_normal", "truncated N, std = sqrt(2 / (fan_in + fan_out)) / .8796", 1.0, "fan_avg", "truncated_normal"
)
_fan_case(
    "xavier_uniform",
    "gain * U[-L, L), L = sqrt(6 / (fan_in + fan_out))" + _PARTS,
    1.0,
    "fan_avg",
    "uniform",
    _GAIN,
    torch=True,
)
_fan_case(
    "xavier_normal", "N, std = gain * sqrt(2 / (fan_in + fan_out)), not truncated", 1.0, "fan_avg", "normal", _GAIN
)
_fan_case("he", "N, std = sqrt(2 / fan_in), not truncated (GoMLX HeFn)", 2.0, "fan_in", "normal")
_fan_case("he_normal", "truncated N, std = sqrt(2 / fan_in) / .8796 (JAX he_normal)", 2.0, "fan_in", "truncated_normal")
_fan_case("he_uniform", "U[-L, L), L = sqrt(6 / fan_in)" + _DISK, 2.0, "fan_in", "uniform")
_fan_case("lecun_normal", "truncated N, std = sqrt(1 / fan_in) / .8796", 1.0, "fan_in", "truncated_normal")
_fan_case("lecun_uniform", "U[-L, L), L = sqrt(3 / fan_in)" + _DISK, 1.0, "fan_in", "uniform")


def _kaiming(distribution: str):
    def resolve(p, ctx):
        # PyTorch's name: a complex uniform is PyTorch's, each part in [-L, L) (not JAX's disk).
        return variance_scaling(gain(p["nonlinearity"], p["a"]) ** 2, p["mode"], distribution, ctx.fans)

    return resolve


_KAIMING_PARAMS = (
    Param("a", 0.0, "negative slope of leaky_relu"),
    Param("mode", "fan_in", "fan_in or fan_out", choices=("fan_in", "fan_out"), kind="string"),
    Param("nonlinearity", "leaky_relu", "PyTorch calculate_gain name", choices=NONLINEARITIES, kind="string"),
)
_define("kaiming_uniform", "U[-L, L), L = gain * sqrt(3 / fan) (PyTorch)" + _PARTS, *_KAIMING_PARAMS, fan_based=True)(
    _kaiming("uniform")
)
_define("kaiming_normal", "N, std = gain / sqrt(fan), not truncated (PyTorch)", *_KAIMING_PARAMS, fan_based=True)(
    _kaiming("normal")
)


def _structured(kind: str):
    def resolve(p, ctx):
        structured.check(kind, p, ctx.shape, ctx.dtype, ctx.fan_axes)
        return Structured(kind, dict(p))

    return resolve


_define("orthogonal", "scale * Q, Q from the QR of a normal matrix (JAX orthogonal)", _SCALE, _COLUMN_AXIS)(
    _structured("orthogonal")
)
_define(
    "delta_orthogonal",
    "orthogonal [in, out] matrix at spatial index (k - 1) // 2, zeros elsewhere (JAX delta_orthogonal)",
    _SCALE,
    _COLUMN_AXIS,
)(_structured("delta_orthogonal"))
_define("identity", "gain * I (rank 2)", _GAIN, random=False)(_structured("identity"))
_define(
    "dirac",
    "1 at spatial index k // 2 of each (out, in) diagonal pair per group (PyTorch dirac_)",
    Param("groups", 1, "number of groups, dividing the out channels", minimum=1, integer=True),
    random=False,
)(_structured("dirac"))


@_define(
    "sparse",
    "N(0, stddev), then ceil(sparsity * rows) zeros per column at random rows (rank 2, PyTorch sparse_)",
    Param("sparsity", None, "fraction of each column's elements set to zero, in [0, 1] (required)", minimum=0.0),
    Param("stddev", 0.01, "standard deviation of the non-zero values (PyTorch's std, default 0.01)", minimum=0.0),
)
def _sparse(p, ctx):
    if p["sparsity"] > 1:
        raise SpecError("initializer.sparse.sparsity", f"{p['sparsity']} is not in [0, 1]")
    if len(ctx.shape) != 2:
        raise SpecError("shape", f"sparse needs rank 2 (PyTorch's sparse_), got {list(ctx.shape)}")
    rows = ctx.shape[0]
    if rows >= sparse.MAX_ROWS:
        raise SpecError("shape", f"sparse permutes rows as 32-bit words: {rows} rows are too many")
    return Sparse(p["stddev"], sparse.zeros_per_column(p["sparsity"], rows))


@_define(
    "broadcast",
    "base repeated over the leading axes (GoMLX BroadcastTensorToShape)",
    Param("base", None, "the base tensor", kind="tensor"),
    random=False,
)
def _broadcast(p, ctx):
    return broadcast_base(p["base"], ctx.shape, ctx.dtype)


# ---------------------------------------------------------------------------------------------
def broadcast_base(base: BaseTensor, shape: tuple[int, ...], dtype: DTypeInfo) -> Broadcast:
    """GoMLX's BroadcastTensorToShape rules: a base shaped like a variable (`check_shape`), the
    variable's shape or a strict suffix of it, whose values all convert to `dtype` (`check_conversion`).

    The base stays flat in its own dtype (a view of the request's bytes on a little-endian host):
    no array of its shape, which may be zero-size with huge dimensions, and no converted copy."""
    path = "initializer.broadcast.base"
    if base.dtype not in dtypes.DTYPES:
        raise SpecError(f"{path}.dtype", f"unknown dtype {base.dtype!r}")
    source = dtypes.lookup(base.dtype)
    bshape, vshape = tuple(int(d) for d in base.shape), tuple(shape)
    try:
        size = check_shape(bshape)
    except SpecError as error:  # the variable's rules, reported at the base's field
        raise SpecError(f"{path}.shape", f"base {error.field}: {error.message}") from None
    expected = size * source.itemsize
    if len(base.data) != expected:
        raise SpecError(f"{path}.data", f"{len(base.data)} bytes, but {source.name} {list(bshape)} needs {expected}")
    if bshape != vshape and not (len(bshape) < len(vshape) and vshape[len(vshape) - len(bshape) :] == bshape):
        raise SpecError(
            f"{path}.shape",
            f"base shape {list(bshape)} is neither the variable's shape {list(vshape)} nor a suffix of it "
            "(no size-1 broadcasting)",
        )
    flat = np.frombuffer(base.data, source.numpy.newbyteorder("<")).astype(source.numpy, copy=False)
    check_conversion(flat, source, dtype, f"{path}.data")
    return Broadcast(flat, source)


def check_conversion(values: np.ndarray, source: DTypeInfo, dtype: DTypeInfo, path: str) -> None:
    """Refuse values of dtype `source` that `convert` cannot turn into `dtype` without wrapping or
    clamping: imaginary parts for real dtypes, NaN/inf or values outside the range (after
    truncation) for integer dtypes. Allocates at most boolean temporaries of the values' size:
    truncation is monotonic, so the truncated values' extremes are the truncated extremes."""
    if source.kind is Kind.COMPLEX and dtype.kind is not Kind.COMPLEX:
        if np.any(values.imag != 0):
            raise SpecError(path, f"complex values with imaginary parts cannot become {dtype.name}")
        values = values.real  # a view
    if dtype.kind not in (Kind.INT, Kind.UINT) or not values.size:
        return
    if source.is_inexact and not np.all(np.isfinite(values)):
        raise SpecError(path, f"non-finite values cannot become {dtype.name}")
    low, high = values.min(), values.max()
    # As Python ints the comparison is exact (float64(2**64) > 2**64 - 1 is False in numpy); int()
    # of a float truncates toward zero, as `convert` does.
    info = np.iinfo(dtype.numpy)
    if int(low) < info.min or int(high) > info.max:
        raise SpecError(path, f"values in [{low}, {high}] do not fit {dtype.name}")


def convert(values: np.ndarray, source: DTypeInfo, dtype: DTypeInfo) -> np.ndarray:
    """GoMLX's ConvertDType of values `check_conversion` accepted, as a new array of `dtype`:
    complex to real keeps the real part, float to integer truncates toward zero, non-zero to bool
    is true, floats round to nearest even. Elementwise, so converting a piece at a time gives the
    bytes that converting the whole base would."""
    if source.kind is Kind.COMPLEX and dtype.kind is not Kind.COMPLEX:
        values = values.real
    if dtype.kind in (Kind.INT, Kind.UINT) and source.is_inexact:
        values = np.trunc(values)
    return values.astype(dtype.numpy)


# ---------------------------------------------------------------------------------------------


def parameters(init: Initializer) -> dict[str, Any]:
    """The initializer's parameters with defaults filled in and each one checked."""
    definition = REGISTRY.get(init.kind)
    if definition is None:
        raise SpecError("initializer", f"unknown initializer {init.kind!r}")
    known = {p.name for p in definition.params}
    for name in init.params:
        if name not in known:
            raise SpecError(f"initializer.{init.kind}.{name}", f"{init.kind} has no parameter {name!r}")
    return {p.name: _check(init.kind, p, init.params.get(p.name, p.default)) for p in definition.params}


def resolve(init: Initializer, shape: tuple[int, ...], dtype: DTypeInfo) -> Recipe:
    """What `init` produces for a variable of `shape` and `dtype`, applying GoMLX's zero rules."""
    definition = REGISTRY.get(init.kind)
    params = parameters(init)
    ctx = Context(tuple(shape), dtype, init.fan_axes)
    # Resolving first validates everything (parameters, fan axes) even where a zero rule applies.
    recipe = definition.resolve(params, ctx)
    if definition.random and not dtype.is_inexact:
        return Fill(0, ZERO_NON_FLOAT)
    if definition.fan_based and len(shape) <= 1:
        return Fill(0, ZERO_RANK_LE_1)
    if isinstance(recipe, Fill):
        return Fill(representable(recipe.value, dtype, f"initializer.{init.kind}"))
    return recipe
