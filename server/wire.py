"""One variable's stream: engine pieces cut into TensorChunk messages with a running digest.

The chunk codec itself is `weightgen.v1.wire`; this module decides where chunks start and end,
what the first and last ones carry, and how a resumed stream skips what the client already has
(the skipped bytes are still generated and digested, so the digest covers the whole tensor).
Streams of the same bytes share their digest through a `DigestBoard` (server/digests.py).
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


def info_message(info: eng.TensorInfo, byte_size: int) -> pb.TensorInfo:
    message = pb.TensorInfo(
        name=info.name,
        shape=info.shape,
        dtype=wire.dtype_enum(info.dtype),
        byte_size=byte_size,
        seed=info.seed,
        generator=info.generator,
        digest_algorithm=wire.DIGEST_ALGORITHM,
        slice=[pb.Range(start=a, stop=b) for a, b in info.slice],
        zero_reason=ZERO_REASONS[info.zero_reason],
    )
    if info.sequence_index >= 0:
        message.sequence_index = info.sequence_index
    return message


class VariableStream:
    """Serialized TensorChunks of one variable, a batch at a time (`next_batch`, called from a
    worker thread). `close` may come from any thread; it cancels generation not yet started."""

    def __init__(
        self,
        index: int,
        prepared: eng.Prepared,
        engine: eng.Engine,
        chunk_bytes: int,
        resume_offset: int = 0,
        sequence_indexes: tuple[int, ...] = (),
        digests: DigestBoard | None = None,
    ):
        self.index = index
        self.prepared = prepared
        self.chunk_bytes = chunk_bytes or wire.DEFAULT_CHUNK_BYTES
        self.resume_offset = resume_offset
        self.byte_size = prepared.info.byte_size
        self._info = info_message(prepared.info, self.byte_size).SerializeToString()
        self._pieces: Iterator[np.ndarray] = engine.stream(prepared)
        # Without a board the digest is this stream's own (a board that keeps nothing).
        self._board = digests if digests is not None else DigestBoard(max_finished=0)
        self._content = prepared.content_key
        self._digest = self._board.join(self._content, self.byte_size)
        self._joined = True
        self._pending: list[memoryview] = []  # bytes at or past resume_offset not yet sent
        self._pending_size = 0
        self._position = 0  # bytes generated so far
        self._sent_to = resume_offset  # offset of the next byte to send
        self._first = True
        self._sequence_indexes = sequence_indexes  # the batch's positions, on this stream's first chunk
        self._done = False
        self._lock = threading.Lock()
        self.elements_sent = 0

    @property
    def done(self) -> bool:
        return self._done

    @property
    def bytes_chunked(self) -> int:
        """Tensor bytes (data, not framing) put into chunks so far, resume excluded."""
        return self._sent_to - self.resume_offset

    def _chunk(self, parts: list[memoryview], size: int, *, last: bool) -> bytes:
        message = wire.encode_chunk(
            self.index,
            self._sent_to,
            parts,
            info=self._info if self._first else b"",
            last=last,
            digest=self._digest.digest() if last else b"",
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

    def next_batch(self) -> list[bytes]:
        """The next serialized chunks (one or more); [] once the variable is complete."""
        with self._lock:
            if self._done:
                return []
            out: list[bytes] = []
            while not out:
                piece = next(self._pieces, None)
                if piece is None:
                    size = self._pending_size  # read before _take empties it
                    out.append(self._chunk(self._take(size), size, last=True))
                    self._done = True
                    self._leave()
                    break
                data = memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8))
                start, self._position = self._position, self._position + len(data)
                self._board.feed(self._digest, start, data)
                if self._position <= self.resume_offset:
                    continue  # the client has these bytes already
                if start < self.resume_offset:
                    data = data[self.resume_offset - start :]
                self._pending.append(data)
                self._pending_size += len(data)
                self.elements_sent += piece.size
                # Keep the final bytes (up to a chunk) back, so the last chunk carries data, not just the digest.
                while self._pending_size > self.chunk_bytes:
                    out.append(self._chunk(self._take(self.chunk_bytes), self.chunk_bytes, last=False))
            return out

    def _leave(self) -> None:
        if self._joined:
            self._joined = False
            self._board.leave(self._content, self._digest)

    def close(self) -> None:
        """Stop generation (waits for a next_batch in progress on another thread)."""
        with self._lock:
            self._done = True
            self._leave()
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
