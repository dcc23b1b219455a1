"""Herds: N concurrent identical requests generate once (single-flight plus the block cache).

Every kernel call a stream needs is one submission to the worker pool, counted once as a cache hit
or a cache miss; a miss either joins the identical call in flight (`weightgen_generation_shared`)
or generates. So for any interleaving of the streams:

    submissions = hits + misses             = N * (calls of one fetch)
    generated   = misses - shared           = calls of one fetch  (each call made exactly once)
    served      = hits + shared             = (N - 1) * (calls of one fetch)

(the pool puts a finished call in the cache before taking it off the in-flight table, so a call is
always found in one of the two; the cache's 128 MiB keep a 32 MiB herd whole).

The streams share their digest too: however they interleave, each byte of the variable is hashed
once (`weightgen_digest_bytes_hashed`) and the other N - 1 streams skip it
(`weightgen_digest_bytes_shared`); a later fetch of the same bytes hashes nothing.
"""

from __future__ import annotations

import threading

import grpc

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

from .helpers import fetch, init, metric, var

HERD = 8
SHAPE = [2048, 4096]  # 32 MiB of float32
BYTES = 2048 * 4096 * 4
CALLS = 2048 * 4096 // (1 << 18)  # kernel calls of 2^18 elements


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

        # The herd: HERD identical requests at once, for another tensor nobody asked for before.
        request = pb.MaterializeRequest(seed=8, variables=[var("herd/many", SHAPE, init(he_normal={}))])
        start = threading.Barrier(HERD)
        results: list = [None] * HERD

        def member(i: int) -> None:
            start.wait()
            try:
                results[i] = bytes(fetch(stub, request)[0].data)  # digest checked
            except BaseException as error:
                results[i] = error

        before = _counters(server)
        members = [threading.Thread(target=member, args=(i,)) for i in range(HERD)]
        for t in members:
            t.start()
        for t in members:
            t.join(300)
        herd = _delta(_counters(server), before)

        # The same bytes again, alone: generation comes from the cache, the digest from the board.
        before = _counters(server)
        again = bytes(fetch(stub, request)[0].data)
        repeat = _delta(_counters(server), before)

    assert all(isinstance(r, bytes) for r in results), [r for r in results if not isinstance(r, bytes)]
    assert len(set(results)) == 1 and len(results[0]) == 2048 * 4096 * 4
    assert herd["cache_hits"] + herd["cache_misses"] == HERD * CALLS, herd
    assert herd["cache_misses"] - herd["generation_shared"] == CALLS, herd  # generated once
    assert herd["cache_hits"] + herd["generation_shared"] == (HERD - 1) * CALLS, herd
    assert herd["digest_bytes_hashed"] == BYTES, herd  # hashed once
    assert herd["digest_bytes_shared"] == (HERD - 1) * BYTES, herd
    assert again == results[0]
    assert repeat["digest_bytes_hashed"] == 0 and repeat["digest_bytes_shared"] == BYTES, repeat
