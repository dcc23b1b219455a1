"""A fleet of real replicas on loopback that share one session key file, always stopped."""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import RunningServer, launch

REPLICAS = 3
FLAGS = ("--warm-precisions", "float32", "--devices", "1")
GRACE_SECONDS = "2"
"""The drain's grace period: a stream still running after it is cut (UNAVAILABLE) and its client
resumes elsewhere; short, so that rolling restarts fit in `make test`."""


class Fleet:
    """`REPLICAS` weightgen processes started with the same `--session-keys-file`. A replica that is
    stopped can be started again on its own port (`start(i)`), as a restarted pod keeps its address."""

    def __init__(self, root: Path, cache_dir: Path):
        self.root = root
        self.cache_dir = cache_dir
        self.keys = root / "session-keys"
        self.keys.write_text(f"# weightgen session keys (fleet test)\n{secrets.token_urlsafe(32)}\n")
        self.replicas: list[RunningServer | None] = [None] * REPLICAS
        self.ports: list[int] = [0] * REPLICAS
        self.starts = 0
        self.grace = GRACE_SECONDS  # for the replicas started from now on

    def flags(self, i: int) -> tuple[str, ...]:
        port = ("--port", str(self.ports[i])) if self.ports[i] else ()
        return (*FLAGS, "--grace-seconds", str(self.grace), "--session-keys-file", str(self.keys), *port)

    def start(self, i: int) -> RunningServer:
        """Start replica `i` (on its old port if it had one) and wait until it is SERVING."""
        assert self.replicas[i] is None or self.replicas[i].proc.poll() is not None, f"replica {i} is running"
        self.starts += 1
        running = launch(self.root / f"replica{i}-{self.starts}", *self.flags(i), cache_dir=self.cache_dir)
        assert not self.ports[i] or running.port == self.ports[i], (running.port, self.ports[i])
        self.ports[i] = running.port
        self.replicas[i] = running
        return running

    def start_all(self, indexes: list[int] | None = None) -> None:
        """Start these replicas (every stopped one by default) at the same time."""
        if indexes is None:
            indexes = [i for i, r in enumerate(self.replicas) if r is None or r.proc.poll() is not None]
        failures: list[BaseException] = []

        def one(i: int) -> None:
            try:
                self.start(i)
            except BaseException as error:  # reported below, after every thread is done
                failures.append(error)

        threads = [threading.Thread(target=one, args=(i,)) for i in indexes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def stop(self, i: int, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        running = self.replicas[i]
        assert running is not None
        return running.stop(sig, timeout)

    def stop_all(self, sig: int = signal.SIGTERM) -> list[int]:
        """Signal every running replica at once, then wait for each."""
        live = [r for r in self.replicas if r is not None and r.proc.poll() is None]
        for running in live:
            running.proc.send_signal(sig)
        return [running.stop(sig) for running in live]

    @property
    def up(self) -> list[RunningServer]:
        return [r for r in self.replicas if r is not None and r.proc.poll() is None]

    @property
    def target(self) -> str:
        """One balanced channel over every replica: ``ipv4:127.0.0.1:p1,127.0.0.1:p2,...``."""
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def served(self) -> list[float]:
        """Each replica's finished Materialize calls with status OK (its process's count)."""
        return [materialized(r) if r is not None and r.proc.poll() is None else 0.0 for r in self.replicas]

    def active(self) -> list[float]:
        """Each replica's streams in progress (weightgen_active_streams)."""
        return [
            r.metric("weightgen_active_streams") if r is not None and r.proc.poll() is None else 0.0
            for r in self.replicas
        ]

    def logs(self, i: int) -> str:
        running = self.replicas[i]
        return "" if running is None else running.log()


def materialized(server: RunningServer) -> float:
    """weightgen_requests_total{method="Materialize",code="OK"}, whatever order the labels come in."""
    for line in server.metrics().splitlines():
        if line.startswith("weightgen_requests_total{") and 'method="Materialize"' in line and 'code="OK"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def log_records(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def wait_until(predicate, what: str, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def fleet_processes(xla_cache, tmp_path_factory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), xla_cache)
    try:
        fleet.start(0)  # compiles into the shared cache; the others then load from it
        fleet.start_all()
        yield fleet
    finally:
        for running in fleet.replicas:
            if running is not None and running.proc.poll() is None:
                with contextlib.suppress(AssertionError):  # stop() has killed it
                    running.stop(signal.SIGTERM, timeout=30)


@pytest.fixture
def fleet(fleet_processes) -> Fleet:
    """The module's fleet with every replica running (those a previous test left stopped are
    started again on their ports)."""
    fleet_processes.start_all()
    return fleet_processes
