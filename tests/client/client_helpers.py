"""Helpers for the client tests: a TCP proxy that breaks connections, and engine-side references."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable

import numpy as np
import xxhash


def digest(array: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).digest()


def xxh3(data: np.ndarray | bytes) -> bytes:
    """XXH3-128 of an array's bytes, from the xxhash library (the client's default digest)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return xxhash.xxh3_128_digest(data)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN-safe, dtype-agnostic)."""
    return a.shape == b.shape and a.dtype == b.dtype and digest(a) == digest(b)


class BreakingProxy:
    """A loopback TCP proxy to `target`. Connection number n (from 0) is cut, both ways, once
    `cut_after(n)` bytes went from the server to the client (None: never cut). A real transport
    failure, as a client sees a crashed server or a dropped network. `port` 0 picks a free one."""

    def __init__(self, target: str, cut_after: Callable[[int], int | None], port: int = 0):
        host, target_port = target.rsplit(":", 1)
        self._target = (host, int(target_port))
        self._cut_after = cut_after
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(16)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.cuts = 0
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                number = self.connections
                self.connections += 1
                self._sockets += [downstream, upstream]
            limit = self._cut_after(number)
            threading.Thread(target=self._pipe, args=(downstream, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream, limit), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
