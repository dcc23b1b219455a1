"""Herds: N concurrent identical requests generate once, hash once and build each message once.

Identical requests are one lane of the chunk board (server/chunks.py): each of the variable's
messages is built by one stream (single-flight: the others wait for it or find it ready). The lane
fits the default chunk cache, which keeps all its messages while any of its streams is in progress
(and afterwards, as it was asked for more than once), so once every member's stream has started
(each waits for the others after its first chunk), for any interleaving of the rest:

    built  = weightgen_chunks_built   = messages of one fetch
    shared = weightgen_chunks_shared  = (N - 1) * (messages of one fetch)

A stream pulls engine pieces only for the messages it builds. Every kernel call it pulls is one
submission to the worker pool, counted once as a cache hit or a cache miss; a miss either joins the
identical call in flight (`weightgen_generation_shared`) or generates, so however the builds are
spread over the streams:

    generated   = misses - shared           = calls of one fetch  (each call made exactly once)
    submissions = hits + misses            <= N * (calls of one fetch)

(the pool puts a finished call in the cache before taking it off the in-flight table, so a call is
always found in one of the two; the block cache's 128 MiB keep a 32 MiB herd whole). Each byte is
hashed once (`weightgen_digest_bytes_hashed`), by whichever streams built the messages.

A later fetch of the same request takes every message ready-made: no kernel call, no hashing, no
message built. One that differs only in its chunk size is another lane: it builds its messages from
the block cache (no generation) and takes the digest from the digest board (no hashing).
"""

from __future__ import annotations

import threading

import grpc

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc, wire

from .helpers import fetch, init, metric, var

HERD = 8
SHAPE = [2048, 4096]  # 32 MiB of float32
BYTES = 2048 * 4096 * 4
CALLS = 2048 * 4096 // (1 << 18)  # kernel calls of 2^18 elements
MESSAGES = -(-BYTES // wire.DEFAULT_CHUNK_BYTES)  # the server's default chunk size


def _counters(server) -> dict[str, float]:
    return {
        name: metric(server, f"weightgen_{name}_total")
        for name in (
            "cache_hits",
            "cache_misses",
            "generation_shared",
            "cache_evictions",
            "digest_bytes_hashed",
            "digest_bytes_shared",
            "chunks_built",
            "chunks_shared",
        )
    }


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def test_identical_concurrent_requests_generate_once(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)

        # One fetch alone, of a tensor nobody asked for before: its calls, all generated.
        before = _counters(server)
        fetch(stub, pb.MaterializeRequest(seed=8, variables=[var("herd/alone", SHAPE, init(he_normal={}))]))
        alone = _delta(_counters(server), before)
        assert alone["cache_hits"] == alone["generation_shared"] == 0, alone
        assert alone["cache_misses"] == CALLS, alone
        assert alone["digest_bytes_hashed"] == BYTES and alone["digest_bytes_shared"] == 0, alone
        assert alone["chunks_built"] == MESSAGES and alone["chunks_shared"] == 0, alone

        # The herd: HERD identical requests at once, for another tensor nobody asked for before.
        request = pb.MaterializeRequest(seed=8, variables=[var("herd/many", SHAPE, init(he_normal={}))])
        start, joined = threading.Barrier(HERD), threading.Barrier(HERD, timeout=120)
        results: list = [None] * HERD

        def member(i: int) -> None:
            start.wait()
            try:
                # Every member's stream is in progress before any may end (what makes them a herd
                # rather than a queue of repeats): each waits, after its first chunk, for all.
                results[i] = bytes(fetch(stub, request, after_first=joined.wait)[0].data)  # digest checked
            except BaseException as error:
                results[i] = error

        before = _counters(server)
        members = [threading.Thread(target=member, args=(i,)) for i in range(HERD)]
        for t in members:
            t.start()
        for t in members:
            t.join(300)
        herd = _delta(_counters(server), before)

        # The same request again, alone: every message ready-made.
        before = _counters(server)
        again = bytes(fetch(stub, request)[0].data)
        repeat = _delta(_counters(server), before)

        # The same bytes in another chunk size: generation from the block cache, the digest from
        # the digest board, the messages built anew.
        other = pb.MaterializeRequest()
        other.CopyFrom(request)
        other.chunk_bytes = wire.MAX_CHUNK_BYTES
        before = _counters(server)
        rechunked = bytes(fetch(stub, other)[0].data)
        moved = _delta(_counters(server), before)

    assert all(isinstance(r, bytes) for r in results), [r for r in results if not isinstance(r, bytes)]
    assert len(set(results)) == 1 and len(results[0]) == 2048 * 4096 * 4
    assert herd["chunks_built"] == MESSAGES, herd  # each message built once
    assert herd["chunks_shared"] == (HERD - 1) * MESSAGES, herd
    assert herd["cache_misses"] - herd["generation_shared"] == CALLS, herd  # generated once
    assert herd["cache_hits"] + herd["cache_misses"] <= HERD * CALLS, herd
    assert herd["digest_bytes_hashed"] == BYTES, herd  # hashed once
    assert again == results[0]
    assert repeat["chunks_built"] == 0 and repeat["chunks_shared"] == MESSAGES, repeat
    assert repeat["cache_hits"] == repeat["cache_misses"] == 0, repeat  # not even a cache lookup
    assert repeat["digest_bytes_hashed"] == repeat["digest_bytes_shared"] == 0, repeat
    assert rechunked == results[0]
    assert moved["chunks_built"] == -(-BYTES // wire.MAX_CHUNK_BYTES) and moved["chunks_shared"] == 0, moved
    assert moved["cache_hits"] == CALLS and moved["cache_misses"] == 0, moved
    assert moved["digest_bytes_hashed"] == 0 and moved["digest_bytes_shared"] == BYTES, moved
