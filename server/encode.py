"""One variable's bytes into serialized TensorChunks, with the running digest.

`ChunkEncoder` pulls the engine's pieces of one variable and builds its chunk messages one at a
time, by number: chunk n holds bytes [resume_offset + n * chunk_bytes, ...) (the last one the rest,
with the digest), the first one the TensorInfo. A resumed stream's skipped bytes, and the bytes of
chunks it took ready-made from the `ChunkBoard` (server/chunks.py), are still pulled when a later
chunk needs building and are still digested, so the digest covers the whole tensor. Streams of the
same bytes share their digest through a `DigestBoard` (server/digests.py). The chunk codec itself
is `weightgen.v1.wire`. `Outgoing` sends a variable's messages: ready ones straight from the board
on the event loop, the others built on an executor thread, so generation, encoding and hashing
never run on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from weightgen.server import engine as eng
from weightgen.server.chunks import ChunkBoard, Tap, chunk_count
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
    """The chunk messages of one variable, built by number from its pieces (`build`)."""

    def __init__(
        self,
        index: int,
        prepared: eng.Prepared,
        chunk_bytes: int,
        source: EngineSource,
        resume_offset: int = 0,
        sequence_indexes: tuple[int, ...] = (),
        digests: DigestBoard | None = None,
        digest: str = wire.DIGEST_ALGORITHM,
    ):
        self.index = index
        self.chunk_bytes = chunk_bytes
        self.resume_offset = resume_offset
        self.byte_size = prepared.info.byte_size
        self.count = chunk_count(self.byte_size, resume_offset, chunk_bytes)
        self.info = info_message(prepared.info, digest).SerializeToString()
        self.digest_algorithm = digest
        self._source = source
        self._pieces: Iterator[np.ndarray] | None = None  # opened by the first chunk built
        self._itemsize = prepared.dtype.itemsize
        # Without a board the digest is this stream's own (a board that keeps nothing); with
        # "none", there is no digest at all.
        self._board = digests if digests is not None else DigestBoard(max_finished=0)
        self._content = prepared.content_key
        self._digest = self._board.join(self._content, self.byte_size, digest) if digest != "none" else None
        self._joined = self._digest is not None
        self._pending: list[memoryview] = []  # pulled bytes from offset `_start` on, not in a chunk yet
        self._pending_size = 0
        self._start = resume_offset  # offset of the first pending byte
        self._position = 0  # offset of the next byte the engine delivers
        self.sequence_indexes = sequence_indexes  # the batch's positions, on this stream's first chunk

    @property
    def lane(self) -> tuple | None:
        """What decides every byte of the variable's messages (server/chunks.py); None when its
        content has no key (a broadcast): nothing to share."""
        if self._content is None:
            return None
        return (
            self._content,
            self.index,
            self.chunk_bytes,
            self.resume_offset,
            self.info,
            self.sequence_indexes,
            self.digest_algorithm,
        )

    @property
    def lane_bytes(self) -> int:
        """What all the variable's messages come to, generously."""
        return self.byte_size + self.count * FRAMING_BYTES + len(self.info)

    def span(self, n: int) -> tuple[int, int]:
        """The bytes [start, stop) of chunk n."""
        start = self.resume_offset + n * self.chunk_bytes
        return start, self.byte_size if n == self.count - 1 else start + self.chunk_bytes

    def build(self, n: int) -> bytes:
        """Chunk n's message. Numbers only go forward; chunks skipped are not built (their bytes are
        still pulled and digested when a later chunk needs them)."""
        start, stop = self.span(n)
        if start < self._start:
            raise RuntimeError(f"chunk {n} of {self.count} asked for after the stream passed byte {self._start}")
        last = n == self.count - 1
        self._discard(start - self._start)
        self._skip_to(start)
        while self._position < stop:  # the last chunk's stop is the end: the digest has every byte
            piece = next(self._pieces, None)
            if piece is None:
                raise RuntimeError(f"the engine ended at byte {self._position} of {self.byte_size}")
            self._feed(piece)
        message = wire.encode_chunk(
            self.index,
            start,
            self._take(stop - start),
            info=self.info if n == 0 else b"",
            last=last,
            digest=self._digest.digest() if last and self._digest is not None else b"",
            sequence_indexes=self.sequence_indexes if n == 0 else (),
        )
        return message

    def close(self) -> None:
        """Leave the shared digest (finished or not) and stop pulling; idempotent."""
        if self._joined:
            self._joined = False
            self._board.leave(self._content, self._digest)
        self._close_pieces()

    def _close_pieces(self) -> None:
        """Release what the engine has in flight for the pieces opened so far."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def _skip_to(self, offset: int) -> None:
        """Have the engine deliver from (at most) `offset` on, without computing the whole pieces
        before it, when that skips any: the bytes of a resumed stream's prefix or of chunks taken
        from the board. Not past what the shared digest has hashed: it takes bytes in order."""
        if self._digest is not None:
            offset = min(offset, self._digest.position)
        if self._pieces is not None and self._position >= offset:
            return
        skip, first = self._source.seek(offset // self._itemsize)
        if self._pieces is not None:
            if first * self._itemsize <= self._position:
                return  # the engine is in that piece already: read on
            self._close_pieces()
        self._pieces, self._position = self._source.open(skip), first * self._itemsize

    def _feed(self, piece: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8))
        start, self._position = self._position, self._position + len(data)
        if self._position > self.byte_size:
            raise RuntimeError(f"the engine delivered {self._position} bytes of a {self.byte_size}-byte variable")
        if self._digest is not None:
            self._board.feed(self._digest, start, data)
        if self._position <= self._start:
            return  # before the resume offset, or in chunks taken from the board
        if start < self._start:
            data = data[self._start - start :]
        self._pending.append(data)
        self._pending_size += len(data)

    def _discard(self, size: int) -> None:
        """Drop the first `size` pending bytes (chunks skipped) and move `_start` past them."""
        if size <= self._pending_size:
            self._take(size)
        else:  # nothing pulled yet reaches there: later pieces are cut as they come
            self._pending, self._pending_size = [], 0
            self._start += size

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
        self._start += size
        return taken


class EngineSource:
    """The engine's pieces of one variable, from any piece on (`seek`, then `open`)."""

    def __init__(self, engine: eng.Engine, prepared: eng.Prepared, cancelled: threading.Event | None):
        self._engine = engine
        self._prepared = prepared
        self._cancelled = cancelled

    def seek(self, element: int) -> tuple[int, int]:
        """(pieces before the one holding `element`, that piece's first element)."""
        return self._engine.seek(self._prepared, element)

    def open(self, skip: int) -> Iterator[np.ndarray]:
        return self._engine.stream(self._prepared, cancelled=self._cancelled, skip=skip)


