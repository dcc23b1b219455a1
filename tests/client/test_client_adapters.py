"""Torch and JAX adapters, and a client that runs where JAX cannot even be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
from client_helpers import same_bytes

from weightgen.client import Variable, to_jax, to_torch

VARIABLES = [
    Variable("w", (8, 4), "he", dtype="bfloat16"),
    Variable("b", (4,), "random_uniform", dtype="float16"),
    Variable("m", (3,), "ones", dtype="bool"),
    Variable("z", (2, 2), "random_normal(stddev=1)", dtype="complex64"),
    Variable("i", (5,), "constant(value=-3)", dtype="int32"),
]


def test_to_torch_keeps_every_bit(client):
    import torch  # in the dev extra

    arrays = client.materialize(VARIABLES, seed=2)
    tensors = to_torch(arrays)
    assert tensors["w"].dtype == torch.bfloat16 and tensors["w"].shape == (8, 4)
    assert tensors["b"].dtype == torch.float16 and tensors["m"].dtype == torch.bool
    assert tensors["z"].dtype == torch.complex64 and tensors["i"].dtype == torch.int32
    # bfloat16 by its bits: the same 2-byte patterns, and the same values once widened.
    assert tensors["w"].view(torch.int16).numpy().tobytes() == arrays["w"].tobytes()
    assert np.array_equal(tensors["w"].float().numpy(), arrays["w"].astype(np.float32))
    for name in "bmzi":
        assert tensors[name].numpy().tobytes() == arrays[name].tobytes()
    # On CPU the tensor shares the array's memory: no copy of the model.
    arrays["i"][0] = 11
    assert int(tensors["i"][0]) == 11


def test_to_jax_keeps_every_bit(client):
    import jax

    arrays = client.materialize(VARIABLES, seed=2)
    out = to_jax(arrays)
    assert out["w"].dtype == ml_dtypes.bfloat16 and isinstance(out["w"], jax.Array)
    assert all(same_bytes(np.asarray(out[k]), arrays[k]) for k in arrays)


def test_to_jax_refuses_to_narrow_64_bit_values():
    script = textwrap.dedent(
        """
        import numpy as np
        from weightgen.client import to_jax
        try:
            to_jax({"x": np.zeros(2, np.float64)})
        except ValueError as e:
            print("refused:", e)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "refused: float64 needs jax_enable_x64" in result.stdout, result.stderr


def test_the_client_runs_without_jax(server):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["jax"] = None  # any import of jax now fails
        from weightgen.client import Client, Variable
        with Client({server.address!r}) as client:
            arrays = client.materialize([Variable("w", (4, 3), "he_normal")], seed=5)
        assert arrays["w"].shape == (4, 3) and arrays["w"].std() > 0
        assert not [m for m in sys.modules if m.startswith(("weightgen.server", "jax"))
                    and sys.modules[m] is not None]
        print("ok", arrays["w"].tobytes().hex())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr
