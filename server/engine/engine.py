"""The engine API the service uses: a validated variable spec in, the tensor's bytes out, in order.

    engine = Engine()                                    # a worker per JAX device
    prepared = engine.prepare(spec, seed=42)             # validates; raises SpecError
    for values in engine.stream(prepared): ...           # numpy arrays of the final dtype, whose
                                                         # concatenation is the C-order tensor (slice)
Generation is pipelined: the next pieces are being generated on the workers while the caller
consumes the current one, and at most `lookahead` pieces are in flight per stream, so memory stays
flat whatever the tensor size. Closing the stream cancels what has not started.

Every recipe walks the plan the same way (`_pieces`: pieces of at most one kernel call), slices
included. Whole-tensor (structured) initializers build their tensor once, when a stream's first
piece is pulled, in a `WholeCache` shared by every stream of the same tensor, and cut their pieces
from it; broadcast cuts its pieces from the flat base and converts each one alone.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace

import ml_dtypes
import numpy as np

from . import dtypes, initializers, kernels, rng, sampling, sparse, structured
from .cache import Cancelled, WholeCache
from .dtypes import DTypeInfo, Kind
from .initializers import Broadcast, Disk, Fill, Normal, Recipe, Sparse, Structured, Uniform
from .plan import MAX_RUNS_PER_PIECE, Piece, Plan, check_shape, copy_runs
from .spec import MAX_NAME_BYTES, Initializer, SpecError, VariableSpec
from .workers import Job, WorkerPool, float_bits

SELF_CHECK_UNIFORM = "ea43004999aa1690e37764b825802126221fab27182bed7cfa21f4b09cfd3d20"
SELF_CHECK_NORMAL = "c63b34b5ab36d99c77a02ae70f2d374535ab01079a638133c16920a0c98bae95"
"""SHA-256 of 4096 float32 values of "weightgen/self-check", seed 1 (uniform [0, 1); normal std 1)."""

STREAM_OVERHEAD_BYTES = 32 << 10
"""What a stream holds besides its arrays (measured: under 20 KiB)."""


class LimitError(SpecError):
    """A valid spec beyond a configured limit (the service's RESOURCE_EXHAUSTED); `limit` names the
    limit, for the service's metrics."""

    def __init__(self, field: str, message: str, *, limit: str = "structured_elements", **where):
        super().__init__(field, message, **where)
        self.limit = limit


@dataclass(frozen=True)
class TensorInfo:
    """What the client is told about a variable before its bytes."""

    name: str
    shape: tuple[int, ...]  # the full tensor's shape
    dtype: str
    slice: tuple[tuple[int, int], ...]  # the delivered hyperslab; () = the whole tensor
    byte_size: int  # bytes delivered (of the slice, when there is one)
    seed: int  # the effective seed
    generator: str
    zero_reason: str  # why a random initializer gave zeros ("" = it did not)
    sequence_index: int = -1  # the variable's position in a sequential session, else -1

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.slice) if self.slice else self.shape


