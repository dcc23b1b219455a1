"""Sessions over a real server: by-name, sequential, defaults, expiry and closing."""

from __future__ import annotations

import time

import grpc
import numpy as np

from weightgen.server.engine import rng
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

from .helpers import engine_bytes, engine_initializer, fetch, first_response_error, init, rpc_error, var


def _open(stub, **kwargs) -> pb.Session:
    return stub.OpenSession(pb.OpenSessionRequest(**kwargs), timeout=30)


def test_by_name_session_is_its_seed(stub, engine):
    session = _open(stub, seed=4242)
    assert session.session_id and session.seed == 4242 and session.rng_mode == pb.RNG_MODE_BY_NAME
    assert session.default_dtype == pb.DTYPE_FLOAT32 and session.ttl_seconds > 0
    variables = [var("a", [16, 8], init(he={})), var("b", [5, 3], init(random_uniform={"min": -2, "max": 2}))]
    by_session = fetch(stub, pb.MaterializeRequest(session_id=session.session_id, variables=variables))
    by_seed = fetch(stub, pb.MaterializeRequest(seed=4242, variables=variables))
    for i, variable in enumerate(variables):
        assert by_session[i].info.seed == 4242
        assert bytes(by_session[i].data) == bytes(by_seed[i].data) == engine_bytes(engine, variable, 4242)
        assert not by_session[i].info.HasField("sequence_index")
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id)).sequence_length == 0


def test_session_seed_zero_picks_one(stub):
    session = _open(stub)
    assert session.seed != 0
    got = fetch(stub, pb.MaterializeRequest(session_id=session.session_id, variables=[var("w", [4], init(ones={}))]))
    assert got[0].info.seed == session.seed
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))


def _sequential_bytes(engine, variable: pb.VariableSpec, seed: int, position: int) -> bytes:
    from weightgen.server.engine import VariableSpec

    spec = VariableSpec(
        name=variable.name,
        shape=tuple(variable.shape),
        dtype=wire.dtype_name(variable.dtype or pb.DTYPE_FLOAT32),
        initializer=engine_initializer(variable.initializer),
    )
    prepared = engine.prepare(spec).keyed(seed, rng.sequential_key(seed, position), position)
    pieces = list(engine.stream(prepared))
    return np.concatenate(pieces).tobytes() if pieces else b""


def test_sequential_positions_advance_in_request_order(stub, engine):
    seed = 777
    session = _open(stub, seed=seed, rng_mode=pb.RNG_MODE_SEQUENTIAL)
    assert session.rng_mode == pb.RNG_MODE_SEQUENTIAL
    sid = session.session_id
    a = var("a", [10, 6], init(random_normal={"stddev": 1.0}))
    zeros = var("z", [3, 3], init(zeros={}))  # not random: takes no position
    c = var("c", [6, 10], init(glorot_uniform={}))
    first = fetch(stub, pb.MaterializeRequest(session_id=sid, variables=[a, zeros, c]))
    assert first[0].info.sequence_index == 0
    assert not first[1].info.HasField("sequence_index")
    assert first[2].info.sequence_index == 1
    assert bytes(first[0].data) == _sequential_bytes(engine, a, seed, 0)
    assert bytes(first[1].data) == bytes(9 * 4)
    assert bytes(first[2].data) == _sequential_bytes(engine, c, seed, 1)

    # The next request continues the sequence: the same spec under a new name is position 2, new values.
    a2 = var("a2", [10, 6], init(random_normal={"stddev": 1.0}))
    second = fetch(stub, pb.MaterializeRequest(session_id=sid, variables=[a2]))
    assert second[0].info.sequence_index == 2
    assert bytes(second[0].data) == _sequential_bytes(engine, a2, seed, 2) != bytes(first[0].data)

    # Re-fetching a position reproduces it (the key is the position's, not the name's) without advancing.
    again = var("a_again", [10, 6], init(random_normal={"stddev": 1.0}), sequence_index=0)
    refetched = fetch(stub, pb.MaterializeRequest(session_id=sid, variables=[again]))
    assert refetched[0].info.sequence_index == 0
    assert bytes(refetched[0].data) == bytes(first[0].data)
    d = var("d", [4], init(random_uniform={}))
    third = fetch(stub, pb.MaterializeRequest(session_id=sid, variables=[d]))
    assert third[0].info.sequence_index == 3
    assert bytes(third[0].data) == _sequential_bytes(engine, d, seed, 3)

    # A variable seed takes it out of the sequence: by-name values under that seed, no position.
    seeded = var("s", [4, 4], init(he={}), seed=31)
    out = fetch(stub, pb.MaterializeRequest(session_id=sid, variables=[seeded]))
    assert not out[0].info.HasField("sequence_index") and out[0].info.seed == 31
    assert bytes(out[0].data) == engine_bytes(engine, seeded, 0)

    closed = stub.CloseSession(pb.CloseSessionRequest(session_id=sid), timeout=30)
    assert closed.sequence_length == 4


