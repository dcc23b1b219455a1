"""Shared fixtures: real servers on free loopback ports, always stopped."""

from __future__ import annotations

import grpc
import pytest
from serverproc import RunningServer, launch

from weightgen.v1 import weightgen_pb2_grpc


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    """One persistent XLA compilation cache for every server of the run: only the first compiles."""
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="session")
def server(xla_cache, tmp_path_factory) -> RunningServer:
    """A default server shared by the tests that do not change its configuration."""
    running = launch(tmp_path_factory.mktemp("server"), cache_dir=xla_cache)
    yield running
    code = running.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{running.log()[-4000:]}"


@pytest.fixture
def start_server(xla_cache, tmp_path):
    """Factory for servers with their own flags; each is stopped at the end of the test."""
    started: list[RunningServer] = []

    def start(*flags: str, **kwargs) -> RunningServer:
        kwargs.setdefault("cache_dir", xla_cache)
        running = launch(tmp_path / f"server{len(started)}", *flags, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield weightgen_pb2_grpc.WeightGenStub(channel)
