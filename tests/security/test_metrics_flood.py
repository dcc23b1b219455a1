"""The Prometheus port answers on a fixed number of threads: a flood of connections that send nothing
(or half a request) neither grows the server's threads nor stops it answering a real scrape once
the junk has timed out, and gRPC serves on meanwhile."""

from __future__ import annotations

import contextlib
import http.client
import resource
import socket
import time
import urllib.request

import grpc
import pytest
from procstat import threads
from service.helpers import assert_serves, metric

from weightgen.v1 import weightgen_pb2_grpc

JUNK = 1000
THREAD_SLACK = 16  # the server's own threads may come and go a little (gRPC, JAX, the stream executor)
SLOTS = 4 + 8  # the metrics server's default threads and queue: junk that it holds, not refuses
ANSWER_WITHIN = 15.0  # the junk holds a thread for 5 s at most (the per-connection timeout)


def _room_for_sockets(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"{count} sockets need {wanted} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _junk(port: int, half_request: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if half_request:
        with contextlib.suppress(OSError):  # the server may have closed it already (busy)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: weightgen")
    return sock


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _dropped(server) -> float:
    return sum(
        metric(server, "weightgen_metrics_connections_dropped_total", reason=reason) for reason in ("busy", "timeout")
    )


def test_a_flood_of_idle_connections_neither_adds_threads_nor_stalls_scrapes(start_server):
    server = start_server("--warm-precisions", "float32")
    pid = server.proc.pid
    _room_for_sockets(JUNK)
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        assert_serves(stub)  # the stream executor's first threads exist before the baseline
        dropped_before = _dropped(server)
        idle = threads(pid)
        peak = idle
        junk: list[socket.socket] = []
        try:
            for n in range(JUNK):
                junk.append(_junk(server.metrics_port, half_request=n % 2 == 1))
                if n % 50 == 0:
                    peak = max(peak, threads(pid))
            peak = max(peak, threads(pid))
            assert peak <= idle + THREAD_SLACK, f"{JUNK} idle connections made {peak - idle} threads"

            # A fresh scrape answers once the junk that holds the threads has timed out.
            started = time.monotonic()
            failures = 0
            while True:
                try:
                    body = _scrape(server.metrics_port)
                    break
                except (OSError, http.client.HTTPException):  # refused as busy, or reset
                    failures += 1
                    assert time.monotonic() - started < ANSWER_WITHIN, f"no answer to /metrics after {failures} tries"
                    time.sleep(0.2)
            assert "weightgen_requests_total" in body
            # Every junk connection was closed unanswered, except at most the ones still held.
            assert _dropped(server) >= dropped_before + JUNK - SLOTS

            # gRPC served all along, and the threads are where they were.
            assert_serves(stub)
            assert threads(pid) <= idle + THREAD_SLACK
        finally:
            for sock in junk:
                sock.close()
    assert "weightgen_metrics_connections_dropped_total" in _scrape(server.metrics_port)