def test_sequence_index_outside_a_sequential_session_is_invalid(stub):
    session = _open(stub, seed=1)
    request = pb.MaterializeRequest(
        session_id=session.session_id, variables=[var("w", [2], init(random_normal={}), sequence_index=0)]
    )
    error = first_response_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "variables[0]" in error.details() and "sequence_index" in error.details()
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))


def test_session_defaults_apply(stub, engine):
    default = pb.Initializer(random_uniform=pb.RandomUniform(min=-1.0, max=1.0))
    session = _open(stub, seed=55, default_initializer=default, default_dtype=pb.DTYPE_FLOAT64)
    assert session.default_initializer == default and session.default_dtype == pb.DTYPE_FLOAT64
    plain = var("plain", [6, 7])  # no initializer, no dtype: the session's
    own = var("own", [6, 7], init(ones={}), dtype=pb.DTYPE_INT8)  # its own
    got = fetch(stub, pb.MaterializeRequest(session_id=session.session_id, variables=[plain, own]))
    assert got[0].info.dtype == pb.DTYPE_FLOAT64 and got[0].info.byte_size == 6 * 7 * 8
    expected = engine_bytes(engine, var("plain", [6, 7], default), 55, pb.DTYPE_FLOAT64)
    assert bytes(got[0].data) == expected
    assert got[1].info.dtype == pb.DTYPE_INT8 and bytes(got[1].data) == b"\x01" * 42
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))


def test_session_without_default_initializer_still_needs_one(stub):
    session = _open(stub, seed=3)
    error = first_response_error(stub, pb.MaterializeRequest(session_id=session.session_id, variables=[var("x", [2])]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "variables[0] ('x')" in error.details() and "initializer" in error.details()
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))


def test_session_expires_after_its_ttl(stub):
    session = _open(stub, seed=8, ttl_seconds=1)
    assert session.ttl_seconds == 1 and session.expire_time.seconds > 0
    request = pb.MaterializeRequest(session_id=session.session_id, variables=[var("w", [2], init(ones={}))])
    fetch(stub, request)  # alive at first
    # Each use restarts the idle timer: wait longer than the TTL between tries, longer each time.
    deadline, pause = time.monotonic() + 60, 1.5
    while True:
        time.sleep(pause)
        try:
            fetch(stub, request)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            assert "session_id" in error.details()
            break
        assert time.monotonic() < deadline, "the session never expired"
        pause *= 2
    error = rpc_error(lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_ttl_above_the_maximum_is_invalid(stub):
    error = rpc_error(lambda: _open(stub, ttl_seconds=2**32 - 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "ttl_seconds" in error.details()


def test_open_session_refuses_bad_defaults(stub):
    error = rpc_error(lambda: _open(stub, default_dtype=99))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "default_dtype" in error.details()
    bad = pb.Initializer(random_normal=pb.RandomNormal(stddev=-1.0))
    error = rpc_error(lambda: _open(stub, default_initializer=bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "stddev" in error.details()
    error = rpc_error(lambda: _open(stub, rng_mode=7))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "rng_mode" in error.details()


def test_closing_revokes_nothing(stub):
    """A session is its signed id: the server holds nothing to free, and no replica can revoke an id
    for the others, so a closed id stays valid until it expires, everywhere alike (docs/determinism.md)."""
    session = _open(stub, seed=9)
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30).sequence_length == 0
    request = pb.MaterializeRequest(session_id=session.session_id, variables=[var("w", [2], init(ones={}))])
    assert fetch(stub, request)[0].info.seed == 9
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30).sequence_length == 0


def test_unknown_session_is_not_found(stub):
    request = pb.MaterializeRequest(session_id="no-such-session", variables=[var("w", [2], init(ones={}))])
    error = first_response_error(stub, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-session" in error.details()
    error = rpc_error(lambda: stub.CloseSession(pb.CloseSessionRequest(session_id="no-such-session"), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_session_and_seed_is_invalid(stub):
    session = _open(stub, seed=10)
    request = pb.MaterializeRequest(session_id=session.session_id, seed=10, variables=[var("w", [2], init(ones={}))])
    error = first_response_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "seed" in error.details()
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))


def test_first_chunk_of_a_sequential_stream_tells_every_position(stub):
    session = _open(stub, seed=9, rng_mode=pb.RNG_MODE_SEQUENTIAL)
    variables = [
        var("a", [300, 200], init(random_normal={"stddev": 1.0})),
        var("z", [3, 3], init(zeros={})),  # draws nothing: -1
        var("s", [4, 4], init(he={}), seed=31),  # its own seed: -1
        var("c", [6, 10], init(glorot_uniform={})),
    ]
    request = pb.MaterializeRequest(session_id=session.session_id, variables=variables, chunk_bytes=64 << 10)
    chunks = list(stub.Materialize(request, timeout=60))
    assert list(chunks[0].sequence_indexes) == [0, -1, -1, 1]
    assert all(not c.sequence_indexes for c in chunks[1:])
    by_name = list(stub.Materialize(pb.MaterializeRequest(seed=9, variables=variables), timeout=60))
    assert all(not c.sequence_indexes for c in by_name)
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=30)
