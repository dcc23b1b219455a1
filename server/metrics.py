"""Prometheus metrics, on their own registry so several servers can live in one process (tests)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    errors: Counter
    bytes_streamed: Counter
    elements_streamed: Counter
    variables_streamed: Counter
    generation_seconds: Histogram
    request_seconds: Histogram
    active_streams: Gauge
    open_sessions: Gauge
    cancelled_streams: Counter
    idle_streams_ended: Counter
    limit_rejections: Counter
    ready: Gauge

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter(
                "weightgen_requests", "RPCs finished, by method and status code", ["method", "code"], registry=r
            ),
            errors=Counter(
                "weightgen_errors",
                "RPCs that ended in an error status, by method and code",
                ["method", "code"],
                registry=r,
            ),
            bytes_streamed=Counter("weightgen_bytes_streamed", "Tensor bytes sent", registry=r),
            elements_streamed=Counter("weightgen_elements_streamed", "Tensor elements sent", registry=r),
            variables_streamed=Counter("weightgen_variables_streamed", "Variables completely sent", registry=r),
            generation_seconds=Histogram(
                "weightgen_generation_seconds", "Time to generate and send one variable", buckets=_SECONDS, registry=r
            ),
            request_seconds=Histogram(
                "weightgen_request_seconds", "Duration of RPCs, by method", ["method"], buckets=_SECONDS, registry=r
            ),
            active_streams=Gauge("weightgen_active_streams", "Materialize streams in progress", registry=r),
            open_sessions=Gauge("weightgen_open_sessions", "Sessions open", registry=r),
            cancelled_streams=Counter(
                "weightgen_cancelled_streams", "Materialize streams stopped by the client or a deadline", registry=r
            ),
            idle_streams_ended=Counter(
                "weightgen_idle_streams_ended",
                "Materialize streams the server ended because the client read nothing for --stream-idle-seconds",
                registry=r,
            ),
            limit_rejections=Counter(
                "weightgen_limit_rejections", "Requests refused by a configured limit, by limit", ["limit"], registry=r
            ),
            ready=Gauge("weightgen_ready", "1 once kernels are warm and the server is not draining", registry=r),
        )

    def watch_pool(self, pool) -> None:
        """Export the worker pool's block cache and single-flight counters (read at scrape time)."""
        self.registry.register(_PoolCollector(pool))

    def watch_digests(self, board) -> None:
        """Export how much hashing streams of the same bytes shared (read at scrape time)."""
        self.registry.register(_DigestCollector(board))

    def watch_admission(self, admission) -> None:
        """Export the memory budget and the stream slots (read at scrape time)."""
        self.registry.register(_AdmissionCollector(admission))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP; returns the bound port (port 0 picks one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def stop(self) -> None:
        server = getattr(self, "_http", None)
        if server is not None:
            server.shutdown()
            server.server_close()


class _PoolCollector:
    def __init__(self, pool):
        self._pool = pool

    def collect(self):
        cache = self._pool.cache
        yield CounterMetricFamily(
            "weightgen_generation_shared", "Kernel calls joined to an identical call in flight", value=self._pool.shared
        )
        if cache is None:
            return
        for name, value, doc in (
            ("hits", cache.hits, "Kernel calls served from the block cache"),
            ("misses", cache.misses, "Kernel calls not in the block cache"),
            ("evictions", cache.evictions, "Block cache entries evicted for space"),
        ):
            yield CounterMetricFamily(f"weightgen_cache_{name}", doc, value=value)
        yield GaugeMetricFamily("weightgen_cache_bytes", "Bytes held by the block cache", value=cache.bytes)
        yield GaugeMetricFamily("weightgen_cache_max_bytes", "Block cache capacity", value=cache.max_bytes)


class _DigestCollector:
    def __init__(self, board):
        self._board = board

    def collect(self):
        board = self._board
        for name, value, doc in (
            ("bytes_hashed", board.hashed_bytes, "Variable bytes hashed for TensorChunk digests"),
            ("bytes_shared", board.skipped_bytes, "Variable bytes streamed whose digest another stream computed"),
            ("joins", board.joined, "Streams that joined a digest in progress or finished"),
        ):
            yield CounterMetricFamily(f"weightgen_digest_{name}", doc, value=value)


class _AdmissionCollector:
    def __init__(self, admission):
        self._admission = admission

    def collect(self):
        budget = self._admission.budget
        yield GaugeMetricFamily(
            "weightgen_memory_budget_bytes", "The server's memory budget (--memory-budget)", value=budget.total
        )
        reserved = GaugeMetricFamily(
            "weightgen_memory_reserved_bytes", "Bytes reserved against the memory budget, by use", labels=["use"]
        )
        for use, value in sorted(budget.reserved.items()):
            reserved.add_metric([use], value)
        yield reserved
        yield CounterMetricFamily(
            "weightgen_memory_waits", "Reservations that waited for memory budget", value=budget.waits
        )
        yield GaugeMetricFamily(
            "weightgen_stream_peers", "Client addresses with streams in progress", value=len(self._admission.per_peer)
        )
