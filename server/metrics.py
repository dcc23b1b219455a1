"""Prometheus metrics, on their own registry so several servers can live in one process (tests)."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("weightgen.server.metrics")

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
    metrics_dropped: Counter

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
            open_sessions=Gauge(
                "weightgen_open_sessions",
                "Sessions this server holds something for (a verified id cached, a position counter)",
                registry=r,
            ),
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
            metrics_dropped=Counter(
                "weightgen_metrics_connections_dropped",
                "Connections to /metrics closed unanswered: busy (every thread and queue slot taken, closed at "
                "once) or timeout (no complete exchange within the timeout)",
                ["reason"],
                registry=r,
            ),
        )

    def watch_pool(self, pool) -> None:
        """Export the worker pool's block cache and single-flight counters (read at scrape time)."""
        self.registry.register(_PoolCollector(pool))

    def watch_whole_cache(self, cache) -> None:
        """Export the whole-tensor cache: builds, joins, hits, bytes (read at scrape time)."""
        self.registry.register(_WholeCacheCollector(cache))

    def watch_digests(self, board) -> None:
        """Export how much hashing streams of the same bytes shared (read at scrape time)."""
        self.registry.register(_DigestCollector(board))

    def watch_chunks(self, board) -> None:
        """Export the chunk messages streams shared (read at scrape time)."""
        self.registry.register(_ChunkCollector(board))

    def watch_admission(self, admission) -> None:
        """Export the memory budget and the stream slots (read at scrape time)."""
        self.registry.register(_AdmissionCollector(admission))

    def serve(self, host: str, port: int, *, threads: int = 4, timeout: float = 5.0, queue_size: int = 8) -> int:
        """Serve /metrics over HTTP; returns the bound port (port 0 picks one).

        `threads` threads answer, whatever the number of connections; a connection gets `timeout`
        seconds from its accept to be answered; `queue_size` accepted connections wait for a thread,
        and any beyond those are closed at once (see `BoundedHTTPServer`)."""
        server = BoundedHTTPServer(
            host,
            port,
            make_wsgi_app(self.registry),
            threads=threads,
            timeout=timeout,
            queue_size=queue_size,
            dropped=lambda reason: self.metrics_dropped.labels(reason).inc(),
        )
        server.start()
        self._http = server
        return server.server_address[1]

    def stop(self) -> None:
        server = getattr(self, "_http", None)
        if server is not None:
            self._http = None
            server.close()


class _QuietHandler(WSGIRequestHandler):
    """One request per connection (wsgiref never keeps a connection alive); no access log."""

    def log_message(self, format, *args):
        pass


