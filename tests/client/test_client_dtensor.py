"""The headline: a Llama-style model parallelised with FSDP2 and tensor parallelism (torchrun, gloo,
CPU) at world sizes 1, 2 and 4, filled by weightgen shard by shard, gathered with
get_model_state_dict(full_state_dict=True), is bit-identical to the single-process fill of the
plain model in every configuration; each parameter stays the DTensor it was; and the bytes the
server sent are one model plus what the mesh replicates, not world-size models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchrun import torchrun

from weightgen.client import Client

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "distributed" / "llama_dtensor.py"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import llama_dtensor
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return llama_dtensor


@pytest.mark.slow
def test_every_world_size_and_mesh_fills_the_same_model(server, tmp_path, llama):
    config = llama.LlamaConfig()
    with Client(server.address, timeout=120) as client:
        reference = {k: v.contiguous() for k, v in llama.reference(client, config, 42).items()}
    assert reference["output.weight"].std() > 0 and torch.equal(reference["norm.weight"], torch.ones(config.dim))
    save_file(reference, tmp_path / "reference.safetensors")

    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    summaries = {}
    for ranks, meshes in ((1, "1x1"), (2, "1x2,2x1"), (4, "2x2,4x1,1x4")):
        out = tmp_path / f"world{ranks}.json"
        args = ["--server", server.address, "--seed", "42", "--meshes", meshes]
        args += ["--reference", str(tmp_path / "reference.safetensors"), "--metrics", metrics, "--json", str(out)]
        torchrun(ranks, EXAMPLE, *args)
        for s in json.loads(out.read_text())["meshes"]:
            summaries[s["mesh"]] = s
    assert sorted(summaries) == ["1x1", "1x2", "1x4", "2x1", "2x2", "4x1"]

    for mesh, s in summaries.items():
        assert s["identical"], (mesh, s["differ"])  # the gathered model, bit for bit
        assert s["all_dtensors"] and s["kept_type"] and s["kept_storage"], s  # filled in place
        assert s["torch_sharding_mismatches"] == 0, s  # each rank holds torch's own shard of the reference
        assert s["server_bytes"] == s["expected_bytes"], s  # exactly each rank's blocks, nothing more
        tp = int(mesh.split("x")[1])
        if tp == 1:
            assert s["expected_bytes"] == s["model_bytes"], s  # FSDP only: one model in all
        else:
            # Tensor parallel replicates the norms over tp ranks, and only them.
            norms = sum(v.numel() * v.element_size() for k, v in reference.items() if "norm" in k)
            assert s["expected_bytes"] == s["model_bytes"] + (tp - 1) * norms, s
    # The meshes made what the test is about: FSDP's shards of tensor-parallel shards, uneven splits.
    both = summaries["2x2"]["placements"]
    assert both["layers.0.attention.wq.weight"] == "(_StridedShard(dim=0, sf=2), Shard(dim=0))"
    assert both["layers.0.attention.wo.weight"] == "(Shard(dim=0), Shard(dim=1))"
    assert both["layers.0.ffn_norm.weight"] == "(Shard(dim=0), Replicate())"
    assert config.vocab_size % 4 and config.hidden_dim % 4  # uneven over 4 ranks


@pytest.mark.slow
def test_what_cannot_be_filled_in_place_is_refused(server, tmp_path):
    torchrun(2, Path(__file__).with_name("dtensor_refusals.py"), server.address, str(tmp_path / "refused.json"))
    refused = json.loads((tmp_path / "refused.json").read_text())
    assert "DTensor on the meta device: call model.to_empty(device=...)" in refused["meta"], refused
    assert refused["meta"].startswith("0.weight is a DTensor"), refused
    assert "drop shard=" in refused["shard"], refused
    assert refused["partial"].startswith("weight: a DTensor with Partial placements ("), refused
    assert refused["strided"].startswith("weight: the local shard of this DTensor"), refused
    assert refused["spmd_types"].startswith("weight is a local shard typed by spmd_types"), refused
    assert "is not one block of the global tensor: _StridedShard(dim=0, sf=2) on mesh axis 0" in refused["strided"]
