"""One engine for the whole engine suite: building and warming one is the slow part."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import pytest

from weightgen.server.engine import Engine, WorkerPool


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    engine = Engine()
    engine.warm(("float32",))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def cpu_engine(engine: Engine) -> Iterator[Engine]:
    """An engine on the CPU backend: golden digests and cross-process comparisons are defined there
    (the float transforms are bit-identical on one backend only). It is `engine` on a CPU-only host."""
    if all(d.platform == "cpu" for d in engine.pool.devices):
        yield engine
        return
    cpu = Engine(WorkerPool(jax.devices("cpu")))
    yield cpu
    cpu.close()
