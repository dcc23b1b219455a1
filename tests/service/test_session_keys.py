"""Sessions across processes: an id is the session signed with the fleet's key, so any server
holding the key serves it (restarts included), one without it answers NOT_FOUND, and a sequential
session works anywhere when the client carries its position (sequence_start)."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

from .helpers import fetch, first_response_error, init, var

MODEL = [
    var("embed", [64, 16], init(random_normal={"stddev": 0.02})),
    var("bias", [16], init(zeros={})),  # not random: takes no position in a sequential session
    var("proj", [16, 32], init(he_normal={})),
    var("by_default", [8, 8]),  # the session's default initializer
]
DEFAULT = init(random_uniform={"min": -1, "max": 1})


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[str, str]:
    """Two key files: the fleet's, and another fleet's."""
    folder = tmp_path_factory.mktemp("keys")
    paths = []
    for name in ("fleet", "other"):
        path = folder / name
        path.write_text(f"# weightgen session keys (test)\n{secrets.token_urlsafe(32)}\n")
        paths.append(str(path))
    return paths[0], paths[1]


def _stub(server) -> tuple[grpc.Channel, weightgen_pb2_grpc.WeightGenStub]:
    channel = grpc.insecure_channel(server.address)
    return channel, weightgen_pb2_grpc.WeightGenStub(channel)


def _bytes(stub, request: pb.MaterializeRequest) -> list[tuple[bytes, int]]:
    got = fetch(stub, request)
    return [
        (bytes(got[i].data), got[i].info.sequence_index if got[i].info.HasField("sequence_index") else -1)
        for i in range(len(request.variables))
    ]


def test_a_session_travels_between_servers_sharing_the_key(start_server, keys):
    fleet, other = keys
    a = start_server("--session-keys-file", fleet, "--warm-precisions", "float32")
    b = start_server("--session-keys-file", fleet, "--warm-precisions", "float32")
    stranger = start_server("--session-keys-file", other, "--warm-precisions", "float32")
    (ca, sa), (cb, sb), (cs, ss) = _stub(a), _stub(b), _stub(stranger)
    with ca, cb, cs:
        session = sa.OpenSession(pb.OpenSessionRequest(seed=0, default_initializer=DEFAULT), timeout=30)
        request = pb.MaterializeRequest(session_id=session.session_id, variables=MODEL)
        on_a = _bytes(sa, request)
        assert _bytes(sb, request) == on_a, "another replica gives the same bytes"
        # A server with another key cannot verify the id: NOT_FOUND, saying why.
        error = first_response_error(ss, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        assert "signed with a key this server does not hold" in error.details(), error.details()
        # A restart (a new process, the same key file) keeps the session.
        port = a.port
        assert a.stop() == 0
        restarted = start_server("--session-keys-file", fleet, "--port", str(port), "--warm-precisions", "float32")
        cr, sr = _stub(restarted)
        with cr:
            assert _bytes(sr, request) == on_a


def test_a_sequential_session_across_servers_with_the_client_carrying_its_position(start_server, keys):
    fleet, _ = keys
    a = start_server("--session-keys-file", fleet, "--warm-precisions", "float32")
    b = start_server("--session-keys-file", fleet, "--warm-precisions", "float32")
    (ca, sa), (cb, sb) = _stub(a), _stub(b)
    with ca, cb:
        opened = pb.OpenSessionRequest(seed=77, rng_mode=pb.RNG_MODE_SEQUENTIAL, default_initializer=DEFAULT)
        # One server, the position counted by the server that opened the session: the reference.
        reference_session = sa.OpenSession(opened, timeout=30)
        first, second = MODEL[:2], MODEL[2:]
        ref_first = _bytes(sa, pb.MaterializeRequest(session_id=reference_session.session_id, variables=first))
        ref_second = _bytes(sa, pb.MaterializeRequest(session_id=reference_session.session_id, variables=second))
        assert [p for _, p in ref_first + ref_second] == [0, -1, 1, 2]
        # The same session opened again (same seed): each request carries its position, and the two
        # requests go to different servers; the bytes are the reference's.
        session = sa.OpenSession(opened, timeout=30)
        got_first = _bytes(sb, pb.MaterializeRequest(session_id=session.session_id, variables=first, sequence_start=0))
        got_second = _bytes(
            sa, pb.MaterializeRequest(session_id=session.session_id, variables=second, sequence_start=1)
        )
        assert got_first + got_second == ref_first + ref_second
        # Without its position, a server that did not open the session refuses clearly.
        error = first_response_error(sb, pb.MaterializeRequest(session_id=session.session_id, variables=second))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert error.details().startswith("sequence_start: "), error.details()
        # The server that opened it still counts for clients that do not carry positions.
        assert (
            sa.CloseSession(pb.CloseSessionRequest(session_id=reference_session.session_id), timeout=30).sequence_length
            == 3
        )


def test_key_rotation_and_bad_key_files(start_server, keys, tmp_path):
    """Rotation: a server whose file holds a new key first and the old one after signs with the new
    one and still verifies ids signed with the old; bad key files stop the server at start-up."""
    fleet, other = keys
    old = start_server("--session-keys-file", fleet, "--warm-precisions", "float32")
    rotated_file = tmp_path / "rotated"
    rotated_file.write_text(Path(other).read_text() + Path(fleet).read_text())  # new (other's) first, then the old
    rotated = start_server("--session-keys-file", str(rotated_file), "--warm-precisions", "float32")
    (co, so), (cr, sr) = _stub(old), _stub(rotated)
    with co, cr:
        old_id = so.OpenSession(pb.OpenSessionRequest(seed=5), timeout=30).session_id
        new_id = sr.OpenSession(pb.OpenSessionRequest(seed=5), timeout=30).session_id
        request = pb.MaterializeRequest(variables=MODEL[:1])
        request.session_id = old_id
        assert _bytes(sr, request) == _bytes(so, request)  # the old key still verifies
        request.session_id = new_id
        assert first_response_error(so, request).code() == grpc.StatusCode.NOT_FOUND  # the old fleet lacks the new key
        assert old_id.split(".")[1] != new_id.split(".")[1], "new sessions name the new key"
    short = tmp_path / "short"
    short.write_text("too-short\n")
    for path, says in ((short, "shorter than 32"), (tmp_path / "missing", "No such file")):
        with pytest.raises(AssertionError) as failed:
            start_server("--session-keys-file", str(path), "--warm-precisions", "float32")
        assert says in str(failed.value), str(failed.value)[-500:]
