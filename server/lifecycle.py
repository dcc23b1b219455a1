"""A running weightgen replica: the gRPC server with its options, health, reflection, metrics,
warm-up and draining.

    start:  bind -> NOT_SERVING -> warm the kernels (and self-check) -> SERVING
    stop:   NOT_SERVING at once -> refuse new work -> let streams finish within the grace period ->
            cancel what is left (every stage of a cancelled call stops) -> exit
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from weightgen.server import engine as eng
from weightgen.server import probes
from weightgen.server.admission import Admission, MemoryBudget, default_budget, memory_limit
from weightgen.server.auth import BearerAuth, load_tokens
from weightgen.server.config import Config
from weightgen.server.metrics import Metrics
from weightgen.server.seeds import SessionKeys, Sessions
from weightgen.server.service import SERVICE, WeightGenService, handlers
from weightgen.v1 import wire

log = logging.getLogger("weightgen.server")

LIVENESS = "weightgen.liveness"
"""Health service name that is SERVING as long as the process serves at all (Kubernetes liveness);
the overall "" and "weightgen.v1.WeightGen" names are SERVING only when warm and not draining."""


def grpc_options(c: Config) -> list[tuple[str, int]]:
    """The server's HTTP/2 settings: message sizes, and keepalive pings that find dead clients (a
    peer that stops answering pings is disconnected, which cancels its streams)."""
    return [
        ("grpc.max_receive_message_length", c.max_request_bytes),
        ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", int(c.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Clients may ping every 10 s without being told off (GOAWAY too_many_pings).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", int(c.connection_idle_seconds * 1000)),
    ]


class Server:
    def __init__(self, config: Config, engine: eng.Engine | None = None):
        self.config = config
        self._engine = engine
        self.metrics = Metrics.create()
        self.port = 0
        self.metrics_port = 0
        self.health = probes.HealthServicer(config.max_health_watchers)
        self.exit_code = 0
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    def _budget(self) -> MemoryBudget:
        c = self.config
        total = c.memory_budget or default_budget(memory_limit())
        budget = MemoryBudget(total, c.budget_wait_seconds)
        caches = c.cache_bytes + c.chunk_cache_bytes + c.whole_cache_bytes + c.session_cache_bytes
        # The caches hold up to their capacity for the server's life: reserved once, up front.
        if budget.try_reserve(caches, "caches") is None:
            raise SystemExit(
                "weightgen: the caches (--cache-bytes + --chunk-cache-bytes + --whole-cache-bytes + "
                f"--session-cache-bytes = {caches >> 20} MiB) do not fit the memory budget ({total >> 20} MiB, "
                "--memory-budget)"
            )
        return budget

    def _sessions(self) -> Sessions:
        c = self.config
        if c.session_keys_file:
            keys = SessionKeys.load(c.session_keys_file)
        else:
            keys = SessionKeys.ephemeral()
            log.warning(
                "no --session-keys-file: session ids are signed with a random key of this process, so other "
                "replicas, and this one after a restart, answer NOT_FOUND for them; give every replica the same "
                "key file (deploy/README.md)"
            )
        return Sessions(keys, c.max_sessions, c.session_cache_bytes)

    async def start(self) -> None:
        c = self.config
        if self._engine is None:
            devices = None
            if c.devices != "auto":
                import jax

                devices = jax.devices()[: int(c.devices)]
            self._engine = eng.Engine(
                eng.WorkerPool(devices, threads_per_device=c.threads_per_device, cache_bytes=c.cache_bytes),
                max_structured_elements=c.max_structured_elements,
                whole_cache_bytes=c.whole_cache_bytes,
                max_structured_builds=c.max_structured_builds,
            )
        budget = self._budget()
        self.admission = Admission(c, budget)
        self.service = WeightGenService(c, self._engine, self.metrics, self._sessions(), self.admission)
        self.metrics.watch_pool(self._engine.pool)
        self.metrics.watch_whole_cache(self._engine.whole_cache)
        self.metrics.watch_admission(self.admission)
        interceptors = [BearerAuth(load_tokens(c.auth_token_file), self._denied)] if c.auth_token_file else []
        self.server = grpc.aio.server(
            interceptors=interceptors, options=grpc_options(c), compression=grpc.Compression.NoCompression
        )
        self.server.add_generic_rpc_handlers((handlers(self.service),))
        probes.install(
            self.server,
            (SERVICE,),
            max_reflection_streams=c.max_reflection_streams,
            reflection_idle_seconds=c.reflection_idle_seconds,
            health_servicer=self.health,
            metrics=self.metrics,
        )
        address = f"{c.host}:{c.port}" if ":" not in c.host else f"[{c.host.strip('[]')}]:{c.port}"
        try:
            if c.tls_cert:
                credentials = grpc.ssl_server_credentials(
                    [(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())],
                    root_certificates=Path(c.tls_client_ca).read_bytes() if c.tls_client_ca else None,
                    require_client_auth=bool(c.tls_client_ca),
                )
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio's "Failed to bind to address"
            self.port = 0
        if not self.port:
            raise SystemExit(
                f"weightgen: cannot listen on {address}: the port is in use (or the address is not this "
                "machine's); choose another with --port"
            )
        if c.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(
                    c.host.strip("[]"), max(0, c.metrics_port), threads=c.metrics_threads
                )
            except OSError as e:
                raise SystemExit(
                    f"weightgen: cannot serve metrics on {c.host}:{c.metrics_port} ({e.strerror}); "
                    "choose another port with --metrics-port (0 turns metrics off)"
                ) from None
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        if c.port_file:
            Path(c.port_file).write_text(json.dumps({"port": self.port, "metrics_port": self.metrics_port}))
        log.info(
            "listening",
            extra={
                "address": f"{c.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "devices": [str(d) for d in self._engine.pool.devices],
                "tls": bool(c.tls_cert),
                "auth": bool(c.auth_token_file),
                "memory_budget": budget.total,
            },
        )
        self._tasks.append(asyncio.create_task(self._warm()))
        self._tasks.append(asyncio.create_task(self.service.expire_sessions()))
        self._tasks.append(asyncio.create_task(self.admission.watch_idle()))

    def _denied(self, method: str) -> None:
        """Count a call refused for its token, like any other RPC that ended in an error."""
        name = method.rsplit("/", 1)[-1]
        self.metrics.requests.labels(name, "UNAUTHENTICATED").inc()
        self.metrics.errors.labels(name, "UNAUTHENTICATED").inc()

    async def _warm(self) -> None:
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            count = await loop.run_in_executor(None, self._engine.warm, self.config.warm_list())
        except Exception:
            # Serving wrong values, or never becoming ready, is worse than exiting where it shows.
            log.critical("warm-up failed; stopping", exc_info=True)
            self.exit_code = 1
            asyncio.get_running_loop().create_task(self.stop(grace=0))
            return
        if self.service.draining:
            return
        # What start-up made (JAX, the compiled programs) lives as long as the process: keep it out
        # of the collector's scans for good.
        gc.freeze()
        self.service.ready = True
        self.metrics.ready.set(1)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready", extra={"programs": count, "seconds": round(time.perf_counter() - t, 3)})

    async def wait_ready(self) -> None:
        while not self.service.ready:
            await asyncio.sleep(0.05)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING at once, refuse new work, let in-flight streams finish within `grace`."""
        if self.service.draining:  # a second SIGTERM (e.g. from both a shell and its process group)
            return
        self.service.draining = True
        self.service.ready = False
        self.metrics.ready.set(0)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.config.grace_seconds if grace is None else grace
        log.info("draining", extra={"grace_seconds": grace, "active_streams": self.service.active})
        # Keep answering while streams finish, so health checks read NOT_SERVING (and new streams get
        # UNAVAILABLE from the service) instead of finding the port closed; then stop the server
        # with what is left of the grace period, which cancels every call still running (and so
        # every stage of theirs, validation included).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.service.active and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.server.stop(max(0.0, deadline - loop.time()))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.service.close()
        self.metrics.stop()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