class Outgoing:
    """A variable on its way out, message by message. `ready` (the event loop) hands out a message
    the board has now; `next` (an executor thread) takes it from the board, waiting while another
    stream builds it, or builds it. `close` may come from any thread; it waits for a `next` in
    progress."""

    def __init__(self, encoder: ChunkEncoder, board: ChunkBoard, cancelled: threading.Event | None = None):
        self.encoder = encoder
        self._tap: Tap = board.join(encoder.lane, encoder.lane_bytes)
        self._cancelled = cancelled
        self._number = 0  # the next message to send
        self.done = False
        self._lock = threading.Lock()

    def sent_bytes(self) -> int:
        """Tensor bytes (data, not framing) in the messages handed out so far."""
        if self._number == 0:
            return 0
        _, stop = self.encoder.span(self._number - 1)
        return stop - self.encoder.resume_offset

    def ready(self) -> bytes | None:
        """The next message if the board has it now (never waits); None: call `next`."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.done:
                return None
            message = self._tap.ready(self._number)
            if message is not None:
                self._advance()
            return message
        finally:
            self._lock.release()

    def next(self) -> bytes | None:
        """The next message; None once the variable is complete."""
        with self._lock:
            if self.done:
                return None
            n = self._number
            message = self._tap.take(n, self._cancelled)
            if message is None:
                try:
                    message = self.encoder.build(n)
                except BaseException:
                    self._tap.abandon()
                    raise
                self._tap.offer(n, message)
            self._advance()
            return message

    def _advance(self) -> None:
        self._number += 1
        if self._number == self.encoder.count:
            self.done = True
            self.encoder.close()
            self._tap.leave()

    def close(self) -> None:
        """Stop: release the engine's work in flight, the digest and the lane."""
        with self._lock:
            self.done = True
            self.encoder.close()
            self._tap.leave()


FRAMING_BYTES = 32
"""A chunk message's bytes besides its data and info, generously (tags, varints, the digest)."""
