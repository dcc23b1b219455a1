"""The chunk board (server/chunks.py): messages built once per lane and shared, single-flight,
bounded; and over gRPC, what a stream that takes messages ready-made or resumes no longer computes."""

from __future__ import annotations

import threading

import grpc
import pytest

from weightgen.server.chunks import ChunkBoard, chunk_count
from weightgen.server.engine.cache import Cancelled
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc, wire

from .helpers import fetch, init, metric, var

MESSAGE = b"m" * 1000


def test_chunk_count_matches_the_chunks_a_stream_sends():
    assert chunk_count(0, 0, 100) == 1  # info and digest only
    assert chunk_count(100, 0, 100) == 1
    assert chunk_count(101, 0, 100) == 2
    assert chunk_count(250, 50, 100) == 2
    assert chunk_count(250, 250, 100) == 1  # a resume at the end: the last chunk, empty


def test_one_stream_builds_a_message_the_others_wait_for_it():
    board = ChunkBoard(1 << 20)
    builder, waiter = board.join("lane", 10 * len(MESSAGE)), board.join("lane", 10 * len(MESSAGE))
    assert builder.take(0) is None  # nobody has it: this stream builds it
    got: list = []
    thread = threading.Thread(target=lambda: got.append(waiter.take(0)))
    thread.start()
    thread.join(0.3)
    assert thread.is_alive(), "the second stream must wait for the build in progress, not build it too"
    builder.offer(0, MESSAGE)
    thread.join(10)
    assert got == [MESSAGE] and got[0] is MESSAGE  # the very same object: nothing copied
    assert (board.built, board.shared, board.waits) == (1, 1, 1)


def test_an_abandoned_build_passes_to_a_waiter_and_a_cancelled_wait_ends():
    board = ChunkBoard(1 << 20)
    first, second = board.join("lane", 4000), board.join("lane", 4000)
    assert first.take(0) is None
    got: list = []
    thread = threading.Thread(target=lambda: got.append(second.take(0)))
    thread.start()
    thread.join(0.2)
    first.abandon()  # the builder failed or was cancelled
    thread.join(10)
    assert got == [None], "the waiter builds it itself"
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(Cancelled):
        first.take(0, cancelled)  # `second` builds message 0: waiting for it stops on cancellation
    second.offer(0, MESSAGE)
    assert first.take(0) is MESSAGE


def test_a_lane_that_fits_half_the_board_is_kept_for_late_joiners_and_repeats():
    board = ChunkBoard(8 * len(MESSAGE))

    def fetch_all(tap) -> list:
        got = []
        for n in range(4):
            message = tap.take(n)
            if message is None:
                tap.offer(n, MESSAGE)
            got.append(message)
        return got

    first = board.join("small", 4 * len(MESSAGE))
    assert fetch_all(first) == [None] * 4
    late = board.join("small", 4 * len(MESSAGE))  # joins while the first is still in progress
    assert fetch_all(late) == [MESSAGE] * 4
    first.leave()
    late.leave()
    assert board.bytes == 4 * len(MESSAGE), "asked for twice: kept for repeats"

    once = board.join("once", 4 * len(MESSAGE))
    fetch_all(once)
    once.leave()
    assert board.bytes == 4 * len(MESSAGE), "a lane asked for once leaves nothing behind"
    again = board.join("once", 4 * len(MESSAGE))
    assert fetch_all(again) == [None] * 4  # built again, and remembered as a repeat
    again.leave()
    third = board.join("once", 4 * len(MESSAGE))
    assert [third.ready(n) for n in range(4)] == [MESSAGE] * 4
    assert board.bytes == 8 * len(MESSAGE) and board.evictions == 0


def test_a_large_lane_keeps_only_what_a_slower_stream_still_needs():
    board = ChunkBoard(8 * len(MESSAGE))
    lane_bytes = 100 * len(MESSAGE)  # more than half the board: not kept for repeats
    alone = board.join("large", lane_bytes)
    assert alone.take(0) is None
    alone.offer(0, MESSAGE)
    assert len(board) == 0, "a single stream of a large lane keeps nothing: nobody would take it"
    slow = board.join("large", lane_bytes)
    for n in (1, 2, 3):
        assert alone.take(n) is None
        alone.offer(n, MESSAGE)
    assert len(board) == 3  # messages 1-3, for `slow`
    assert slow.take(0) is None  # not kept: built again by the slower stream
    slow.offer(0, MESSAGE)
    assert slow.take(1) is MESSAGE and slow.take(2) is MESSAGE
    assert len(board) == 1, "messages every stream has sent are dropped"
    slow.leave()
    assert len(board) == 0 and board.bytes == 0
    alone.leave()