@dataclass(frozen=True)
class Prepared:
    spec: VariableSpec
    info: TensorInfo
    dtype: DTypeInfo
    recipe: Recipe
    plan: Plan
    key: rng.Key | None  # None until keyed: the random key of the variable
    affine: sampling.Affine | None = None  # the distribution's coefficients, for Uniform, Normal and Disk

    def keyed(self, seed: int, key: rng.Key, sequence_index: int = -1) -> Prepared:
        """This variable with its effective seed and random key (and position in a sequential session)."""
        return replace(self, key=key, info=replace(self.info, seed=seed, sequence_index=sequence_index))

    @property
    def content_key(self) -> tuple | None:
        """A hashable value that is equal for two prepared variables only when their delivered bytes
        are equal by construction (same values, dtype and slice): random, constant and structured
        tensors (the latter by their whole tensor's key). None for broadcasts (their base is the
        request's bytes). Floats enter by their bits (-0.0 is not 0.0)."""
        where = (self.dtype.name, self.plan.shape, self.plan.start, self.plan.stop)
        if isinstance(self.recipe, Fill):
            value = complex(self.recipe.value)
            return ("fill", float_bits((value.real, value.imag)), *where)
        if isinstance(self.recipe, Disk):  # the same raw uniforms as random_uniform [0, 1), transformed
            return ("disk", self.key, float_bits((self.recipe.radius,)), *where)
        if isinstance(self.recipe, Sparse):  # random_normal's values, some of them zeroed
            return ("sparse", self.key, self.recipe.zeros, float_bits(self.affine.coefficients), *where)
        if self.affine is not None:
            return ("random", self.key, self.affine.family, float_bits(self.affine.coefficients), *where)
        whole = self.whole_key
        return None if whole is None else ("structured", whole, *where)

    @property
    def whole_key(self) -> tuple | None:
        """For a structured variable, a hashable value equal for two prepared variables only when
        their whole tensors are equal by construction: kind, parameters (floats by their bits), the
        key (random kinds only: identity and dirac are the same for every seed and name), full
        shape, dtype and fan axes. The slice is not part of it: slices are cut from the whole."""
        if not isinstance(self.recipe, Structured):
            return None
        kind = self.recipe.kind
        params = tuple(
            sorted((name, float_bits((v,)) if isinstance(v, float) else v) for name, v in self.recipe.params.items())
        )
        key = self.key if kind in structured.RANDOM_KINDS else None
        return ("whole", kind, params, key, self.plan.shape, self.dtype.name, self.spec.initializer.fan_axes)

    @property
    def is_random(self) -> bool:
        """Whether generating it draws random numbers (so it takes a place in a sequential session)."""
        if isinstance(self.recipe, Uniform | Normal | Disk | Sparse):
            return True
        return isinstance(self.recipe, Structured) and self.recipe.kind in structured.RANDOM_KINDS


def validate_name(name: str) -> None:
    if not name:
        raise SpecError("name", "is empty")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise SpecError("name", f"is longer than {MAX_NAME_BYTES} bytes")


