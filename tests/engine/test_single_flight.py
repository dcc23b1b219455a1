"""Single-flight plus the block cache: however identical submissions interleave, each distinct job
is generated exactly once while its result stays cached (a job is always either in flight or in the
cache: the pool caches a finished job before taking it off its in-flight table)."""

from __future__ import annotations

import threading

import numpy as np

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
