"""Run under torchrun (one rank is enough): what materialize_module refuses on DTensor models, as
JSON {case: error message} written by rank 0 to the file named by the second argument."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial
from torch.distributed.tensor.placement_types import _StridedShard

from weightgen.client import Client
from weightgen.client.torch import materialize_module


def model(mesh, *, meta: bool) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6))
    fully_shard(net, mesh=mesh)
    if not meta:
        net.to_empty(device="cpu")
    return net


def refusal(call) -> str:
    try:
        call()
    except ValueError as error:
        return str(error)
    return "accepted"


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    with Client(sys.argv[1], timeout=60) as client:
        out = {
            "meta": refusal(lambda: materialize_module(model(mesh, meta=True), client, seed=3)),
            "shard": refusal(lambda: materialize_module(model(mesh, meta=False), client, seed=3, shard={"*": None})),
        }
        partial = nn.Linear(4, 4, bias=False)
        local = torch.empty(4, 4)
        partial.weight = nn.Parameter(DTensor.from_local(local, mesh, [Partial()], run_check=False))
        out["partial"] = refusal(lambda: materialize_module(partial, client, seed=3))
        # torchtitan's spmd_types backend: a plain tensor of the local shape, typed Varying over the group.
        import spmd_types
        from spmd_types.types import V

        typed = nn.Linear(4, 3, bias=False)
        spmd_types.assert_local_type(typed.weight, {spmd_types.MeshAxis.of(dist.group.WORLD): V})
        out["spmd_types"] = refusal(lambda: materialize_module(typed, client, seed=3))
        if dist.get_world_size() == 2:
            # Strided and then nothing: rank 0 holds rows 0, 1, 4, 5 of 8, not one block.
            strided = nn.Linear(2, 8, bias=False)
            placement = _StridedShard(0, split_factor=2)
            value = DTensor.from_local(torch.empty(4, 2), mesh, [placement], shape=(8, 2), stride=(2, 1))
            strided.weight = nn.Parameter(value)
            out["strided"] = refusal(lambda: materialize_module(strided, client, seed=3))
    if dist.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
