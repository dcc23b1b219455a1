"""materialize_module on real CPU tensors writes the fetched bytes straight into their memory:
the same values as a module built on meta, the same storage, and no model-sized host buffer."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from client_helpers import same_bytes
from torch import nn

from weightgen.client import Client
from weightgen.client.torch import host_array, materialize_module


class Model(nn.Module):
    def __init__(self, vocab: int = 8192, width: int = 1024):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=3)  # 32 MiB in float32; its fixup zeroes row 3
        self.proj = nn.Linear(width, 256)
        self.norm = nn.LayerNorm(256)
        self.low = nn.Linear(256, 64).to(torch.bfloat16)
        self.steps = nn.BatchNorm1d(64)  # an int64 0-d buffer among them


def _bytes(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _reference(client, seed: int) -> dict[str, torch.Tensor]:
    """The same model built on meta and filled by weightgen: new tensors from fetched arrays, the
    path this change does not touch."""
    with torch.device("meta"):
        model = Model()
    return materialize_module(model, client, seed=seed).state_dict()


def test_a_real_cpu_module_is_filled_in_place_without_a_staging_copy(server, client):
    materialize_module(Model(8, 8), client, seed=1)  # imports (torch.distributed, sympy) out of the count
    model = Model()  # real CPU tensors, initialised by torch
    objects = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    before = {k: t.data_ptr() for k, t in model.state_dict().items()}
    largest = max(t.nbytes for t in model.state_dict().values())
    tracemalloc.start()
    try:  # 1 MiB chunks: the few gRPC holds at a time stay far below the embedding's 32 MiB
        with Client(server.address, chunk_bytes=1 << 20) as small:
            materialize_module(model, small, seed=17)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    state = model.state_dict()
    assert {**dict(model.named_parameters()), **dict(model.named_buffers())} == objects  # the same tensors
    assert {k: t.data_ptr() for k, t in state.items()} == before  # with the same storage: filled in place
    reference = _reference(client, 17)
    assert all(same_bytes(_bytes(state[k]), _bytes(reference[k])) for k in reference)
    assert not state["embed.weight"][3].any() and state["embed.weight"][4].any()  # the fixup ran on it
    # numpy's buffers are traced: a staging copy of the embedding alone would peak at 32 MiB.
    assert peak < largest // 2, f"peak {peak >> 20} MiB of Python/numpy allocations for a {largest >> 20} MiB tensor"


def test_strided_tensors_are_still_staged_and_filled(client):
    model = Model(vocab=64, width=32)
    model.proj.weight = nn.Parameter(torch.empty(32, 256).t())  # [256, 32], not contiguous
    assert host_array(model.proj.weight) is None and host_array(model.proj.bias) is not None
    pointer = model.proj.weight.data_ptr()
    materialize_module(model, client, seed=23)
    with torch.device("meta"):
        meta = Model(vocab=64, width=32)
    reference = materialize_module(meta, client, seed=23).state_dict()
    assert model.proj.weight.data_ptr() == pointer and not model.proj.weight.is_contiguous()
    state = model.state_dict()
    assert all(same_bytes(_bytes(state[k].contiguous()), _bytes(reference[k])) for k in reference)


def test_host_array_is_the_tensors_memory():
    bf16 = torch.zeros(3, 4, dtype=torch.bfloat16)
    view = host_array(bf16)
    assert view.dtype == np.int16 and view.shape == (3, 4)
    view[1, 2] = 0x3F80  # 1.0 in bfloat16
    assert bf16[1, 2].item() == 1.0
    assert host_array(torch.empty(2, 2, device="meta")) is None
    assert host_array(torch.zeros(2, dtype=torch.complex64).conj()) is None
