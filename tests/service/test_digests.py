"""The digest board: streams of the same bytes share one SHA-256, each byte hashed once, whatever
order the streams feed in; a finished digest is remembered; content keys tell bytes apart."""

from __future__ import annotations

import hashlib
import itertools
import random
import threading

import pytest

from weightgen.server.digests import DigestBoard, SharedDigest
from weightgen.server.engine.spec import Initializer, VariableSpec

DATA = bytes(random.Random(7).randbytes(100_000))
EXPECTED = hashlib.sha256(DATA).digest()


def pieces(data: bytes, cuts: list[int]) -> list[tuple[int, memoryview]]:
    bounds = [0, *sorted(cuts), len(data)]
    return [(a, memoryview(data)[a:b]) for a, b in itertools.pairwise(bounds)]


def test_streams_feeding_in_any_interleaving_hash_each_byte_once():
    board = DigestBoard()
    rng = random.Random(3)
    streams = 6
    joined = [board.join("k", len(DATA)) for _ in range(streams)]
    assert all(s is joined[0] for s in joined)
    # Each stream has its own piece boundaries and advances at its own pace.
    plans = [pieces(DATA, rng.sample(range(1, len(DATA)), 20)) for _ in range(streams)]
    cursors = [0] * streams
    while any(c < len(p) for c, p in zip(cursors, plans, strict=True)):
        i = rng.choice([i for i in range(streams) if cursors[i] < len(plans[i])])
        board.feed(joined[i], *plans[i][cursors[i]])
        cursors[i] += 1
    assert all(s.digest() == EXPECTED for s in joined)
    assert board.hashed_bytes == len(DATA)
    assert board.skipped_bytes == (streams - 1) * len(DATA)


def test_threads_share_one_digest():
    board = DigestBoard()
    start = threading.Barrier(8)
    got: list[bytes] = []

    def stream() -> None:
        shared = board.join(("k", 1), len(DATA))
        start.wait()
        for offset, data in pieces(DATA, list(range(4096, len(DATA), 4096))):
            board.feed(shared, offset, data)
        got.append(shared.digest())
        board.leave(("k", 1), shared)

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == [EXPECTED] * 8
    assert board.hashed_bytes == len(DATA)


def test_a_finished_digest_serves_later_streams_and_the_board_keeps_a_bounded_number():
    board = DigestBoard(max_finished=2)
    first = board.join("a", len(DATA))
    board.feed(first, 0, memoryview(DATA))
    board.leave("a", first)
    later = board.join("a", len(DATA))
    assert later is first and later.complete and board.joined == 1
    board.feed(later, 0, memoryview(DATA))
    assert later.digest() == EXPECTED and board.hashed_bytes == len(DATA)
    board.leave("a", later)
    for key in ("b", "c"):
        s = board.join(key, 1)
        board.feed(s, 0, memoryview(b"x"))
        board.leave(key, s)
    assert len(board) == 2
    assert not board.join("a", len(DATA)).complete  # "a" was the least recently used: forgotten


def test_an_unfinished_digest_is_dropped_when_its_last_stream_leaves():
    board = DigestBoard()
    s = board.join("k", len(DATA))
    board.feed(s, 0, memoryview(DATA)[:10])
    board.leave("k", s)
    assert len(board) == 0
    assert board.join("k", len(DATA)) is not s


def test_a_private_digest_is_never_shared():
    board = DigestBoard()
    assert board.join(None, 5) is not board.join(None, 5)
    assert len(board) == 0


def test_a_gap_or_an_overrun_is_an_error_not_a_wrong_digest():
    s = SharedDigest(10)
    with pytest.raises(RuntimeError, match="fed at byte 5"):
        s.feed(5, memoryview(b"12345"))
    with pytest.raises(RuntimeError, match="up to byte 11"):
        s.feed(0, memoryview(b"01234567890"))
    with pytest.raises(RuntimeError, match="asked for at byte 0"):
        s.digest()


def test_the_engine_digest_of_a_prepared_variable_matches_its_streamed_bytes(engine):
    spec = VariableSpec("w", (300, 700), "float32", Initializer("random_normal", {"stddev": 1.0}))
    prepared = engine.prepare(spec, seed=5)
    board = DigestBoard()
    shared = board.join(prepared.content_key, prepared.info.byte_size)
    at = 0
    for values in engine.stream(prepared):
        data = memoryview(values.reshape(-1).view("uint8"))
        board.feed(shared, at, data)
        at += len(data)
    assert shared.digest() == hashlib.sha256(engine.generate(spec, seed=5).tobytes()).digest()
