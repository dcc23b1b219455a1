"""The worker pool: one worker per JAX device, each running compiled block programs.

On a GPU host the workers are the GPUs. On a CPU-only host XLA shows one CPU device unless told
otherwise; `configure_host_devices` (called by the server before JAX starts) splits the host into
one device per core, which measured about 2x faster than one device on two cores
(bench/engine_throughput.py). Jobs from every stream share the pool in submission order.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from . import kernels, rng
from .cache import BlockCache


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit), rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_host_devices(count: int | None = None) -> None:
    """Ask XLA for `count` CPU devices (default: one per available core). Must run before JAX
    initialises its backends; has no effect afterwards."""
    count = count or available_cores()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def float_bits(values) -> bytes:
    """Floats as their IEEE-754 float64 bits: a key in which -0.0 is not 0.0 (as floats, they are equal)."""
    return struct.pack(f"<{len(values)}d", *values)


@dataclass(frozen=True)
class Job:
    """Blocks [block0, block0 + n_blocks) of one variable; `parts` = 2 for complex values.

    Jobs are the keys of single-flight and of the block cache, so equal jobs must give equal bytes:
    coefficients compare by their bits (`coefficient_bits`), since -0.0 == 0.0 as floats but a mean
    of -0.0 can give -0.0 where 0.0 gives 0.0."""

    family: str
    precision: str
    key: rng.Key
    block0: int
    n_blocks: int
    coefficients: tuple[float, ...] = field(compare=False)
    parts: int = 1
    coefficient_bits: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficient_bits", float_bits(self.coefficients))


class WorkerPool:
    """Runs jobs on the devices, `threads_per_device` at a time per device, returning futures.

    Identical jobs share one generation: one in flight is joined (single-flight), and a finished one
    is served from `cache` (a BlockCache of `cache_bytes`; 0 disables it). Callers that stop
    waiting call `release`, which cancels a job only when nobody else waits for it."""

    def __init__(self, devices: list[jax.Device] | None = None, threads_per_device: int = 1, cache_bytes: int = 0):
        self.devices = list(devices) if devices is not None else jax.devices()
        self.cache = BlockCache(cache_bytes) if cache_bytes > 0 else None
        self._inflight: dict[Job, tuple[Future[np.ndarray], list[int]]] = {}
        self._inflight_lock = threading.Lock()
        self.shared = 0  # submissions that joined a job already in flight
        if not self.devices:
            raise ValueError("no JAX devices")
        self._next_device = itertools.cycle(self.devices)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(
            max_workers=len(self.devices) * threads_per_device,
            thread_name_prefix="weightgen-worker",
            initializer=self._bind_device,
        )
        self.width = len(self.devices) * threads_per_device

    def _bind_device(self) -> None:
        with self._lock:
            self._local.device = next(self._next_device)

    def _run(self, job: Job) -> np.ndarray:
        device = self._local.device
        n = job.n_blocks
        compiled = kernels.bucket(n)
        counters = rng.counters_per_block(32 if job.precision == "float32" else 64)
        parts = [
            kernels.run(
                device, job.family, job.precision, job.key, job.block0, compiled, p * counters, job.coefficients
            )[: n * rng.BLOCK_ELEMENTS]
            for p in range(job.parts)
        ]
        if job.parts == 1:
            return parts[0]
        out = np.empty(parts[0].size, np.complex64 if job.precision == "float32" else np.complex128)
        out.real, out.imag = parts
        return out

    def submit(self, job: Job) -> Future[np.ndarray]:
        # The cache is read under the in-flight lock, and a finished job enters the cache before it
        # leaves the in-flight table (`_finished`), so a job is always found in one or the other:
        # identical submissions never generate twice while the result is cached.
        with self._inflight_lock:
            if self.cache is not None:
                cached = self.cache.get(job)
                if cached is not None:
                    done: Future[np.ndarray] = Future()
                    done.set_result(cached)
                    return done
            entry = self._inflight.get(job)
            if entry is not None:
                entry[1][0] += 1
                self.shared += 1
                return entry[0]
            future = self._executor.submit(self._run, job)
            self._inflight[job] = (future, [1])
        future.add_done_callback(lambda f: self._finished(job, f))
        return future

    def _finished(self, job: Job, future: Future[np.ndarray]) -> None:
        with self._inflight_lock:
            if self.cache is not None and not future.cancelled() and future.exception() is None:
                self.cache.put(job, future.result())
            entry = self._inflight.get(job)
            if entry is not None and entry[0] is future:
                del self._inflight[job]

    def release(self, job: Job, future: Future[np.ndarray]) -> None:
        """The caller no longer needs `future`: cancel it unless another caller still waits."""
        with self._inflight_lock:
            entry = self._inflight.get(job)
            if entry is None or entry[0] is not future:
                return
            entry[1][0] -= 1
            if entry[1][0] > 0:
                return
        future.cancel()

    def warm(self, precisions: tuple[str, ...] = ("float32", "float64")) -> int:
        """Compile every block program on every device; returns the number of programs run."""
        futures = [self._executor.submit(kernels.warm, d, precisions) for d in self.devices]
        return sum(f.result() for f in futures)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
