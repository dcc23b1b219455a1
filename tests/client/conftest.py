"""Client fixtures: a Client on the shared real server, and an in-process engine as the reference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from weightgen.client import Client


@pytest.fixture
def client(server) -> Iterator[Client]:
    with Client(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def engine():
    """The server's engine, in this process: what the service must deliver, byte for byte."""
    from weightgen.server.engine import Engine

    engine = Engine()
    yield engine
    engine.close()
