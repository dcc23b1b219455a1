"""The smallest end-to-end check: a real server answers a real Materialize."""

import hashlib

from weightgen.v1 import weightgen_pb2 as pb


def test_materialize_round_trip(stub):
    request = pb.MaterializeRequest(
        seed=7,
        variables=[pb.VariableSpec(name="w", shape=[64, 32], initializer=pb.Initializer(he=pb.He()))],
    )
    chunks = list(stub.Materialize(request, timeout=60))
    assert chunks[0].info.name == "w" and chunks[0].info.seed == 7 and chunks[0].info.generator == "weightgen/2"
    data = b"".join(c.data for c in chunks)
    assert len(data) == 64 * 32 * 4 == chunks[0].info.byte_size
    assert chunks[-1].last and chunks[-1].digest == hashlib.sha256(data).digest()
