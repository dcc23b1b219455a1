"""Graceful shutdown: on SIGTERM the server reports NOT_SERVING, refuses new streams, finishes the
stream in flight and exits 0."""

from __future__ import annotations

import hashlib
import signal
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

from .helpers import collect, engine_bytes, init, var, wait_for

TENSOR = var("drained", [4096, 4096], init(random_uniform={"min": -1, "max": 1}))  # 64 MiB


def test_sigterm_drains(start_server, engine):
    server = start_server("--grace-seconds", "120", "--warm-precisions", "float32")
    statuses: list[int] = []
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=300)

        def follow():
            for response in watch:
                statuses.append(response.status)
                if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    return

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_for(lambda: statuses == [health_pb2.HealthCheckResponse.SERVING], "health SERVING")

        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        call = stub.Materialize(pb.MaterializeRequest(seed=6, variables=[TENSOR], chunk_bytes=1 << 20), timeout=300)
        chunks = [next(call) for _ in range(3)]  # in flight, read slowly

        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: health_pb2.HealthCheckResponse.NOT_SERVING in statuses, "health NOT_SERVING")
        watch.cancel()
        watcher.join(10)

        # New streams are refused, on this connection and on a new one, while the old one is in flight.
        codes = []
        for target in (stub, None):
            request = pb.MaterializeRequest(seed=1, variables=[var("late", [4], init(ones={}))])
            try:
                if target is None:
                    with grpc.insecure_channel(server.address) as fresh:
                        list(weightgen_pb2_grpc.WeightGenStub(fresh).Materialize(request, timeout=30))
                else:
                    list(target.Materialize(request, timeout=30))
            except grpc.RpcError as error:
                codes.append(error.code())
            else:
                codes.append(grpc.StatusCode.OK)
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 2, codes

        # The stream in flight completes, every byte, with its digest.
        chunks += list(call)
        got = collect(chunks)[0]
        assert len(got.data) == got.info.byte_size == 4096 * 4096 * 4
        assert got.digest == hashlib.sha256(got.data).digest()
        assert bytes(got.data) == engine_bytes(engine, TENSOR, 6)
    # One SIGTERM is enough: the process exits 0 by itself once the stream is done.
    assert server.proc.wait(120) == 0, server.log()[-4000:]
    assert '"draining"' in server.log() and '"stopped"' in server.log()