class BoundedHTTPServer(WSGIServer):
    """A WSGI server whose threads are fixed, unlike `prometheus_client.start_http_server`'s thread
    per connection (1,000 idle connections made 1,000 threads).

    One thread accepts. Each accepted connection goes to a queue of `queue_size` that `threads`
    workers serve, one connection at a time; when the queue is full the connection is closed at once
    ("busy"), so nothing waits unbounded and the number of open sockets stays bounded too. A
    connection has `timeout` seconds from its accept to be answered: its socket's timeout is what is
    left when a worker takes it, and the accepting thread shuts down the socket of any connection
    still in a worker past its deadline (a client trickling a byte at a time, which a per-read
    timeout alone would let stay), so a worker is never held longer than `timeout`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app,
        *,
        threads: int = 4,
        timeout: float = 5.0,
        queue_size: int = 8,
        dropped=None,
    ):
        if threads <= 0 or timeout <= 0 or queue_size <= 0:
            raise ValueError("threads, timeout and queue_size must be positive")
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self.address_family = family
        self.request_queue_size = 128  # the listen backlog: absorbs a burst; accepting is fast
        self.connection_timeout = timeout
        self._dropped = dropped or (lambda reason: None)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._busy: dict[socket.socket, float] = {}  # connection in a worker -> its deadline
        self._expired: set[socket.socket] = set()
        self._closing = False
        super().__init__((sockaddr[0], port), _QuietHandler)
        self.set_app(app)
        self._threads = [
            threading.Thread(target=self._work, name=f"weightgen-metrics-{i}", daemon=True) for i in range(threads)
        ]
        self._acceptor = threading.Thread(target=self.serve_forever, name="weightgen-metrics-accept", daemon=True)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._acceptor.start()

    def close(self) -> None:
        """Stop accepting, drop what is queued or in progress, and join every thread."""
        self.shutdown()
        self._closing = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        with self._lock:
            for connection in self._busy:
                _shut(connection)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=self.connection_timeout + 1)
        self.server_close()

    # -- socketserver hooks --------------------------------------------------------------------

    def process_request(self, request, client_address) -> None:
        """On the accepting thread: queue the connection for a worker, or close it if none can take it."""
        deadline = time.monotonic() + self.connection_timeout
        try:
            self._queue.put_nowait((request, client_address, deadline))
        except queue.Full:
            self.shutdown_request(request)
            self._dropped("busy")

    def service_actions(self) -> None:
        """On the accepting thread, after each accept and at least every half second: shut down
        the connections that are past their deadline (their worker then sees the socket closed)."""
        now = time.monotonic()
        with self._lock:
            for connection, deadline in self._busy.items():
                if deadline <= now and connection not in self._expired:
                    self._expired.add(connection)
                    _shut(connection)

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics connection from %s failed", client_address, exc_info=True)

    # -- workers -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._serve_one(*item)
            finally:
                self._queue.task_done()

    def _serve_one(self, request: socket.socket, client_address, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or self._closing:
            self.shutdown_request(request)
            self._dropped("timeout")
            return
        with self._lock:
            self._busy[request] = deadline
        timed_out = False
        try:
            request.settimeout(left)
            self.finish_request(request, client_address)
        except TimeoutError:
            timed_out = True
        except OSError:
            pass  # reset by the client, or shut down below by service_actions
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                del self._busy[request]
                if request in self._expired:
                    self._expired.discard(request)
                    timed_out = True
            self.shutdown_request(request)
        if timed_out:
            self._dropped("timeout")


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        connection.shutdown(socket.SHUT_RDWR)


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


class _ChunkCollector:
    def __init__(self, board):
        self._board = board

    def collect(self):
        board = self._board
        for name, value, doc in (
            ("built", board.built, "TensorChunk messages built (data copied out of the engine's arrays)"),
            ("shared", board.shared, "TensorChunk messages sent ready-made, built by another stream or an earlier one"),
            ("waits", board.waits, "Times a stream waited for another stream building the message it needed"),
            ("evictions", board.evictions, "TensorChunk messages evicted from the chunk cache for space"),
        ):
            yield CounterMetricFamily(f"weightgen_chunks_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "weightgen_chunk_cache_bytes", "Bytes of messages the chunk cache holds", value=board.bytes
        )
        yield GaugeMetricFamily(
            "weightgen_chunk_cache_max_bytes", "Chunk cache capacity (--chunk-cache-bytes)", value=board.max_bytes
        )


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


class _WholeCacheCollector:
    def __init__(self, cache):
        self._cache = cache

    def collect(self):
        cache = self._cache
        for name, value, doc in (
            ("builds", cache.misses, "Whole tensors (orthogonal, identity, ...) built"),
            ("joins", cache.joins, "Streams that waited for a whole tensor another stream was building"),
            ("hits", cache.hits, "Whole tensors served from the whole-tensor cache"),
            ("evictions", cache.evictions, "Whole tensors evicted from the cache for space"),
        ):
            yield CounterMetricFamily(f"weightgen_whole_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "weightgen_whole_cache_bytes", "Bytes held by the whole-tensor cache", value=cache.bytes
        )
        yield GaugeMetricFamily("weightgen_whole_building", "Whole tensors being built now", value=cache.building)
