"""Resume: a broken stream continues where it stopped, and the bytes equal an unbroken fetch."""

from __future__ import annotations

import dataclasses

import pytest
from client_helpers import BreakingProxy, same_bytes
from faultwire import Faults

from weightgen.client import Client, Variable, errors

CHUNK = 64 << 10  # the smallest chunk a server sends
VARIABLES = [
    Variable("first", (128, 128), "he"),  # 64 KiB: one chunk
    Variable("second", (256, 512), "random_uniform(min=-3, max=3)"),  # 512 KiB: 8 chunks
    Variable("third", (192, 256), "glorot_normal", dtype="bfloat16"),  # 96 KiB
]
TOTAL = 128 * 128 * 4 + 256 * 512 * 4 + 192 * 256 * 2


class Recorder:
    """A fault hook that records every chunk (attempt, variable index, offset, size) and cuts the
    stream of attempt `cut_attempt` before its chunk number `cut_at`."""

    def __init__(self, cut_at: int, cut_attempt: int = 0):
        self.cut_at = cut_at
        self.cut_attempt = cut_attempt
        self.seen: list[tuple[int, int, int, int]] = []
        self._count = 0

    def __call__(self, attempt: int, chunk):
        if attempt == self.cut_attempt:
            if self._count == self.cut_at:
                return None
            self._count += 1
        self.seen.append((attempt, chunk.variable_index, chunk.offset, chunk.data.nbytes))
        return chunk


def _fetch(address: str, variables, hook=None, **kwargs):
    progress = []
    with Client(address, chunk_bytes=CHUNK, interceptors=[Faults(hook)]) as client:
        client.backoff = 0.01
        arrays = client.materialize(variables, progress=lambda got, total: progress.append(got), **kwargs)
    return arrays, progress


def test_resume_after_a_cut_gives_identical_bytes_without_refetching(server):
    reference, _ = _fetch(server.address, VARIABLES, seed=21)
    hook = Recorder(cut_at=4)  # mid-"second": after "first" and 3 of its chunks
    resumed, progress = _fetch(server.address, VARIABLES, hook, seed=21)
    assert all(same_bytes(resumed[k], reference[k]) for k in reference)
    attempts = {a for a, *_ in hook.seen}
    assert attempts == {0, 1}
    # Nothing arrived twice: the second attempt asked only for the rest, from the first missing byte.
    assert sum(size for *_, size in hook.seen) == TOTAL == progress[-1]
    first_resumed = next(s for s in hook.seen if s[0] == 1)
    assert first_resumed[1:3] == (0, 3 * CHUNK)  # variable 0 of the resumed request ("second"), its offset


def test_resume_keeps_the_seed_the_server_picked(server):
    hook = Recorder(cut_at=2)
    faults = Faults(hook)
    with Client(server.address, chunk_bytes=CHUNK, interceptors=[faults]) as client:
        client.backoff = 0.01
        tensors = list(client.stream(VARIABLES))  # seed 0: the server picks
        faults.hook = None
        seed = tensors[0].seed
        assert {t.seed for t in tensors} == {seed}
        reference = client.materialize(VARIABLES, seed=seed)
    assert all(same_bytes(t.array, reference[t.name]) for t in tensors)
    assert {a for a, *_ in hook.seen} == {0, 1}


def test_resume_in_a_sequential_session(server):
    faults = Faults()
    with Client(server.address, chunk_bytes=CHUNK, interceptors=[faults]) as client:
        with client.open_session(seed=5, rng_mode="sequential") as session:
            reference = session.materialize(VARIABLES)
        client.backoff = 0.01
        faults.hook = Recorder(cut_at=10)  # inside "third", the last variable: every position is known
        with client.open_session(seed=5, rng_mode="sequential") as session:
            resumed = session.materialize(VARIABLES)
            assert session.close() == 3  # the resume re-used positions instead of taking new ones
    assert all(same_bytes(resumed[k], reference[k]) for k in reference)


def test_sequential_variable_that_never_started_resumes_at_its_position(server):
    faults = Faults()
    with Client(server.address, chunk_bytes=CHUNK, interceptors=[faults]) as client:
        with client.open_session(seed=5, rng_mode="sequential") as session:
            reference = session.materialize(VARIABLES)
        client.backoff = 0.01
        faults.hook = Recorder(cut_at=2)  # inside "second": "third" has not started yet
        with client.open_session(seed=5, rng_mode="sequential") as session:
            resumed = session.materialize(VARIABLES)
            assert session.close() == 3  # positions from the stream's first chunk, none taken anew
    assert all(same_bytes(resumed[k], reference[k]) for k in reference)


def test_sequential_position_unknown_cannot_resume(server):
    def cut_and_forget_positions(attempt, chunk):
        if attempt == 0 and chunk.offset > 0:
            return None  # cut after the first chunk
        return dataclasses.replace(chunk, sequence_indexes=())  # as from a server that does not say

    with Client(server.address, chunk_bytes=CHUNK, interceptors=[Faults(cut_and_forget_positions)]) as client:
        client.backoff = 0.01
        with client.open_session(seed=5, rng_mode="sequential") as session, pytest.raises(errors.ResumeError) as caught:
            session.materialize(VARIABLES)
    assert "'third'" in caught.value.message


def test_retries_run_out_without_progress(server):
    calls = []

    def cut_everything(attempt, chunk):
        calls.append(attempt)  # and return None: cut the stream before this chunk

    with Client(server.address, retries=2, interceptors=[Faults(cut_everything)]) as client:
        client.backoff = 0.01
        with pytest.raises(errors.Unavailable):
            client.materialize(VARIABLES[:1], seed=1)
    assert calls == [0, 1, 2]


def test_a_real_connection_drop_resumes(server):
    reference, _ = _fetch(server.address, VARIABLES, seed=4)
    proxy = BreakingProxy(server.address, lambda n: 240_000 if n == 0 else None)
    try:
        hook = Recorder(cut_at=-1)  # records only
        resumed, progress = _fetch(proxy.address, VARIABLES, hook, seed=4)
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.connections == 2
    assert all(same_bytes(resumed[k], reference[k]) for k in reference)
    assert sum(size for *_, size in hook.seen) == TOTAL == progress[-1]
    assert {a for a, *_ in hook.seen} == {0, 1}
