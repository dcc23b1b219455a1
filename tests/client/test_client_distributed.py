"""The distributed example: torchrun ranks (gloo, CPU) fetch only their shards, and world sizes
1, 2 and 4 assemble the same model, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightgen.client import Client

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "distributed"


@pytest.fixture
def torch_ranks(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import torch_ranks

    return torch_ranks


@pytest.mark.slow
def test_world_sizes_1_2_and_4_assemble_the_same_model(server, tmp_path, torch_ranks):
    # World size 1: this process, one whole fetch of the meta model.
    with Client(server.address, timeout=120) as client:
        model = torch_ranks.fetch(client, torch_ranks.meta_model("small"), "small", seed=42)
    single = torch_ranks.state_digest(model.state_dict())

    # World sizes 2 and 4: torchrun, each rank fetching its tensor-parallel shards.
    out = tmp_path / "worlds.json"
    command = [sys.executable, str(EXAMPLES / "run_world_sizes.py"), "--server", server.address]
    command += ["--world-sizes", "2,4", "--small", "--seed", "42", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = json.loads(out.read_text())
    assert [s["world"] for s in summaries] == [2, 4]
    for s in summaries:
        assert s["identical"], s  # rank 0: the all-gathered model equals a single-process fetch
        assert s["digest"] == single, s
        # Only the layer norms and row-parallel biases are replicated: about 1x the model in total.
        assert s["model_bytes"] <= s["fetched_bytes"] < 1.05 * s["model_bytes"]
    assert "every world size gives the same model: True" in result.stdout
