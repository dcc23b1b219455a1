"""Starting and stopping real weightgen servers for tests: subprocesses on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READY_TIMEOUT = 180.0


@dataclass
class RunningServer:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    flags: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample in /metrics (0 if absent)."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self, service: str = "", credentials=None) -> int:
        with _channel(self.address, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(
                    f"server did not stop within {timeout}s after signal {sig}\n{self.log()}"
                ) from None
        return self.proc.returncode


def _channel(address: str, credentials=None) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])
    return grpc.insecure_channel(address)


def launch(
    workdir: Path,
    *flags: str,
    cache_dir: Path | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    credentials=None,
    python: str = sys.executable,
) -> RunningServer:
    """Start `python -m weightgen.server` on a free loopback port and wait until it is SERVING.
    `python` may be another checkout's interpreter (benchmarks compare a change with its parent)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"ports-{time.monotonic_ns()}.json"
    log_path = workdir / f"server-{time.monotonic_ns()}.log"
    args = [
        python,
        "-m",
        "weightgen.server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--port-file",
        str(port_file),
        "--devices",
        "1",
        "--log-format",
        "json",
    ]
    if cache_dir is not None:
        args += ["--compilation-cache-dir", str(cache_dir)]
    args += list(flags)
    environment = {**os.environ, **(env or {})}
    environment.pop("XLA_FLAGS", None)
    log_file = log_path.open("w")
    proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    log_file.close()
    deadline = time.monotonic() + READY_TIMEOUT
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not bind within {READY_TIMEOUT}s:\n{log_path.read_text()}")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    server = RunningServer(proc, ports["port"], ports["metrics_port"], log_path, list(flags))
    if wait_ready:
        while True:
            try:
                if server.health(credentials=credentials) == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise AssertionError(f"server not SERVING within {READY_TIMEOUT}s:\n{server.log()}")
            time.sleep(0.1)
    return server
