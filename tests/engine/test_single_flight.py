"""Single-flight plus the block cache: however identical submissions interleave, each distinct job
is generated exactly once while its result stays cached (a job is always either in flight or in the
cache: the pool caches a finished job before taking it off its in-flight table)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from weightgen.server.engine import Engine
from weightgen.server.engine.spec import Initializer, VariableSpec
from weightgen.server.engine.workers import Job, WorkerPool


class CountingPool(WorkerPool):
    """A pool whose jobs return at once and count how often they were generated."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.generated: dict[Job, int] = {}
        self._count_lock = threading.Lock()

    def _run(self, job: Job) -> np.ndarray:
        with self._count_lock:
            self.generated[job] = self.generated.get(job, 0) + 1
        return np.full(16, job.block0, np.float32)


def test_each_job_is_generated_once_under_a_herd():
    pool = CountingPool(threads_per_device=2, cache_bytes=1 << 30)
    jobs = [Job("normal", "float32", (1, 2), b, 1, (0.0,)) for b in range(2000)]
    herd, start = 8, threading.Barrier(8)
    wrong: list[int] = []

    def member() -> None:
        start.wait()
        for job in jobs:
            if pool.submit(job).result()[0] != job.block0:
                wrong.append(job.block0)

    try:
        members = [threading.Thread(target=member) for _ in range(herd)]
        for t in members:
            t.start()
        for t in members:
            t.join(120)
    finally:
        pool.close()
    assert not wrong
    assert set(pool.generated) == set(jobs)
    assert max(pool.generated.values()) == 1, {j.block0: n for j, n in pool.generated.items() if n > 1}
    cache = pool.cache
    assert cache.hits + cache.misses == herd * len(jobs)
    assert cache.misses - pool.shared == len(jobs)
    assert cache.evictions == 0


def test_jobs_differing_only_in_the_sign_of_a_zero_coefficient_are_different_jobs():
    plus = Job("normal", "float32", (1, 2), 0, 1, (0.0, 0.0))
    minus = Job("normal", "float32", (1, 2), 0, 1, (-0.0, 0.0))
    assert plus != minus and plus == Job("normal", "float32", (1, 2), 0, 1, (0.0, 0.0))
    assert len({plus, minus}) == 2


@pytest.fixture
def engine_factory() -> Iterator:
    engines: list[Engine] = []

    def make(cache_bytes: int) -> Engine:
        engines.append(Engine(WorkerPool(cache_bytes=cache_bytes)))
        return engines[-1]

    yield make
    for e in engines:
        e.close()


def test_a_cached_mean_of_zero_does_not_answer_for_a_mean_of_minus_zero(engine_factory):
    # stddev 0: every value is mean + 0 * z, which is -0.0 where z < 0 and the mean is -0.0.
    def spec(mean: float) -> VariableSpec:
        return VariableSpec("w", (64,), "float32", Initializer("random_normal", {"mean": mean, "stddev": 0.0}))

    fresh = engine_factory(cache_bytes=0).generate(spec(-0.0), seed=3)
    assert np.signbit(fresh).any() and not np.signbit(fresh).all()
    cached = engine_factory(cache_bytes=64 << 20)
    cached.generate(spec(0.0), seed=3)
    assert cached.generate(spec(-0.0), seed=3).tobytes() == fresh.tobytes()