def test_the_board_never_holds_more_than_its_bytes():
    board = ChunkBoard(5 * len(MESSAGE))
    taps = [board.join("lane", 2 * len(MESSAGE)), board.join("other", 2 * len(MESSAGE))]
    for n in range(2):
        for tap in taps:
            assert tap.take(n) is None
            tap.offer(n, MESSAGE)
            assert board.bytes <= board.max_bytes
    assert board.evictions == 0 and board.bytes == 4 * len(MESSAGE)
    third = board.join("third", 2 * len(MESSAGE))
    third.take(0)
    third.offer(0, MESSAGE)
    assert board.bytes == 5 * len(MESSAGE) and board.evictions == 0
    third.take(1)
    third.offer(1, MESSAGE)
    assert board.bytes <= board.max_bytes and board.evictions == 1
    assert taps[0].ready(0) is None, "the least recently used message went first"


def test_a_board_of_zero_bytes_shares_nothing_and_still_counts():
    board = ChunkBoard(0)
    a, b = board.join("lane", 1000), board.join("lane", 1000)
    assert a.take(0) is None and b.take(0) is None  # no single-flight either: nothing to share
    a.offer(0, MESSAGE)
    b.offer(0, MESSAGE)
    assert (board.built, board.shared, len(board)) == (2, 0, 0)


# -- over gRPC ---------------------------------------------------------------------------------------

CALL = 1 << 18  # elements of one kernel call
SHAPE = [4 * CALL]  # 4 MiB of float32, 4 kernel calls


def _counts(server) -> dict[str, float]:
    names = ("cache_hits", "cache_misses", "chunks_built", "chunks_shared", "digest_bytes_hashed")
    return {name: metric(server, f"weightgen_{name}_total") for name in names}


def _delta(server, before):
    return {k: v - before[k] for k, v in _counts(server).items()}


def test_a_resumed_stream_does_not_compute_the_bytes_it_skips(server):
    variable = var("chunks/resumed", SHAPE, init(random_normal={"stddev": 0.5}))
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        whole = fetch(stub, pb.MaterializeRequest(seed=3, variables=[variable]))[0]
        resumed = pb.MaterializeRequest(seed=3, variables=[variable])
        resumed.variables[0].resume_offset = 3 * CALL * 4 + 8  # inside the fourth kernel call
        resumed.chunk_bytes = 200_000  # another lane: its messages must be built
        before = _counts(server)
        tail = fetch(stub, resumed)[0]
        moved = _delta(server, before)
    assert tail.data == whole.data[3 * CALL * 4 + 8 :]
    assert tail.digest == whole.digest  # the digest still covers the whole tensor
    # Only the kernel call holding the resume offset was looked up (before: all four, regenerated).
    assert moved["cache_hits"] + moved["cache_misses"] == 1, moved
    assert moved["digest_bytes_hashed"] == 0, moved


def test_a_variable_at_another_index_is_another_lane_with_the_same_bytes(server):
    a = var("chunks/a", [256, 256], init(glorot_uniform={}))
    b = var("chunks/b", [512, 256], init(orthogonal={}))
    pair_request = pb.MaterializeRequest(seed=4, variables=[a, b])
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        alone = fetch(stub, pb.MaterializeRequest(seed=4, variables=[b]))[0]
        before = _counts(server)
        pair = fetch(stub, pair_request)
        moved = _delta(server, before)
        fetch(stub, pair_request)  # a repeat: from now on its messages are kept
        before = _counts(server)
        again = fetch(stub, pair_request)
        repeat = _delta(server, before)
    chunk = wire.DEFAULT_CHUNK_BYTES
    messages = chunk_count(512 * 256 * 4, 0, chunk) + chunk_count(256 * 256 * 4, 0, chunk)
    assert pair[1].data == alone.data and pair[1].digest == alone.digest
    assert moved["chunks_built"] == messages and moved["chunks_shared"] == 0, moved
    assert again[0].data == pair[0].data and again[1].data == alone.data
    assert repeat["chunks_built"] == 0 and repeat["chunks_shared"] == messages, repeat


def test_the_chunk_cache_is_bounded_and_reported(server):
    request = pb.MaterializeRequest(seed=6, variables=[var("chunks/gauge", [64, 64], init(ones={}))])
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        for _ in range(2):  # asked for twice: kept
            fetch(stub, request)
    assert metric(server, "weightgen_chunk_cache_max_bytes") == 128 << 20
    assert 0 < metric(server, "weightgen_chunk_cache_bytes") <= metric(server, "weightgen_chunk_cache_max_bytes")
