"""Many replicas as one server: balanced targets, retries that span outages and restarts, sequential
sessions whose position travels with the client, and streams resumed on another replica."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
from client_helpers import BreakingProxy, same_bytes
from faultwire import Faults
from serverproc import launch
from service.helpers import wait_for

from weightgen.client import Client, Variable, errors
from weightgen.client.client import fleet_target
from weightgen.v1 import weightgen_pb2 as pb

WARM = ("--warm-precisions", "float32")
SESSION_KEYS = "# shared by both replicas\nfleet-test-session-key-0123456789-abcdefghijklmnopqrstuvwxyz\n"
MATERIALIZED = 'code="OK",method="Materialize"'
CHUNK = 64 << 10
BIG = Variable("big", (4096, 4096), "random_normal")  # 64 MiB of float32: a stream long enough to cut
BIG_BYTES = 4096 * 4096 * 4


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair(xla_cache, tmp_path_factory):
    """Two replicas that share the session keys: one fleet."""
    root = tmp_path_factory.mktemp("pair")
    keys = root / "session-keys"
    keys.write_text(SESSION_KEYS)
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(launch(root / name, *WARM, "--session-keys-file", str(keys), cache_dir=xla_cache))
        yield servers
    finally:
        for running in servers:
            running.stop()


def _served(servers) -> list[float]:
    return [s.metric("weightgen_requests_total", MATERIALIZED) for s in servers]


# -- targets and balancing ---------------------------------------------------------------------


def test_fleet_targets_and_refused_lists():
    assert fleet_target("localhost:50051") == ("localhost:50051", False)
    assert fleet_target("10.0.0.1:50051") == ("10.0.0.1:50051", False)
    assert fleet_target("ipv4:10.0.0.1:50051") == ("ipv4:10.0.0.1:50051", False)  # one address: nothing to balance
    assert fleet_target("ipv4:10.0.0.1:1,10.0.0.2:2") == ("ipv4:10.0.0.1:1,10.0.0.2:2", True)
    assert fleet_target("ipv6:[fd00::1]:1,[fd00::2]:2") == ("ipv6:[fd00::1]:1,[fd00::2]:2", True)
    assert fleet_target("dns:///weightgen-headless:50051") == ("dns:///weightgen-headless:50051", True)
    assert fleet_target("unix:/run/weightgen.sock") == ("unix:/run/weightgen.sock", False)
    # Lists without a scheme, when every entry is an IP literal with a port.
    assert fleet_target("10.0.0.1:1, 10.0.0.2:2") == ("ipv4:10.0.0.1:1,10.0.0.2:2", True)
    assert fleet_target("[fd00::1]:1,[fd00::2]:2") == ("ipv6:[fd00::1]:1,[fd00::2]:2", True)
    for bad in ("host1:50051,host2:50051", "10.0.0.1:1,[fd00::1]:2", "10.0.0.1,10.0.0.2", "10.0.0.1:1,", "::1:1,::2:2"):
        with pytest.raises(ValueError) as caught:
            fleet_target(bad)
        assert "ipv4:10.0.0.1:50051,10.0.0.2:50051" in str(caught.value) and "dns:///" in str(caught.value), bad
    with pytest.raises(ValueError, match="dns:///"):
        Client("localhost:50051,localhost:50052")
    with Client("10.0.0.1:1,10.0.0.2:2") as client:
        assert client.target == "ipv4:10.0.0.1:1,10.0.0.2:2" and client.balanced
    with Client("10.0.0.1:1") as client:
        assert not client.balanced
    for option in (("grpc.lb_policy_name", "pick_first"), ("grpc.service_config", '{"loadBalancingConfig": []}')):
        with Client("ipv4:10.0.0.1:1,10.0.0.2:2", options=[option]) as client:
            assert not client.balanced


def test_a_list_of_replicas_is_balanced_by_default(pair):
    listed = ",".join(s.address for s in pair)  # no scheme: read as ipv4:
    before = _served(pair)
    with Client(listed) as client:
        for seed in range(1, 9):
            client.materialize([Variable("x", (4,), "he")], seed=seed)
    wait_for(lambda: sum(_served(pair)) == sum(before) + 8, "the servers to count the calls")
    spread = [after - b for after, b in zip(_served(pair), before, strict=True)]
    assert min(spread) >= 1, spread  # round_robin: both replicas served
    # A policy of the caller's own wins: pick_first sends every call to the first address.
    before = _served(pair)
    with Client(f"ipv4:{listed}", options=[("grpc.lb_policy_name", "pick_first")]) as client:
        for seed in range(1, 5):
            client.materialize([Variable("x", (4,), "he")], seed=seed)
    wait_for(lambda: sum(_served(pair)) == sum(before) + 4, "the servers to count the calls")
    assert [after - b for after, b in zip(_served(pair), before, strict=True)] == [4, 0]


# -- sequential sessions: the position travels with the client -----------------------------------

BATCHES = [
    [Variable("a", (64, 32), "he"), Variable("one", (8,), "ones"), Variable("b", (32,), "random_normal")],
    [Variable("c", (16, 16), "glorot_uniform"), Variable("own", (8,), "random_uniform", seed=9)],
    [Variable("d", (128,), "truncated_normal"), Variable("e", (4, 4), "lecun_normal")],
]
ALL = [variable for batch in BATCHES for variable in batch]
POSITIONS = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}  # "one" draws nothing, "own" has its own seed


def _at_positions(variables, positions) -> pb.MaterializeRequest:
    """The variables with every random one at an explicit position: the values a session's
    requests must give, whoever served them."""
    specs = []
    for variable in variables:
        spec = variable.to_proto()
        if variable.name in positions:
            spec.sequence_index = positions[variable.name]
        specs.append(spec)
    return pb.MaterializeRequest(variables=specs)


def test_a_sequential_session_continues_on_any_replica(pair):
    a, b = pair
    with Client(a.address) as on_a, Client(b.address) as on_b, Client(f"ipv4:{a.address},{b.address}") as fleet:
        session = on_a.open_session(seed=31, rng_mode="sequential")
        assert session.next_position == 0
        sent = on_a.request(BATCHES[0], session=session)
        assert sent.HasField("sequence_start") and sent.sequence_start == 0
        tensors = list(session.stream(BATCHES[0]))  # on the replica that opened it
        assert session.next_position == 2
        # Another process continues it on the other replica, from the position it was handed.
        elsewhere = on_b.attach_session(session.message.SerializeToString(), next_position=session.next_position)
        assert on_b.request(BATCHES[1], session=elsewhere).sequence_start == 2
        tensors += elsewhere.stream(BATCHES[1])
        assert elsewhere.next_position == 3  # the variable with its own seed took no position
        # And through the balanced fleet, re-attached with resume_at.
        third = fleet.attach_session(session.message).resume_at(elsewhere.next_position)
        tensors += third.stream(BATCHES[2])
        assert third.next_position == 5
        # By id alone the client sends no position: only the replica that opened the session counts
        # them, and it never counted any (every request carried its own).
        with pytest.raises(errors.FailedPrecondition, match="sequence_start"):
            on_b.materialize(BATCHES[2], session=session.id)
        assert on_b.request(BATCHES[2], session=session.id).HasField("sequence_start") is False
        assert third.close() == 5  # the client's count: the servers keep none
        # The reference: one replica, every random variable at its position explicitly.
        with on_b.open_session(seed=31, rng_mode="sequential") as reference_session:
            reference = reference_session.materialize(_at_positions(ALL, POSITIONS))
    assert {t.name: t.info.sequence_index for t in tensors if t.info.HasField("sequence_index")} == POSITIONS
    assert [t.name for t in tensors] == [v.name for v in ALL]
    assert all(same_bytes(t.array, reference[t.name]) for t in tensors)


def test_positions_follow_requests_on_one_server(client):
    """Several requests of one session equal one request with explicit positions; by-name
    sessions send no position."""
    with client.open_session(seed=12, rng_mode="sequential") as session:
        got = {}
        for batch in BATCHES:
            got.update(session.materialize(batch))
        assert session.next_position == 5
        # Variables with an explicit position take none: the session does not move.
        again = session.materialize(_at_positions(BATCHES[0], POSITIONS))
        assert session.next_position == 5
        assert session.close() == 5
    with client.open_session(seed=12, rng_mode="sequential") as reference_session:
        reference = reference_session.materialize(_at_positions(ALL, POSITIONS))
        assert reference_session.next_position == 0
    assert got.keys() == reference.keys()
    assert all(same_bytes(got[k], reference[k]) for k in reference)
    assert all(same_bytes(again[k], reference[k]) for k in again)
    with client.open_session(seed=12) as by_name:
        assert not client.request(BATCHES[0], session=by_name).HasField("sequence_start")
        by_name.materialize(BATCHES[0])
        assert by_name.next_position == 0 and by_name.close() == 0
        with pytest.raises(ValueError, match="by name"):
            by_name.resume_at(3)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        session.resume_at(-1)


def test_a_resume_that_starts_over_keeps_the_position(server):
    """The first chunk (with the positions) is lost: the resumed request asks for the variables as
    before, so it must send the same sequence_start, or they would move."""
    batch = [Variable("p", (256, 256), "he"), Variable("q", (128, 128), "random_uniform")]
    seen = []

    def lose_the_first_chunk(attempt, chunk):
        if attempt == 0:
            return None  # cut before anything arrived
        seen.append((attempt, chunk.variable_index, chunk.offset))
        return chunk

    faults = Faults()
    with Client(server.address, chunk_bytes=CHUNK, interceptors=[faults]) as client:
        with client.open_session(seed=8, rng_mode="sequential") as session:
            session.materialize(BATCHES[0])  # positions 0 and 1
            client.backoff = 0.01
            faults.hook = lose_the_first_chunk
            resumed = list(session.stream(batch))
            faults.hook = None
            assert session.next_position == 4
        with client.open_session(seed=8, rng_mode="sequential") as reference_session:
            reference = reference_session.materialize(_at_positions(batch, {"p": 2, "q": 3}))
    assert seen[0] == (1, 0, 0)  # the resumed attempt asked for everything again
    assert [t.info.sequence_index for t in resumed] == [2, 3]
    assert all(same_bytes(t.array, reference[t.name]) for t in resumed)


# -- retries: a time budget, and waiting for a server ------------------------------------------


def test_retries_go_on_until_the_time_budget_is_spent(server):
    attempts = []

    def cut_everything(attempt, chunk):
        attempts.append(attempt)  # and return None: no progress, ever

    with Client(server.address, retry_seconds=1.5, interceptors=[Faults(cut_everything)]) as client:
        client.backoff = 0.01
        started = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            client.materialize([Variable("x", (64,), "he")], seed=1)
        waited = time.monotonic() - started
    assert waited >= 1.5  # not given up before the budget...
    assert len(attempts) > 4 and attempts == list(range(len(attempts)))  # ...nor after a count of attempts
    assert "retry_seconds=1.5" in caught.value.message


def test_a_retry_waits_for_a_server_to_come_back(server):
    """One retry allowed: it succeeds only because it waits (wait_for_ready) until an address
    that refused connections serves again, instead of failing fast."""
    port = free_port()
    results: dict[str, object] = {}

    def call(name, fn):
        try:
            with Client(f"127.0.0.1:{port}", retries=1, chunk_bytes=CHUNK) as client:
                client.backoff = 0.01
                results[name] = fn(client)
        except BaseException as e:
            results[name] = e

    threads = [
        threading.Thread(target=call, args=("unary", lambda c: c.list_initializers()), daemon=True),
        threading.Thread(
            target=call, args=("stream", lambda c: c.materialize([Variable("w", (256, 64), "he")], seed=3)), daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # both first attempts were refused: nothing listens on the port yet
    proxy = BreakingProxy(server.address, lambda n: None, port=port)
    try:
        for thread in threads:
            thread.join(120)
    finally:
        proxy.close()
    assert not any(t.is_alive() for t in threads)
    assert isinstance(results["unary"], pb.ListInitializersResponse), results["unary"]
    assert isinstance(results["stream"], dict), results["stream"]
    with Client(server.address) as client:
        reference = client.materialize([Variable("w", (256, 64), "he")], seed=3)
    assert same_bytes(results["stream"]["w"], reference["w"])


def test_unary_calls_give_up_when_the_budget_is_spent():
    port = free_port()
    with Client(f"127.0.0.1:{port}", retry_seconds=1) as client:
        client.backoff = 0.01
        for call in (client.list_initializers, lambda: client.open_session(seed=1)):
            started = time.monotonic()
            with pytest.raises(errors.Unavailable) as caught:
                call()
            assert time.monotonic() - started >= 1  # it kept waiting for a server for the whole budget
            assert "retry_seconds=1" in caught.value.message


def _pause_at(at_chunk: int, seen: list, paused: threading.Event, release: threading.Event):
    """A fault hook that records (attempt, offset, size) of every chunk and holds the stream at
    chunk number `at_chunk` of the first attempt until `release` is set."""

    def hook(attempt, chunk):
        seen.append((attempt, chunk.offset, chunk.data.nbytes))
        if attempt == 0 and len(seen) == at_chunk:
            paused.set()
            release.wait(120)
        return chunk

    return hook


def test_a_restart_and_its_warm_up_are_retried_by_default(start_server):
    server = start_server(*WARM)
    port = server.port
    seen: list[tuple[int, int, int]] = []
    paused, killed = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def fetch() -> None:
        try:
            hook = _pause_at(4, seen, paused, killed)
            with Client(server.address, chunk_bytes=1 << 20, interceptors=[Faults(hook)]) as client:  # default budget
                results["array"] = client.materialize([BIG], seed=17)["big"]
        except BaseException as e:
            results["array"] = e

    def open_session() -> None:
        try:
            with Client(server.address) as client:
                results["session"] = client.open_session(seed=5, rng_mode="sequential")
        except BaseException as e:
            results["session"] = e

    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()
    assert paused.wait(120), "the fetch did not start"
    server.stop(signal.SIGKILL)
    killed.set()
    opener = threading.Thread(target=open_session, daemon=True)
    opener.start()  # a unary call during the outage
    time.sleep(2)  # an outage longer than the three quick retries of old
    restarted = start_server(*WARM, "--port", str(port))
    fetcher.join(300)
    opener.join(300)
    assert not fetcher.is_alive() and not opener.is_alive()
    session = results["session"]
    assert not isinstance(session, BaseException), session
    assert session.seed == 5 and session.sequential
    array = results["array"]
    assert not isinstance(array, BaseException), array
    with Client(restarted.address, chunk_bytes=1 << 20) as client:
        reference = client.materialize([BIG], seed=17)["big"]
    assert same_bytes(array, reference)
    before = sum(size for attempt, _, size in seen if attempt == 0)
    assert (4 << 20) <= before < BIG_BYTES
    assert next(offset for attempt, offset, _ in seen if attempt > 0) == before
    assert sum(size for *_, size in seen) == BIG_BYTES


def test_a_stream_cut_on_one_replica_resumes_on_another(start_server):
    servers = [start_server(*WARM) for _ in range(2)]
    seen: list[tuple[int, int, int]] = []
    paused, killed = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def fetch() -> None:
        try:
            target = f"ipv4:{servers[0].address},{servers[1].address}"
            faults = Faults(_pause_at(4, seen, paused, killed))
            with Client(target, chunk_bytes=1 << 20, interceptors=[faults]) as client:
                assert client.balanced
                client.backoff = 0.01
                results["array"] = client.materialize([BIG], seed=23)["big"]
        except BaseException as e:
            results["array"] = e

    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()
    assert paused.wait(120), "the fetch did not start"
    serving = [s for s in servers if s.metric("weightgen_active_streams") == 1]
    assert len(serving) == 1, [s.metric("weightgen_active_streams") for s in servers]
    victim = serving[0]
    survivor = servers[1 - servers.index(victim)]
    streamed = survivor.metric("weightgen_bytes_streamed_total")
    victim.stop(signal.SIGKILL)
    killed.set()
    fetcher.join(300)
    assert not fetcher.is_alive(), "the fetch did not finish"
    array = results["array"]
    assert not isinstance(array, BaseException), array
    # Nothing fetched twice: the resumed request started at the first byte the client lacked...
    before = sum(size for attempt, _, size in seen if attempt == 0)
    assert (4 << 20) <= before < BIG_BYTES
    assert next(offset for attempt, offset, _ in seen if attempt > 0) == before
    assert sum(size for *_, size in seen) == BIG_BYTES
    # ...and the other replica sent exactly the rest.
    wait_for(
        lambda: survivor.metric("weightgen_bytes_streamed_total") - streamed == BIG_BYTES - before,
        "the survivor to count the bytes it sent",
    )
    with Client(survivor.address, chunk_bytes=1 << 20) as client:
        reference = client.materialize([BIG], seed=23)["big"]
    assert same_bytes(array, reference)


def test_a_draining_replica_gets_no_new_calls(start_server):
    """The balanced client asks each replica's health service and sends new calls only to SERVING
    ones: while one replica drains (a held stream keeps it draining), every new call goes to the
    other, and none is first refused with UNAVAILABLE and retried."""
    draining = start_server(*WARM, "--grace-seconds", "120")
    serving = start_server(*WARM)
    pair_ = [draining, serving]
    unavailable = 'code="UNAVAILABLE",method="Materialize"'
    with Client(draining.address) as holder:
        held = holder.iter_chunks([BIG], seed=1)
        next(held)  # a stream in flight: the drain waits for it
        draining.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: '"draining"' in draining.log(), "the replica to drain")
        before = _served(pair_)
        with Client(f"ipv4:{draining.address},{serving.address}") as client:
            for seed in range(1, 11):
                client.materialize([Variable("x", (4,), "he")], seed=seed)
        wait_for(lambda: sum(_served(pair_)) == sum(before) + 10, "the servers to count the calls")
        assert [after - b for after, b in zip(_served(pair_), before, strict=True)] == [0, 10]
        assert draining.metric("weightgen_requests_total", unavailable) == 0, "a call reached the draining replica"
        held.close()
    assert draining.proc.wait(60) == 0
