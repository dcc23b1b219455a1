"""One variable's bytes into serialized TensorChunks, with the running digest.

`ChunkEncoder` takes the engine's pieces in order and decides where chunks start and end, what the
first and last ones carry, and how a resumed stream skips what the client already has (the skipped
bytes are still digested, so the digest covers the whole tensor). Streams of the same bytes share
their digest through a `DigestBoard` (server/digests.py). The chunk codec itself is
`weightgen.v1.wire`. `Outgoing` pairs a variable's pieces with its encoder, a batch of messages at
a time, on an executor thread: generation, encoding and hashing never run on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from weightgen.server import engine as eng
from weightgen.server.digests import DigestBoard
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

ZERO_REASONS = {
    "": pb.ZERO_REASON_UNSPECIFIED,
    eng.initializers.ZERO_NON_FLOAT: pb.ZERO_REASON_NON_FLOAT_DTYPE,
    eng.initializers.ZERO_RANK_LE_1: pb.ZERO_REASON_RANK_AT_MOST_1,
}


def info_message(info: eng.TensorInfo, digest: str = wire.DIGEST_ALGORITHM) -> pb.TensorInfo:
    message = pb.TensorInfo(
        name=info.name,
        shape=info.shape,
        dtype=wire.dtype_enum(info.dtype),
        byte_size=info.byte_size,
        seed=info.seed,
        generator=info.generator,
        digest_algorithm=digest,
        slice=[pb.Range(start=a, stop=b) for a, b in info.slice],
        zero_reason=ZERO_REASONS[info.zero_reason],
    )
    if info.sequence_index >= 0:
        message.sequence_index = info.sequence_index
    return message


class ChunkEncoder:
    """Pieces of one variable in (`feed`, then `finish`), serialized TensorChunks out."""

    def __init__(
        self,
        index: int,
        prepared: eng.Prepared,
        chunk_bytes: int,
        resume_offset: int = 0,
        sequence_indexes: tuple[int, ...] = (),
        digests: DigestBoard | None = None,
        digest: str = wire.DIGEST_ALGORITHM,
    ):
        self.index = index
        self.chunk_bytes = chunk_bytes
        self.resume_offset = resume_offset
        self.byte_size = prepared.info.byte_size
        self._info = info_message(prepared.info, digest).SerializeToString()
        # Without a board the digest is this stream's own (a board that keeps nothing); with
        # "none", there is no digest at all.
        self._board = digests if digests is not None else DigestBoard(max_finished=0)
        self._content = prepared.content_key
        self._digest = self._board.join(self._content, self.byte_size, digest) if digest != "none" else None
        self._joined = self._digest is not None
        self._pending: list[memoryview] = []  # bytes at or past resume_offset not yet in a chunk
        self._pending_size = 0
        self._position = 0  # bytes fed so far
        self._sent_to = resume_offset  # offset of the next chunk's first byte
        self._first = True
        self._sequence_indexes = sequence_indexes  # the batch's positions, on this stream's first chunk

    @property
    def bytes_chunked(self) -> int:
        """Tensor bytes (data, not framing) put into chunks so far, resume excluded."""
        return self._sent_to - self.resume_offset

    def feed(self, piece: np.ndarray) -> list[bytes]:
        """The chunks that the next piece completes (none while less than a chunk is pending)."""
        data = memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8))
        start, self._position = self._position, self._position + len(data)
        if self._digest is not None:
            self._board.feed(self._digest, start, data)
        if self._position <= self.resume_offset:
            return []  # the client has these bytes already
        if start < self.resume_offset:
            data = data[self.resume_offset - start :]
        self._pending.append(data)
        self._pending_size += len(data)
        out = []
        # Keep the final bytes (up to a chunk) back, so the last chunk carries data, not just the digest.
        while self._pending_size > self.chunk_bytes:
            out.append(self._chunk(self._take(self.chunk_bytes), self.chunk_bytes, last=False))
        return out

    def finish(self) -> bytes:
        """The last chunk: what is pending, and the digest of the whole variable."""
        size = self._pending_size
        message = self._chunk(self._take(size), size, last=True)
        self.close()
        return message

    def close(self) -> None:
        """Leave the shared digest (finished or not); idempotent."""
        if self._joined:
            self._joined = False
            self._board.leave(self._content, self._digest)

    def _chunk(self, parts: list[memoryview], size: int, *, last: bool) -> bytes:
        message = wire.encode_chunk(
            self.index,
            self._sent_to,
            parts,
            info=self._info if self._first else b"",
            last=last,
            digest=self._digest.digest() if last and self._digest is not None else b"",
            sequence_indexes=self._sequence_indexes if self._first else (),
        )
        self._first = False
        self._sent_to += size
        return message

    def _take(self, size: int) -> list[memoryview]:
        """The first `size` pending bytes, as views."""
        taken, need = [], size
        while need:
            head = self._pending[0]
            if len(head) <= need:
                taken.append(self._pending.pop(0))
                need -= len(head)
            else:
                taken.append(head[:need])
                self._pending[0] = head[need:]
                need = 0
        self._pending_size -= size
        return taken


class Outgoing:
    """A variable on its way out: the engine's pieces through its encoder. `next` runs on an
    executor thread; `close` may come from any thread and waits for a `next` in progress."""

    def __init__(self, pieces: Iterator[np.ndarray], encoder: ChunkEncoder):
        self._pieces = pieces
        self.encoder = encoder
        self.done = False
        self._lock = threading.Lock()

    def next(self) -> list[bytes]:
        """The next serialized chunks (one or more); [] once the variable is complete."""
        with self._lock:
            while not self.done:
                piece = next(self._pieces, None)
                if piece is None:
                    self.done = True
                    return [self.encoder.finish()]
                out = self.encoder.feed(piece)
                if out:
                    return out
            return []

    def close(self) -> None:
        """Stop generating (releases what the engine has in flight for it)."""
        with self._lock:
            self.done = True
            self.encoder.close()
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
