"""A client that vanishes without closing its connection (a node that lost power, a partitioned
network) is found by the server's HTTP/2 keepalive pings, and its streams are cancelled: their
slots and reservations come back even with the idle-stream timeout off."""

from __future__ import annotations

import contextlib
import socket
import threading

import grpc
from service.helpers import assert_serves, init, metric, var, wait_for

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

HELD = var("held", [4096, 4096], init(random_normal={}))  # 64 MiB: never finishes while held


class FreezingProxy:
    """A loopback TCP proxy that, once frozen, stops forwarding in both directions but keeps
    every socket open: to the server, the client is there but answers nothing (not even pings)."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.frozen = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [downstream, upstream]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self.frozen.is_set():
                data = src.recv(65536)
                if not data or self.frozen.is_set():
                    return
                dst.sendall(data)

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_a_vanished_client_is_dropped_by_keepalive(start_server):
    server = start_server(
        "--keepalive-seconds",
        "1",
        "--keepalive-timeout-seconds",
        "2",
        "--stream-idle-seconds",
        "0",  # off: only keepalive can find the dead client
        "--warm-precisions",
        "float32",
    )
    proxy = FreezingProxy(server.address)
    cancelled = metric(server, "weightgen_cancelled_streams_total")
    try:
        with grpc.insecure_channel(proxy.address) as channel:
            call = weightgen_pb2_grpc.WeightGenStub(channel).Materialize(
                pb.MaterializeRequest(seed=1, variables=[HELD]), timeout=120
            )
            next(call)
            assert metric(server, "weightgen_active_streams") == 1
            proxy.frozen.set()  # the client "vanishes": its connection stays open, silent
            wait_for(lambda: metric(server, "weightgen_active_streams") == 0, "the server to drop the stream", 60)
            assert metric(server, "weightgen_cancelled_streams_total") == cancelled + 1
            assert metric(server, "weightgen_idle_streams_ended_total") == 0, "keepalive, not the idle timeout"
            assert metric(server, "weightgen_memory_reserved_bytes", use="streams") == 0
            call.cancel()
    finally:
        proxy.close()
    with grpc.insecure_channel(server.address) as channel:
        assert_serves(weightgen_pb2_grpc.WeightGenStub(channel))
