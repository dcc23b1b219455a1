"""Many replicas act as one server (issue 11): three real replicas on loopback that share one
`--session-keys-file`, behind ONE balanced client channel (``ipv4:127.0.0.1:p1,...:p2,...:p3``,
round_robin). A replica killed mid-fetch, sessions whose requests land on different replicas, every
replica restarted, and a rolling restart during several clients' 1 GiB fetches: every client gets
the bytes one undisturbed server gives, receives each byte once, and none gives up."""

from __future__ import annotations

import hashlib
import signal
import threading
import time

import numpy as np
import pytest
from faultwire import Faults

from weightgen.client import Client, Variable

from .conftest import REPLICAS, Fleet, log_records, wait_until

MIB = 1 << 20
PATIENT = {"retry_seconds": 180.0, "timeout": 600}
"""Generous: a fleet client keeps retrying through restarts; no duration is asserted anywhere."""
JOIN_SECONDS = 200
"""How long a test waits for its fetching threads (within pytest's 300 s per test)."""


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8)).hexdigest()


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and digest(a) == digest(b)


class Wire:
    """A fault hook (faultwire.Faults) used as a tap: every chunk that reached the client, by attempt
    (attempt 0 is the first call, each later one a resumed call). Returns the chunk unchanged."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int, int]] = []  # (attempt, offset, bytes)

    def __call__(self, attempt, chunk):
        self.chunks.append((attempt, chunk.offset, chunk.data.nbytes))
        return chunk

    @property
    def bytes(self) -> int:
        return sum(size for *_, size in self.chunks)

    @property
    def attempts(self) -> int:
        return 1 + max((attempt for attempt, *_ in self.chunks), default=0)


def spread(before: list[float], after: list[float]) -> list[int]:
    return [int(a - b) for a, b in zip(after, before, strict=True)]


def settled(fleet: Fleet, before: list[float], calls: int) -> list[int]:
    """Per replica, the Materialize calls finished OK since `before`, once they add up to `calls`
    (a server counts a call after its last message is sent)."""

    def counted() -> list[int] | None:
        got = spread(before, fleet.served())
        return got if sum(got) == calls else None

    return wait_until(counted, f"{calls} calls to be counted")


# -- (a) the replica serving a fetch is SIGKILLed mid-fetch -----------------------------------------

KILLED = Variable("killed", (8192, 8192), "random_normal")  # 256 MiB of float32
KILLED_BYTES = 8192 * 8192 * 4
PAUSE_AT = 64 * MIB


def test_the_replica_serving_a_fetch_is_killed_and_the_fetch_completes_elsewhere(fleet):
    paused, killed = threading.Event(), threading.Event()
    progress: list[int] = []
    wire = Wire()

    def on_progress(got: int, total: int) -> None:
        progress.append(got)
        if got >= PAUSE_AT and not killed.is_set():
            paused.set()  # hold the stream here until its replica is dead
            killed.wait(120)

    result: dict = {}

    def fetch() -> None:
        try:
            with Client(fleet.target, **PATIENT, interceptors=[Faults(wire)]) as client:
                assert client.balanced
                result["array"] = client.materialize([KILLED], seed=1101, progress=on_progress)["killed"]
        except BaseException as error:
            result["error"] = error

    before = fleet.served()
    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()
    try:
        assert paused.wait(120), "the fetch did not start"
        serving = wait_until(lambda: [i for i, n in enumerate(fleet.active()) if n >= 1], "the serving replica")
        assert len(serving) == 1, f"one stream, one replica: active streams {fleet.active()}"
        victim = serving[0]
        assert fleet.stop(victim, signal.SIGKILL) == -signal.SIGKILL
    finally:
        killed.set()
        fetcher.join(JOIN_SECONDS)
    assert not fetcher.is_alive(), "the fetch did not finish"
    assert "error" not in result, f"the client gave up: {result.get('error')!r}"
    got = result.pop("array")
    got_digest, got_shape, got_dtype = digest(got), got.shape, got.dtype
    del got

    # The rest came from another replica (the killed one's count died with it).
    before[victim] = 0.0
    after = settled(fleet, before, 1)
    assert after[victim] == 0 and sum(after) == 1, after
    # Nothing fetched twice: the resumed call asked for the first byte the client lacked.
    assert wire.attempts >= 2, wire.chunks[:3]
    first_attempt = sum(size for attempt, _, size in wire.chunks if attempt == 0)
    print(f"killed replica {victim} at {first_attempt} bytes; attempts {wire.attempts}; served since {after}")
    assert PAUSE_AT <= first_attempt < KILLED_BYTES
    resumed = [offset for attempt, offset, _ in wire.chunks if attempt > 0]
    assert resumed[0] == first_attempt, (resumed[0], first_attempt)
    assert wire.bytes == progress[-1] == KILLED_BYTES, (wire.bytes, progress[-1])
    assert progress == sorted(progress)

    # Bit for bit what one undisturbed server gives.
    survivor = next(r for r in fleet.up)
    with Client(survivor.address) as one:
        reference = one.materialize([KILLED], seed=1101)["killed"]
    assert (got_shape, got_dtype) == (reference.shape, reference.dtype) == ((8192, 8192), np.float32)
    assert got_digest == digest(reference)


# -- (b) sessions through the balanced channel ------------------------------------------------------

DEFAULT = {"random_uniform": {"min": -1, "max": 1}}
BY_NAME_REQUESTS = [
    [Variable("embed", (512, 64), "random_normal")],
    [Variable("w1", (64, 256), "he_normal"), Variable("b1", (256,), "zeros")],
    [Variable("w2", (256, 64), "glorot_uniform")],
    [Variable("by_default", (32, 32))],  # the session's default initializer
    [Variable("ln", (64,), "ones"), Variable("head", (64, 1000), "lecun_normal")],
    [Variable("proj", (128, 128), "truncated_normal")],
]
SEQUENTIAL_REQUESTS = [
    [Variable("a", (64, 32), "he"), Variable("one", (8,), "ones"), Variable("b", (32,), "random_normal")],
    [Variable("c", (16, 16), "glorot_uniform"), Variable("own", (8,), "random_uniform", seed=9)],
    [Variable("d", (128,), "truncated_normal"), Variable("e", (4, 4), "lecun_normal")],
    [Variable("f", (256, 16))],  # the session's default initializer
]


def _through(client: Client, session, requests) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for request in requests:
        out.update(session.materialize(request))
    return out


def _one_server(fleet: Fleet, i: int, rng_mode: str, seed: int, requests) -> dict[str, np.ndarray]:
    """The same session and requests against replica `i` alone."""
    with (
        Client(fleet.replicas[i].address) as one,
        one.open_session(seed=seed, rng_mode=rng_mode, default_initializer=DEFAULT) as session,
    ):
        return _through(one, session, requests)


def _assert_same(got: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert list(got) == list(reference)
    different = [name for name in reference if not same_bytes(got[name], reference[name])]
    assert not different, f"bytes differ from one server's for {different}"


def test_sessions_through_the_balanced_channel_give_one_servers_bytes(fleet):
    with Client(fleet.target, **PATIENT) as client:
        assert client.balanced
        client.list_initializers()  # connects the channel; round_robin then has every replica ready
        # A by-name session: six requests, round_robin sends them to different replicas.
        before = fleet.served()
        with client.open_session(seed=4242, default_initializer=DEFAULT) as session:
            by_name = _through(client, session, BY_NAME_REQUESTS)
        by_name_spread = settled(fleet, before, len(BY_NAME_REQUESTS))
        # A sequential session: the client carries its position from request to request.
        before = fleet.served()
        with client.open_session(seed=77, rng_mode="sequential", default_initializer=DEFAULT) as session:
            sequential = _through(client, session, SEQUENTIAL_REQUESTS)
            assert session.next_position == 6  # a..f; "one" draws nothing, "own" has its own seed
        sequential_spread = settled(fleet, before, len(SEQUENTIAL_REQUESTS))
    print(f"by-name requests per replica {by_name_spread}, sequential {sequential_spread}")
    assert sum(n > 0 for n in by_name_spread) >= 2, f"the requests all went to one replica: {by_name_spread}"
    assert sum(n > 0 for n in sequential_spread) >= 2, f"the requests all went to one replica: {sequential_spread}"
    _assert_same(by_name, _one_server(fleet, 0, "by_name", 4242, BY_NAME_REQUESTS))
    _assert_same(sequential, _one_server(fleet, 1, "sequential", 77, SEQUENTIAL_REQUESTS))


# -- (c) every replica restarted ---------------------------------------------------------------------


def test_every_replica_restarted_the_same_session_ids_still_work(fleet):
    with Client(fleet.target, **PATIENT) as client:
        by_name = client.open_session(seed=5150, default_initializer=DEFAULT)
        before_restart = _through(client, by_name, BY_NAME_REQUESTS)
        sequential = client.open_session(seed=808, rng_mode="sequential", default_initializer=DEFAULT)
        first_half = _through(client, sequential, SEQUENTIAL_REQUESTS[:2])
        assert sequential.next_position == 3

        pids = [r.proc.pid for r in fleet.replicas]
        ports = list(fleet.ports)
        assert fleet.stop_all(signal.SIGTERM) == [0] * REPLICAS
        # A request made while no replica is up waits for them (the client's retry budget).
        during: dict = {}

        def in_the_outage() -> None:
            try:
                during["arrays"] = client.materialize(BY_NAME_REQUESTS[0], session=by_name)
            except BaseException as error:
                during["error"] = error

        waiting = threading.Thread(target=in_the_outage, daemon=True)
        waiting.start()
        fleet.start_all()
        assert fleet.ports == ports and not {r.proc.pid for r in fleet.replicas} & set(pids)
        waiting.join(JOIN_SECONDS)
        assert not waiting.is_alive() and "error" not in during, during.get("error")

        # The same client, the same ids: every replica is a new process that never saw them.
        again = _through(client, by_name, BY_NAME_REQUESTS)
        by_id = {}
        for request in BY_NAME_REQUESTS:
            by_id.update(client.materialize(request, session=by_name.id))
        second_half = _through(client, sequential, SEQUENTIAL_REQUESTS[2:])
        assert sequential.next_position == 6
    # And a new client holding only the id.
    with Client(fleet.target, **PATIENT) as fresh:
        new_client = {}
        for request in BY_NAME_REQUESTS:
            new_client.update(fresh.materialize(request, session=by_name.id))
    _assert_same(during["arrays"], {k: before_restart[k] for k in during["arrays"]})
    _assert_same(again, before_restart)
    _assert_same(by_id, before_restart)
    _assert_same(new_client, before_restart)
    _assert_same(before_restart, _one_server(fleet, 2, "by_name", 5150, BY_NAME_REQUESTS))
    _assert_same({**first_half, **second_half}, _one_server(fleet, 0, "sequential", 808, SEQUENTIAL_REQUESTS))


# -- (d) a rolling restart during several clients' 1 GiB fetches --------------------------------------

GIB = 1 << 30
KINDS = ["seed", "by_name", "sequential"]
"""The clients of the rolling restart: a plain seeded fetch, one in a by-name session and one in a
sequential session (after a first request of the session, so the 1 GiB variable is at position 2)."""
CLIENTS = len(KINDS)
SEEDS = [3101, 3102, 3103]
OPENING = [Variable("first", (64, 64), "he"), Variable("second", (64,), "random_normal")]
STAGE_AT = [GIB * (k + 1) // (REPLICAS + 1) for k in range(REPLICAS)]
"""Each client holds its stream at 1/4, 2/4 and 3/4 of its bytes until the k-th replica has been
drained and restarted: every client is mid-fetch during every restart."""


def gib_variable(seed: int) -> Variable:
    return Variable(f"gib{seed}", (16384, 16384), "random_normal")  # 1 GiB of float32


def _fetch_as(client: Client, kind: str, seed: int, progress=None, *, stream: bool = False):
    """(the opening request's arrays, the 1 GiB variable: its array, or its chunks if `stream`)."""
    opening: dict[str, np.ndarray] = {}
    session = None
    if kind != "seed":
        session = client.open_session(seed=seed, rng_mode=kind)
    if kind == "sequential":
        opening = session.materialize(OPENING)
        assert session.next_position == 2
    big = [gib_variable(seed)]
    if stream:
        return opening, client.iter_chunks(big, seed=seed if session is None else 0, session=session)
    arrays = client.materialize(big, seed=seed if session is None else 0, session=session, progress=progress)
    if kind == "sequential":
        assert session.next_position == 3
    return opening, next(iter(arrays.values()))


def reference(address: str, kind: str, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """One undisturbed server: the opening arrays and the SHA-256 of the 1 GiB variable, hashed as
    it streams."""
    sha, received = hashlib.sha256(), 0
    with Client(address) as one:
        opening, chunks = _fetch_as(one, kind, seed, stream=True)
        for chunk in chunks:
            sha.update(chunk.data)
            received += chunk.data.nbytes
    assert received == GIB
    return opening, sha.hexdigest()


@pytest.mark.slow
def test_a_rolling_restart_during_several_1_gib_fetches_loses_nothing(fleet):
    references = [reference(fleet.replicas[0].address, KINDS[c], SEEDS[c]) for c in range(CLIENTS)]
    reached = [[threading.Event() for _ in range(REPLICAS)] for _ in range(CLIENTS)]
    restarted = [threading.Event() for _ in range(REPLICAS)]
    wires = [Wire() for _ in range(CLIENTS)]
    progress: list[list[int]] = [[] for _ in range(CLIENTS)]
    results: list[dict] = [{} for _ in range(CLIENTS)]

    def fetch(c: int) -> None:
        def on_progress(got: int, total: int) -> None:
            progress[c].append(got)
            for k, at in enumerate(STAGE_AT):
                if got >= at and not restarted[k].is_set():
                    reached[c][k].set()
                    restarted[k].wait(240)

        try:
            with Client(fleet.target, **PATIENT, interceptors=[Faults(wires[c])]) as client:
                opening, array = _fetch_as(client, KINDS[c], SEEDS[c], on_progress)
                results[c]["opening"] = opening
                results[c]["digest"] = digest(array)
        except BaseException as error:
            results[c]["error"] = error
        finally:
            for event in reached[c]:
                event.set()  # a client that failed early must not hold the restarts

    threads = [threading.Thread(target=fetch, args=(c,), daemon=True) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    drained: list[tuple[int, int]] = []  # (replica, its streams in progress when the drain began)
    try:
        pending = list(range(REPLICAS))
        for k in range(REPLICAS):
            for c in range(CLIENTS):
                assert reached[c][k].wait(240), f"client {c} did not reach stage {k}"
            # Drain first the replica serving the most streams, so that streams are cut.
            active = fleet.active()
            victim = max(pending, key=lambda i: active[i])
            pending.remove(victim)
            log_path = fleet.replicas[victim].log_path
            assert fleet.stop(victim, signal.SIGTERM) == 0, fleet.logs(victim)[-4000:]
            draining = [r for r in log_records(log_path.read_text()) if r.get("msg") == "draining"]
            assert len(draining) == 1, "the replica logged no drain"
            drained.append((victim, draining[0]["active_streams"]))
            fleet.start(victim)  # on its port; returns once SERVING
            restarted[k].set()
    finally:
        for event in restarted:
            event.set()
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a fetch did not finish"
    errors = {KINDS[c]: repr(r["error"]) for c, r in enumerate(results) if "error" in r}
    assert not errors, f"clients gave up: {errors}"
    assert sorted(i for i, _ in drained) == list(range(REPLICAS))
    print(f"drained (replica, active streams): {drained}; attempts per client {[w.attempts for w in wires]}")
    for c, kind in enumerate(KINDS):
        opening, big = references[c]
        _assert_same(results[c]["opening"], opening)
        assert results[c]["digest"] == big, f"{kind}: the 1 GiB variable differs from one server's"
        # Each byte received once: the chunks that reached the client add up to 1 GiB exactly.
        assert progress[c][-1] == GIB, (kind, progress[c][-1])
        assert wires[c].bytes == GIB + sum(a.nbytes for a in opening.values()), (kind, wires[c].bytes)
    # The drains cut streams, and those clients resumed on other replicas.
    assert sum(streams for _, streams in drained) >= 1, drained
    assert max(wire.attempts for wire in wires) >= 2, [wire.attempts for wire in wires]