class Engine:
    """Generates tensors on a worker pool (default: one worker per JAX device)."""

    def __init__(
        self,
        pool: WorkerPool | None = None,
        *,
        max_structured_elements: int = 1 << 24,
        lookahead: int | None = None,
        whole_cache_bytes: int = 256 << 20,
        max_structured_builds: int = 2,
    ):
        """`max_structured_elements` bounds a whole-tensor initializer's variable (LimitError);
        `lookahead` the pieces in flight per stream (default 2 * pool width + 1); built whole
        tensors stay in a cache of `whole_cache_bytes` (`whole_cache`, whose counters are for
        metrics), and at most `max_structured_builds` of them are built at once."""
        self.pool = pool or WorkerPool()
        self.max_structured_elements = max_structured_elements
        self.lookahead = lookahead or 2 * self.pool.width + 1
        self.whole_cache = WholeCache(whole_cache_bytes, max_structured_builds)

    def warm(self, precisions: tuple[str, ...] = ("float32", "float64")) -> int:
        """Compile every block program on every device, so no request waits for XLA, then check
        that this process still computes the contract's values (`self_check`)."""
        count = self.pool.warm(precisions)
        self.self_check()
        return count

    def self_check(self) -> None:
        """Raise RuntimeError when known tensors do not come out bit for bit as the contract says:
        a JAX or XLA upgrade or an XLA flag (``--xla_cpu_enable_fast_math``) that changes values
        must stop the server, not change every user's weights. Uniform values are exact on every
        backend; normal values are checked on the CPU, where the golden digests were made."""
        checks = [("random_uniform", {}, SELF_CHECK_UNIFORM)]
        if self.pool.devices[0].platform == "cpu":
            checks.append(("random_normal", {"stddev": 1.0}, SELF_CHECK_NORMAL))
        for kind, params, expected in checks:
            spec = VariableSpec("weightgen/self-check", (4096,), "float32", Initializer(kind, params))
            got = hashlib.sha256(self.generate(spec, seed=1).tobytes()).hexdigest()
            if got != expected:
                raise RuntimeError(
                    f"self-check failed: {kind} values differ from {rng.GENERATOR} (sha256 {got}, expected "
                    f"{expected}); check XLA_FLAGS and the JAX version (docs/determinism.md)"
                )

    def close(self) -> None:
        self.pool.close()

    # -- preparing ---------------------------------------------------------------------------

    def prepare(self, spec: VariableSpec, *, seed: int | None = None) -> Prepared:
        """Validate `spec` completely and resolve its recipe. Without `seed` the result is not keyed
        yet (the service's `seeds` module keys it, `Prepared.keyed`); with one, it is keyed by name
        under that seed (0 picks a random one, reported in the info), for direct users of the engine."""
        validate_name(spec.name)
        shape = tuple(int(d) for d in spec.shape)
        size = check_shape(shape)
        if spec.dtype not in dtypes.DTYPES:
            raise SpecError("dtype", f"unknown dtype {spec.dtype!r}")
        dtype = dtypes.lookup(spec.dtype)
        if spec.initializer is None:
            raise SpecError("initializer", "missing (and no session default)")
        if seed is not None and not 0 <= seed < 1 << 64:
            raise SpecError("seed", f"{seed} is not a uint64")
        plan = Plan.of(shape, tuple(spec.slice))
        recipe = initializers.resolve(spec.initializer, shape, dtype)
        if isinstance(recipe, Structured) and size > self.max_structured_elements:
            raise LimitError(
                "shape",
                f"{spec.initializer.kind} builds the whole tensor: {size} elements exceed the limit "
                f"of {self.max_structured_elements}",
            )
        # Resolved here, once: it also validates that the scaled values fit the dtype.
        affine = self._affine(recipe, dtype) if isinstance(recipe, Uniform | Normal | Disk | Sparse) else None
        info = TensorInfo(
            name=spec.name,
            shape=shape,
            dtype=dtype.name,
            slice=() if plan.is_whole else tuple(zip(plan.start, plan.stop, strict=True)),
            byte_size=plan.size * dtype.itemsize,
            seed=0,
            generator=rng.GENERATOR,
            zero_reason=recipe.zero_reason if isinstance(recipe, Fill) else "",
        )
        prepared = Prepared(spec, info, dtype, recipe, plan, None, affine)
        if seed is None:
            return prepared
        seed = seed or rng.random_seed()  # GoMLX's NoSeed: pick one, and report it in the info
        return prepared.keyed(seed, rng.variable_key(seed, spec.name))

    @staticmethod
    def _affine(recipe: Uniform | Normal | Disk | Sparse, dtype: DTypeInfo) -> sampling.Affine:
        precision = dtype.compute.name
        if isinstance(recipe, Sparse):  # its non-zero values
            recipe = Normal(0.0, recipe.stddev)
        complex_parts = dtype.kind is Kind.COMPLEX
        # Parameters beyond the compute precision overflow in the casts below: refused, not warned about.
        with np.errstate(over="ignore"):
            if isinstance(recipe, Uniform):
                affine = sampling.uniform(recipe.low, recipe.high, precision)
            elif isinstance(recipe, Disk):  # u and v uniform in [0, 1), then `_disk`
                affine = sampling.uniform(0.0, 1.0, precision)
            else:
                stddev = recipe.stddev / math.sqrt(2) if complex_parts else recipe.stddev
                affine = sampling.normal(recipe.mean, stddev, recipe.lower, recipe.upper, precision)
            scaled = np.asarray([affine.coefficients[i] for i in (0, 1, 4, 5)], np.float64)
            if not np.all(np.isfinite(scaled.astype(dtype.compute))):
                raise SpecError(
                    "initializer", f"parameters overflow the {precision} computation of {dtype.name} values"
                )
        # The final cast rounds; it must not turn large values into infinities (float16 tops at 65504).
        largest = float(ml_dtypes.finfo(dtype.compute if dtype.kind is Kind.COMPLEX else dtype.numpy).max)
        bound = _largest_magnitude(recipe, affine, precision)
        if bound > largest:
            raise SpecError(
                "initializer", f"values up to {bound:.6g} in magnitude overflow {dtype.name} (largest {largest:.6g})"
            )
        return affine

    # -- streaming ---------------------------------------------------------------------------

    def stream(
        self, prepared: Prepared, cancelled: threading.Event | None = None, skip: int = 0
    ) -> Iterator[np.ndarray]:
        """The delivered tensor as consecutive flat arrays of its dtype, each at most
        `kernels.CALL_ELEMENTS` elements (read-only; do not keep references longer than needed).

        Nothing is computed before the first piece is pulled, so the thread that pulls does the
        work (a whole-tensor build included). A pull that waits for a structured build (a build
        slot, or another stream building the same tensor) polls `cancelled` and raises `Cancelled`
        once it is set. Closing the generator releases what it holds and cancels what has not
        started. `skip` leaves out the first pieces without computing them (`seek` says how many)."""
        recipe, dtype, plan = prepared.recipe, prepared.dtype, prepared.plan
        if plan.size == 0:
            return
        if isinstance(recipe, Fill):
            yield from self._fill(recipe, dtype, plan, skip)
        elif isinstance(recipe, Uniform | Normal):
            yield from self._random(prepared.key, prepared.affine, dtype, plan, skip)
        elif isinstance(recipe, Disk):
            for values in self._random_values(prepared.key, prepared.affine, dtype, plan, skip):
                yield dtypes.cast_final(_disk(values, recipe.radius), dtype)
        elif isinstance(recipe, Sparse):
            yield from self._sparse(prepared, recipe, skip)
        elif isinstance(recipe, Broadcast):
            yield from self._broadcast(recipe, dtype, plan, skip)
        else:
            yield from self._structured(prepared, cancelled, skip)

    def seek(self, prepared: Prepared, element: int) -> tuple[int, int]:
        """Where `stream` starts to deliver element `element` (of the delivered ones, in order):
        (pieces to skip, the first element of the piece that holds it). Pieces are one kernel call
        each, so a whole tensor's (and a constant's) are CALL_ELEMENTS long; a slice's are walked."""
        plan = prepared.plan
        if isinstance(prepared.recipe, Fill) or plan.is_whole:
            skip = min(element, max(plan.size - 1, 0)) // kernels.CALL_ELEMENTS
            return skip, skip * kernels.CALL_ELEMENTS
        skip = at = 0
        for piece in _pieces(plan):
            if at + piece.size > element:
                break
            skip, at = skip + 1, at + piece.size
        return skip, at

    def holding_bytes(self, prepared: Prepared, chunk_bytes: int) -> int:
        """An upper estimate of the bytes the server holds while streaming `prepared`, to reserve
        against a memory budget before the stream starts. With P = min(delivered elements,
        CALL_ELEMENTS) elements per piece, e the final dtype's itemsize and N the full tensor's
        elements (an empty delivery holds the first two terms only):

            STREAM_OVERHEAD_BYTES            a stream's Python objects (generator frames, jobs,
                                             futures)
          + runs                             a slice's run starts (`_runs_bytes`)
          + 2 * chunk_bytes + P * e          the encoder's chunk being filled and the one being
                                             sent; the piece the consumer still holds
          + fill        P * e                one buffer, yielded as views
          + random      pipeline + P * e     the pieces in flight (`_pipeline_bytes`); the cast
          + disk        pipeline + P * (64 + e)  the same, and `_disk`'s float64 temporaries
          + sparse      pipeline + P * (160 + e) the same, and the zero mask's (`_SPARSE_BYTES`)
                                             to the final dtype
          + broadcast   P * (8 + 4 * s + e)  a piece's index (int64), its gathered base values (up
                                             to 3 * P when a short base is tiled, s = the base's
                                             itemsize), their truncation, the conversion. The
                                             base itself is the request's bytes, not counted here
          + structured  N * e + build + P * (8 + e)
                                             the whole tensor (held even when cached: the stream
                                             holds it); `structured.build_bytes` plus, for the
                                             random kinds, the draw's pipeline; a sliced piece's
                                             index and gather
        """
        plan, dtype, recipe = prepared.plan, prepared.dtype, prepared.recipe
        if plan.size == 0:  # nothing is generated, not even a whole tensor an empty slice would cut
            return STREAM_OVERHEAD_BYTES + 2 * chunk_bytes
        e = dtype.itemsize
        piece = min(plan.size, kernels.CALL_ELEMENTS)
        held = STREAM_OVERHEAD_BYTES + self._runs_bytes(plan) + 2 * chunk_bytes + piece * e
        if isinstance(recipe, Fill):
            return held + piece * e
        if isinstance(recipe, Uniform | Normal):
            return held + self._pipeline_bytes(dtype, plan) + piece * e
        if isinstance(recipe, Disk):
            return held + self._pipeline_bytes(dtype, plan) + piece * (_DISK_BYTES + e)
        if isinstance(recipe, Sparse):
            return held + self._pipeline_bytes(dtype, plan) + piece * (_SPARSE_BYTES + e)
        if isinstance(recipe, Broadcast):
            return held + piece * (8 + 4 * recipe.source.itemsize + e)
        axes = prepared.spec.initializer.fan_axes
        build = structured.build_bytes(recipe.kind, plan.shape, dtype, axes)
        if recipe.kind in structured.RANDOM_KINDS:
            build += self._pipeline_bytes(dtype, Plan.of((structured.matrix_elements(recipe.kind, plan.shape, axes),)))
        return held + math.prod(plan.shape) * e + build + piece * (8 + e)

    def _runs_bytes(self, plan: Plan) -> int:
        """A sliced plan's run starts: at most MAX_RUNS_PER_PIECE int64 per piece, for the pieces
        in flight (lookahead + 2) and `Plan.pieces`' unravelled indices (2 * rank arrays of them).
        A whole tensor is one run: 0."""
        if plan.is_whole:
            return 0
        return (self.lookahead + 2 + 2 * len(plan.shape)) * MAX_RUNS_PER_PIECE * 8

    def _pipeline_bytes(self, dtype: DTypeInfo, plan: Plan) -> int:
        """An upper estimate of the random pipeline's values of `plan` in flight:

            (lookahead + 2) * G * k  +  gather       G = calls * C * parts * c

        C is the elements of one kernel call (its compiled bucket of blocks, at most
        CALL_ELEMENTS, fewer for a small tensor), c the compute itemsize, parts = 2 for complex;
        a piece needs 1 call for a whole tensor, 2 for a slice (its runs start in one call window
        and may end in the next). lookahead + 2: the pieces submitted, the one just yielded (still
        referenced while the next ones are submitted and cast), and one for a released job still
        finishing on a worker. k = 2 for complex: the worker holds both parts and the combined
        array. A slice's gather concatenates the calls (G) and builds an index and the gathered
        values: P * (8 + parts * c)."""
        if plan.size == 0:
            return 0
        complex_ = dtype.kind is Kind.COMPLEX
        parts = k = 2 if complex_ else 1
        c = dtype.compute.itemsize
        total_blocks = -(-math.prod(plan.shape) // rng.BLOCK_ELEMENTS)
        call = kernels.bucket(min(total_blocks, kernels.MAX_CALL_BLOCKS)) * rng.BLOCK_ELEMENTS
        calls = 1 if plan.is_whole else 2
        generated = calls * call * parts * c
        in_flight = (self.lookahead + 2) * generated * k
        if plan.is_whole:
            return in_flight
        piece = min(plan.size, kernels.CALL_ELEMENTS)
        return in_flight + generated + piece * (8 + parts * c)

    def generate(self, spec: VariableSpec, *, seed: int) -> np.ndarray:
        """The whole delivered tensor as one array (a convenience for tests and benchmarks)."""
        prepared = self.prepare(spec, seed=seed)
        out = np.empty(prepared.plan.size, prepared.dtype.numpy)
        at = 0
        for values in self.stream(prepared):
            out[at : at + values.size] = values
            at += values.size
        return out.reshape(prepared.info.out_shape)

    def _fill(self, recipe: Fill, dtype: DTypeInfo, plan: Plan, skip: int = 0) -> Iterator[np.ndarray]:
        value = recipe.value if dtype.kind is Kind.COMPLEX else recipe.value.real
        buffer = np.full(min(plan.size, kernels.CALL_ELEMENTS), value, dtype.numpy)
        buffer.flags.writeable = False
        for at in range(skip * buffer.size, plan.size, buffer.size):
            yield buffer[: min(buffer.size, plan.size - at)]

    def _broadcast(self, recipe: Broadcast, dtype: DTypeInfo, plan: Plan, skip: int = 0) -> Iterator[np.ndarray]:
        """Each piece gathered from the flat base and converted on its own: a widening (uint8 to
        complex128: 16x) never exists for more than a piece."""
        for piece in _pieces(plan, skip):
            yield initializers.convert(piece.take(recipe.base), recipe.source, dtype)

    def _random(
        self, key: rng.Key, affine: sampling.Affine, dtype: DTypeInfo, plan: Plan, skip: int = 0
    ) -> Iterator[np.ndarray]:
        yield from (dtypes.cast_final(v, dtype) for v in self._random_values(key, affine, dtype, plan, skip))

    def _random_values(
        self, key: rng.Key, affine: sampling.Affine, dtype: DTypeInfo, plan: Plan, skip: int = 0
    ) -> Iterator[np.ndarray]:
        block = rng.BLOCK_ELEMENTS
        parts = 2 if dtype.kind is Kind.COMPLEX else 1
        pieces = _pieces(plan, skip)
        pending: deque[tuple[Piece, list[tuple[Job, Future[np.ndarray]]]]] = deque()

        total_blocks = -(-math.prod(plan.shape) // block)

        def submit(piece: Piece) -> None:
            calls = []
            for b, n in piece.calls(block, kernels.MAX_CALL_BLOCKS, total_blocks):
                job = Job(affine.family, dtype.compute.name, key, b, n, affine.coefficients, parts)
                calls.append((job, self.pool.submit(job)))
            pending.append((piece, calls))

        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < self.lookahead:
                    piece = next(pieces, None)
                    if piece is None:
                        exhausted = True
                    else:
                        submit(piece)
                if not pending:
                    return
                piece, calls = pending.popleft()
                yield _gather(piece, [(job.block0, f.result()) for job, f in calls], block)
        finally:
            for _, calls in pending:
                for job, future in calls:
                    self.pool.release(job, future)

    def _sparse(self, prepared: Prepared, recipe: Sparse, skip: int = 0) -> Iterator[np.ndarray]:
        """random_normal's values of each piece, with the piece's elements that are zeros of
        PyTorch's sparse_ (`sparse.zero_mask`, element by element) set to 0."""
        dtype, plan = prepared.dtype, prepared.plan
        rows, cols = plan.shape
        values = self._random_values(prepared.key, prepared.affine, dtype, plan, skip)
        for piece, piece_values in zip(_pieces(plan, skip), values, strict=True):
            flat = (piece.starts[:, None] + np.arange(piece.length, dtype=np.int64)[None, :]).ravel()
            zeros = sparse.zero_mask(prepared.key, rows, cols, recipe.zeros, flat)
            yield dtypes.cast_final(np.where(zeros, piece_values.dtype.type(0), piece_values), dtype)

    def _structured(self, prepared: Prepared, cancelled: threading.Event | None, skip: int = 0) -> Iterator[np.ndarray]:
        """Pieces cut from the whole tensor, which is built once for all streams that want it."""
        whole = self.whole_cache.get(prepared.whole_key, lambda: self._build_whole(prepared, cancelled), cancelled)
        for piece in _pieces(prepared.plan, skip):
            yield piece.take(whole)

    def _build_whole(self, prepared: Prepared, cancelled: threading.Event | None) -> np.ndarray:
        """The whole tensor of a structured variable, flat in C order and its final dtype."""
        dtype, recipe = prepared.dtype, prepared.recipe

        def draw(n: int) -> np.ndarray:
            affine = self._affine(Normal(0.0, 1.0), dtype)
            parts = []
            for values in self._random_values(prepared.key, affine, dtype, Plan.of((n,))):
                if cancelled is not None and cancelled.is_set():  # stop generating for a stream that left
                    raise Cancelled
                parts.append(values)
            return np.concatenate(parts) if n else np.zeros(0, dtype.compute)

        fan_axes = prepared.spec.initializer.fan_axes
        values = structured.build(recipe.kind, recipe.params, prepared.plan.shape, dtype, fan_axes, draw)
        return np.ascontiguousarray(values).reshape(-1)


def _pieces(plan: Plan, skip: int = 0) -> Iterator[Piece]:
    """The delivered elements as pieces of at most one kernel call each, cut at call windows: the
    one way every recipe walks a plan, slices included; the first `skip` left out."""
    pieces = plan.pieces(kernels.CALL_ELEMENTS, kernels.CALL_ELEMENTS)
    return itertools.islice(pieces, skip, None) if skip else pieces


_SPARSE_BYTES = 160
"""Bytes per element the zero mask holds besides the values: flat indices (8), rows and columns
(16 as int64, then 8 as uint32), column keys (16), the Feistel state and a threefry pass's words
(about 10 uint32 arrays), the mask and np.where's result (8 + 1 + compute itemsize): generously."""

_DISK_BYTES = 64
"""Bytes per element `_disk` holds besides its input and result: u, v (then r and theta), cos, sin
(float64 each) and the complex128 result before its rounding (16)."""


def _disk(values: np.ndarray, radius: float) -> np.ndarray:
    """JAX's complex uniform on the disk |z| < radius, from u (real parts) and v (imaginary parts)
    uniform in [0, 1) in the compute precision: z = r * (cos theta + i sin theta) with
    r = radius * sqrt(u) and theta = 2 pi v, computed in float64 (sqrt correctly rounded, cos and
    sin the C library's, elementwise) and rounded once into the compute precision."""
    r = np.sqrt(values.real.astype(np.float64))
    r *= radius
    theta = values.imag.astype(np.float64)
    theta *= 2 * math.pi
    out = np.empty(values.shape, np.complex128)
    np.multiply(r, np.cos(theta), out=out.real)
    np.multiply(r, np.sin(theta), out=out.imag)
    return out.astype(values.dtype, copy=False)


def _largest_magnitude(recipe: Uniform | Normal | Disk | Sparse, affine: sampling.Affine, precision: str) -> float:
    """An upper bound on |value| the distribution can produce (per part for complex)."""
    if isinstance(recipe, Disk):
        return recipe.radius
    if isinstance(recipe, Uniform):
        return max(abs(recipe.low), abs(recipe.high))
    a = affine.coefficients
    z = max(abs(a[2]), abs(a[3]))  # the truncation, if any
    if math.isinf(z):  # the centred uniform stays 2^-(p+1) inside (0, 1): |z| <= Phi^-1(1 - 2^-(p+1))
        z = statistics.NormalDist().inv_cdf(1 - 2.0 ** -(sampling.PRECISIONS[precision][2] + 1)) * 1.001
    return abs(a[4]) + abs(a[5]) * z


def _gather(piece: Piece, generated: list[tuple[int, np.ndarray]], block: int) -> np.ndarray:
    """The piece's elements out of the generated calls: a view when it is one run in one call, else
    one copy of just those elements. Runs are copied from the call that holds them (evenly spaced
    ones, a column shard's rows, as one strided copy: `copy_runs`); a run that crosses into the
    next call (calls a run crosses between are adjacent: `Piece.calls`) in its two parts."""
    starts, length = piece.starts, piece.length
    if len(generated) == 1 and starts.size == 1:
        b, values = generated[0]
        at = int(starts[0]) - b * block
        return values[at : at + length]
    out = np.empty((starts.size, length), generated[0][1].dtype)
    for c, (b, values) in enumerate(generated):
        lo, hi = b * block, b * block + values.size
        first, end = np.searchsorted(starts, [lo, hi])  # the runs that start in this call
        if first == end:
            continue
        inside = first + int(np.searchsorted(starts[first:end], hi - length, side="right"))
        if inside > first:
            copy_runs(values, starts[first:inside] - lo, length, out[first:inside])
        for i in range(inside, end):  # it goes on in the next call
            at = int(starts[i]) - lo
            head = values.size - at
            out[i, :head] = values[at:]
            out[i, head:] = generated[c + 1][1][: length - head]
    return out.reshape(-1)
