"""Serialized TensorChunks shared by the streams that send the same messages.

A herd (N trainers fetching the same weights at start-up) shares generation (the block cache and
single-flight) and hashing (server/digests.py); what each stream still did on its own was to build
its chunk messages: copy every byte out of the engine's arrays into a new message, N times.
gRPC's Python API sends one `bytes` object per message (it copies that object into its own
buffer, once per stream, which is the bare wire's cost too), so the only message that costs a
stream nothing to build is one that already exists, byte for byte. Streams therefore share whole
messages: a `ChunkBoard` keeps the messages of each "lane", and a stream takes message n of its
lane when the board has it, waits for it when another stream is building it (single-flight), and
builds it (and offers it) otherwise.

A lane is everything that decides a message's bytes (`ChunkEncoder.lane`): the content (two prepared
variables with equal content keys deliver equal bytes), the variable's index in its request, the
chunk size and resume offset (where chunks start), the serialized TensorInfo (first chunk) and the
sequence positions (a sequential session's first chunk), and the digest algorithm (last chunk).
Identical requests, what a herd sends, are one lane. The index is part of the header of every
chunk, so two requests that list the same variable at different positions are two lanes: sharing
them would need a copy per message (header + shared body), which is the copy this avoids. They
still share the generation and the digest.

What the board keeps is bounded by `max_bytes` (reserved against the memory budget with the other
caches) and evicted least recently used first:
- a lane whose messages fit in half the board (`fits`) keeps them while any stream of it is in
  progress, so a stream that joins late finds every message built; when its last stream ends they
  stay only if the lane was asked for more than once (two streams at once, or a lane seen before:
  a bounded memory of recent lanes, `REMEMBERED`), so a repeat (a trainer restarting, ranks that
  start one after the other) sends ready messages from its third fetch on, while requests that
  never repeat (most of them) leave nothing behind to churn the cache;
- a larger lane's messages are kept only while a stream of the lane has yet to send them, and
  only once a second stream has joined: a one-off 4 GiB stream fills nothing.
A stream that finds its message evicted builds it again from the engine, which is always correct:
the board only ever saves work.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from weightgen.server.engine.cache import wait_for

RETAIN_FRACTION = 2
"""A lane's messages are kept for late joiners and repeats when they fit in 1/RETAIN_FRACTION of
the board: any number of small and medium variables, while one variable cannot push out all the
rest."""

REMEMBERED = 4096
"""Lanes whose hashes the board remembers after their messages are gone, to tell a repeat from a
first request (8 bytes each; a hash collision only keeps a lane it need not have kept)."""


def chunk_count(byte_size: int, resume_offset: int, chunk_bytes: int) -> int:
    """Messages a variable's stream sends: ceil(rest / chunk_bytes), and one for an empty rest
    (its info and digest). Chunk n starts at resume_offset + n * chunk_bytes."""
    rest = byte_size - resume_offset
    return max(1, -(-rest // chunk_bytes))


@dataclass
class _Lane:
    fits: bool  # its messages fit in 1/RETAIN_FRACTION of the board
    repeated: bool = False  # asked for more than once: keep its messages when its streams end
    readers: dict[int, int] = field(default_factory=dict)  # stream token -> next message number
    building: dict[int, threading.Event] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)  # message numbers in the board


class ChunkBoard:
    """Chunk messages by (lane, number), at most `max_bytes` of them (0: share nothing)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._messages: OrderedDict[tuple[Hashable, int], bytes] = OrderedDict()
        self._lanes: dict[Hashable, _Lane] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()  # hashes of recent lanes
        self._lock = threading.Lock()
        self._tokens = 0
        self.bytes = 0
        self.built = 0  # messages built by a stream
        self.shared = 0  # messages a stream sent that another stream (or an earlier fetch) built
        self.waits = 0  # times a stream waited for another stream's build of its message
        self.evictions = 0

    def join(self, lane: Hashable | None, lane_bytes: int) -> Tap:
        """A stream's handle on `lane` (None: a lane of its own, nothing shared); `lane_bytes`
        is what all its messages come to. Call `Tap.leave` when the stream ends, however."""
        if lane is None or self.max_bytes <= 0:
            return Tap(self, None, 0)
        with self._lock:
            state = self._lanes.get(lane)
            if state is None:
                state = self._lanes[lane] = _Lane(fits=lane_bytes * RETAIN_FRACTION <= self.max_bytes)
                seen = hash(lane)
                state.repeated = seen in self._seen
                self._seen[seen] = None
                self._seen.move_to_end(seen)
                if len(self._seen) > REMEMBERED:
                    self._seen.popitem(last=False)
            else:
                state.repeated = True
            self._tokens += 1
            token = self._tokens
            state.readers[token] = 0
        return Tap(self, lane, token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    # -- for Tap ---------------------------------------------------------------------------------

    def _found(self, lane: Hashable, token: int, n: int) -> bytes | None:
        """Message n of `lane` if the board has it, counted as shared (under `_lock`)."""
        message = self._messages.get((lane, n))
        if message is not None:
            self._messages.move_to_end((lane, n))
            self.shared += 1
            self._advance(lane, token, n + 1)
        return message

    def _take(self, lane: Hashable, token: int, n: int, cancelled: threading.Event | None) -> bytes | None:
        while True:
            with self._lock:
                message = self._found(lane, token, n)
                if message is not None:
                    return message
                state = self._lanes[lane]
                building = state.building.get(n)
                if building is None:
                    state.building[n] = threading.Event()
                    return None  # the caller builds it
                self.waits += 1
            wait_for(building.wait, cancelled)
            # Built and offered (found above), or given up or evicted at once (then built here).

    def _offer(self, lane: Hashable, token: int, n: int, message: bytes) -> None:
        with self._lock:
            self.built += 1
            state = self._lanes[lane]
            done = state.building.pop(n, None)
            # A large lane with a single stream keeps nothing: nobody else would take it.
            if (state.fits or len(state.readers) > 1) and len(message) <= self.max_bytes:
                self._messages[(lane, n)] = message
                state.held.add(n)
                self.bytes += len(message)
                self._evict()
            self._advance(lane, token, n + 1)
        if done is not None:
            done.set()

    def _abandon(self, lane: Hashable, n: int) -> None:
        with self._lock:
            done = self._lanes[lane].building.pop(n, None)
        if done is not None:
            done.set()

    def _leave(self, lane: Hashable, token: int) -> None:
        with self._lock:
            state = self._lanes[lane]
            state.readers.pop(token, None)
            if not state.fits or not (state.readers or state.repeated):
                self._drop_passed(lane, state)  # with no reader left: every message
            if not state.readers and not state.building and not state.held:
                self._lanes.pop(lane, None)

    def _advance(self, lane: Hashable, token: int, position: int) -> None:
        state = self._lanes[lane]
        before = state.readers.get(token)
        if before is None:
            return
        state.readers[token] = position
        if not state.fits and state.held and before <= min(state.readers.values(), default=position):
            self._drop_passed(lane, state)

    def _drop_passed(self, lane: Hashable, state: _Lane) -> None:
        """Drop the lane's messages every remaining stream has sent (all of them when none is left)."""
        lowest = min(state.readers.values(), default=None)
        for n in [n for n in state.held if lowest is None or n < lowest]:
            self._remove((lane, n), state)

    def _remove(self, key: tuple[Hashable, int], state: _Lane) -> None:
        self.bytes -= len(self._messages.pop(key))
        state.held.discard(key[1])
        if not state.held and not state.readers and not state.building:
            self._lanes.pop(key[0], None)

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            key = next(iter(self._messages))
            self._remove(key, self._lanes[key[0]])
            self.evictions += 1


class Tap:
    """One stream's access to its lane of a `ChunkBoard`, message by message, in order (numbers
    may skip forward). `take(n)` returns message n or None, and None makes this stream its builder:
    it must `offer(n, message)` or `abandon()`."""

    def __init__(self, board: ChunkBoard, lane: Hashable | None, token: int):
        self._board = board
        self._lane = lane
        self._token = token
        self._building: int | None = None

    def take(self, n: int, cancelled: threading.Event | None = None) -> bytes | None:
        """Message n if the board has it (waiting while another stream builds it; Cancelled once
        `cancelled` is set), else None: build it."""
        if self._lane is None:
            return None
        message = self._board._take(self._lane, self._token, n, cancelled)
        if message is None:
            self._building = n
        return message

    def ready(self, n: int) -> bytes | None:
        """Message n if the board has it now; never waits and never makes this stream a builder
        (for the event loop)."""
        if self._lane is None:
            return None
        with self._board._lock:
            return self._board._found(self._lane, self._token, n)

    def offer(self, n: int, message: bytes) -> None:
        """This stream built message n (counted as built whether or not the lane is shared)."""
        if self._lane is None:
            with self._board._lock:
                self._board.built += 1
            return
        self._building = None
        self._board._offer(self._lane, self._token, n, message)

    def abandon(self) -> None:
        """This stream will not build the message it took on (it failed or was cancelled)."""
        if self._lane is not None and self._building is not None:
            self._board._abandon(self._lane, self._building)
            self._building = None

    def leave(self) -> None:
        """The stream is done with its lane; idempotent."""
        if self._lane is not None:
            self.abandon()
            self._board._leave(self._lane, self._token)
            self._lane = None
