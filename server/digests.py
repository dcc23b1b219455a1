"""Variable digests shared by the streams that send the same bytes.

A tensor is a pure function of its spec, so N streams of one variable (a herd of trainers at
start-up, or the same weights fetched again) would hash the same bytes N times: SHA-256 is about
0.5 s of CPU per GiB, the largest per-stream cost left once the block cache shares generation.
Streams of the same content therefore join one `SharedDigest`, which whichever stream is furthest
along advances; the others only skip what it has hashed. A finished digest is kept (a bounded LRU
of `max_finished` variables), so a later stream of the same bytes hashes nothing.

Each algorithm has its own digests: a stream that asked for XXH3-128 never joins one that hashes
the same bytes with SHA-256 (the board's key is the algorithm and the content).

Every stream still feeds every byte it generates, in order, starting at 0, so a shared digest is
never behind the stream that asks for it: when a stream reaches the end of its variable, the
digest covers it all, whoever hashed which part.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from weightgen.v1 import wire


class SharedDigest:
    """The running digest (`algorithm`, any but "none") of `total` bytes, fed in order by one or
    more streams."""

    def __init__(self, total: int, algorithm: str = wire.DIGEST_ALGORITHM):
        if algorithm == "none":
            raise ValueError("a SharedDigest needs an algorithm that hashes (not 'none')")
        self.total = total
        self.algorithm = algorithm
        self._hash = wire.new_digest(algorithm)
        self._position = 0  # bytes hashed so far
        self._final: bytes | None = None
        self._lock = threading.Lock()
        self.users = 0  # streams holding it (the board's count)

    @property
    def complete(self) -> bool:
        return self._position == self.total

    @property
    def position(self) -> int:
        """Bytes hashed so far: a stream may skip generating bytes before it, not after."""
        return self._position

    def feed(self, offset: int, data: memoryview) -> int:
        """Account for bytes [offset, offset + len(data)); hash the part not hashed yet. Returns
        the number of bytes this call hashed."""
        end = offset + len(data)
        with self._lock:
            if end <= self._position:
                return 0
            if offset > self._position:
                raise RuntimeError(f"digest fed at byte {offset} while it stands at {self._position}")
            if end > self.total:
                raise RuntimeError(f"digest fed up to byte {end} of a {self.total}-byte variable")
            self._hash.update(data[self._position - offset :])
            hashed, self._position = end - self._position, end
            return hashed

    def digest(self) -> bytes:
        """The digest of all `total` bytes (every one must have been fed)."""
        with self._lock:
            if self._position != self.total:
                raise RuntimeError(f"digest asked for at byte {self._position} of {self.total}")
            if self._final is None:
                self._final = self._hash.digest()
                self._hash = None  # done with: only the digest's bytes are kept
            return self._final


class DigestBoard:
    """SharedDigests by content key: the ones streams are using, and the last `max_finished`
    complete ones. A stream `join`s before its first byte and `leave`s when it ends, however."""

    def __init__(self, max_finished: int = 4096):
        self.max_finished = max_finished
        self._active: dict[Hashable, SharedDigest] = {}
        self._finished: OrderedDict[Hashable, SharedDigest] = OrderedDict()
        self._lock = threading.Lock()
        self.joined = 0  # joins that found the variable's digest in progress or finished
        self.hashed_bytes = 0
        self.skipped_bytes = 0  # bytes fed that another stream had hashed already

    def join(self, key: Hashable | None, total: int, algorithm: str = wire.DIGEST_ALGORITHM) -> SharedDigest:
        """The shared `algorithm` digest of the content `key` names (`total` bytes); a private one
        for None. Pass the same `key` and `algorithm` to `leave`."""
        if key is None:
            shared = SharedDigest(total, algorithm)
            shared.users = 1
            return shared
        key = (algorithm, key)
        with self._lock:
            shared = self._active.get(key) or self._finished.pop(key, None)
            if shared is None:
                shared = SharedDigest(total, algorithm)
            else:
                self.joined += 1
            self._active[key] = shared
            if shared.total != total:
                raise RuntimeError(f"content key {key!r} names {shared.total} bytes and {total} bytes")
            shared.users += 1
            return shared

    def feed(self, shared: SharedDigest, offset: int, data: memoryview) -> None:
        hashed = shared.feed(offset, data)
        with self._lock:
            self.hashed_bytes += hashed
            self.skipped_bytes += len(data) - hashed

    def leave(self, key: Hashable | None, shared: SharedDigest) -> None:
        """The stream is done with `shared` (finished or not)."""
        if key is None:
            return
        key = (shared.algorithm, key)
        with self._lock:
            shared.users -= 1
            if shared.users > 0 or self._active.get(key) is not shared:
                return
            del self._active[key]
            if shared.complete and self.max_finished > 0:
                shared.digest()
                self._finished[key] = shared
                while len(self._finished) > self.max_finished:
                    self._finished.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._active) + len(self._finished)
