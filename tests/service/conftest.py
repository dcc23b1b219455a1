"""Fixtures of the service tests: the in-process engine to compare against, and servers with limits."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from serverproc import RunningServer, launch

from weightgen.server.engine import Engine
from weightgen.v1 import weightgen_pb2_grpc


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The engine in this process: what the server's bytes must equal (compiles lazily)."""
    engine = Engine()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def limited_server(xla_cache, tmp_path_factory) -> Iterator[RunningServer]:
    """A server with small limits (RESOURCE_EXHAUSTED past them)."""
    running = launch(
        tmp_path_factory.mktemp("limited"),
        "--max-elements-per-variable",
        "1000",
        "--max-bytes-per-request",
        "4096",
        "--max-variables-per-request",
        "2",
        "--warm-precisions",
        "float32",
        cache_dir=xla_cache,
    )
    yield running
    assert running.stop() == 0, running.log()[-4000:]


@pytest.fixture
def limited_stub(limited_server):
    with grpc.insecure_channel(limited_server.address) as channel:
        yield weightgen_pb2_grpc.WeightGenStub(channel)
