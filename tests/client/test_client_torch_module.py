"""PyTorch modules built on the meta device, filled by weightgen: whole, and as local shards."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from client_helpers import same_bytes
from torch import nn

from weightgen.client import Variable
from weightgen.client.sharding import as_index, rank_shards
from weightgen.client.torch import RuleOverrideWarning, explain_table, materialize_module, module_variables


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 12, padding_idx=3)
        self.conv = nn.Conv2d(3, 8, 3, groups=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(12, 20)
        self.ln = nn.LayerNorm(20)
        self.low = nn.Linear(20, 6).to(torch.bfloat16)
        self.head = nn.Linear(12, 40, bias=False)
        self.head.weight = self.embed.weight  # tied


def meta_net() -> Net:
    with torch.device("meta"):
        net = Net()
    net.fc.bias.requires_grad_(False)
    return net


def numpy_of(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def direct(client, variables: dict[str, Variable], seed: int) -> dict[str, np.ndarray]:
    arrays = client.materialize(list(variables.values()), seed=seed)
    return {k: (a.view(np.int16) if a.dtype.name == "bfloat16" else a) for k, a in arrays.items()}


def test_a_meta_module_filled_by_weightgen(client):
    net = materialize_module(meta_net(), client, seed=21)
    state = net.state_dict()
    assert not [name for name, t in state.items() if t.is_meta]
    assert all(type(p) is nn.Parameter for p in net.parameters())
    assert not net.fc.bias.requires_grad and net.fc.weight.requires_grad
    assert net.head.weight is net.embed.weight  # still tied: one tensor
    assert net.low.weight.dtype == torch.bfloat16 and net.low.bias.dtype == torch.bfloat16
    assert state["bn.num_batches_tracked"].dtype == torch.int64 and state["bn.num_batches_tracked"].shape == ()

    # Values: what a direct fetch of the mapped variables gives, byte for byte.
    variables = module_variables(meta_net(), preset="torch")
    assert "head.weight" not in variables  # the tied tensor is fetched once, under its first key
    expected = direct(client, variables, 21)
    expected["embed.weight"][3] = 0  # reset_parameters zeroes the padding row; so does the preset
    for key, want in expected.items():
        assert same_bytes(numpy_of(state[key]), want), key
    assert same_bytes(numpy_of(state["head.weight"]), expected["embed.weight"])

    # The rule table: PyTorch's reset_parameters distributions.
    for name, fan in [("fc", 12), ("conv", 27), ("low", 20)]:
        bound = 1 / math.sqrt(fan)
        for kind in ("weight", "bias"):
            values = state[f"{name}.{kind}"].float()
            assert values.abs().max() <= bound and values.abs().max() > 0.5 * bound, (name, kind)
        spec = variables[f"{name}.weight"].to_proto().initializer
        assert spec.kaiming_uniform.a == pytest.approx(math.sqrt(5))
        assert spec.fan_axes.layout == 2  # channels_first
        bias = variables[f"{name}.bias"].to_proto().initializer.random_uniform
        assert (bias.min, bias.max) == (-bound, bound)
    assert state["embed.weight"].std() == pytest.approx(1, abs=0.15)
    assert torch.equal(state["ln.weight"], torch.ones(20)) and torch.equal(state["ln.bias"], torch.zeros(20))
    assert torch.equal(state["bn.running_mean"], torch.zeros(8)) and torch.equal(state["bn.running_var"], torch.ones(8))
    assert torch.equal(state["bn.weight"], torch.ones(8)) and torch.equal(state["bn.bias"], torch.zeros(8))
    out = net.fc(torch.ones(2, 12))  # a real, working module
    assert out.shape == (2, 20) and torch.isfinite(out).all()


def test_presets_and_rules(client):
    variables = module_variables(meta_net(), preset="weightgen")
    fc = variables["fc.weight"].to_proto().initializer
    assert fc.truncated_normal.stddev == 0.02 and variables["fc.bias"].to_proto().initializer.HasField("zeros")
    rules = {"fc.*": "zeros", (nn.Conv2d, "weight"): "he_normal", "embed.weight": "random_normal(stddev=0.5)"}
    net = materialize_module(meta_net(), client, seed=4, rules=rules, preset="weightgen")
    assert not net.fc.weight.any() and not net.fc.bias.any()
    with pytest.warns(RuleOverrideWarning, match=r"fc\.bias by rules\['fc\.\*'\] \(instead of preset torch"):
        conv = module_variables(meta_net(), rules=rules)["conv.weight"].to_proto().initializer
    assert conv.HasField("he_normal") and conv.fan_axes.layout == 2  # PyTorch's layout by default
    assert float(net.embed.weight.detach().std()) == pytest.approx(0.5, rel=0.2)
    assert net.low.bias.dtype == torch.bfloat16 and not net.low.bias.any()

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(4))

    with torch.device("meta"):
        custom = Custom()
    with pytest.raises(ValueError, match=r"no initializer rule for scale \(Custom.scale, \[4\]\)"):
        materialize_module(custom, client, seed=1)
    filled = materialize_module(custom, client, seed=1, rules=[(lambda p: p.name == "scale", "ones")])
    assert torch.equal(filled.scale.data, torch.ones(4))
    with pytest.raises(ValueError, match="preset"):
        materialize_module(meta_net(), client, seed=1, preset="jax")


def test_local_shards_are_slices_of_the_whole_module(client):
    whole = materialize_module(meta_net(), client, seed=8).state_dict()
    for world in (2, 3):
        for rank in range(world):
            plan = rank_shards({"embed.weight": 0, "fc.weight": 1, "conv.weight": 0, "fc.bias": 0}, rank, world)
            net = meta_net()
            shards = materialize_module(net, client, seed=8, shard=plan)
            assert all(p.is_meta for p in net.parameters())  # the module itself is left alone
            assert shards.keys() == whole.keys()
            for key, shard in shards.items():
                ranges = plan(key if key != "head.weight" else "embed.weight", tuple(whole[key].shape))
                want = whole[key] if ranges is None else whole[key][as_index(ranges)]
                assert torch.equal(shard, want), key
            assert shards["head.weight"] is shards["embed.weight"]
    # The mapping form: key -> (axis, rank, world), or a slice.
    shards = materialize_module(meta_net(), client, seed=8, shard={"fc.weight": (0, 1, 3), "ln.*": [(5, 20)]})
    assert torch.equal(shards["fc.weight"], whole["fc.weight"][7:14])
    assert torch.equal(shards["ln.bias"], whole["ln.bias"][5:])


def test_explain_names_the_rule_of_every_tensor_and_globs_that_override_say_so():
    rules = {"*.weight": "he_normal", (nn.Linear, "bias"): "zeros"}
    with pytest.warns(RuleOverrideWarning) as caught:
        choices = module_variables(meta_net(), rules=rules, preset="torch", explain=True)
    message = str(caught[0].message)
    # The norms' ones and the padding row would be lost to "*.weight": each is named.
    for key in ("ln.weight", "bn.weight", "embed.weight"):
        assert key in message, message
    assert "padding row 3 zeroed" in message and "a norm's scale: ones" in message
    assert list(choices) == list(meta_net().state_dict())  # every tensor, tied ones included
    assert choices["fc.weight"].source == "rules['*.weight']" and not choices["fc.weight"].overrides
    assert choices["ln.weight"].overrides.startswith("preset torch (")
    assert choices["fc.bias"].source == "rules[(Linear, 'bias')]"  # exact: no warning about it
    assert choices["ln.bias"].source.startswith("preset torch (") and "zeros" in str(choices["ln.bias"])
    assert choices["head.weight"].tied == "embed.weight" and choices["head.weight"].variable is None
    text = explain_table(choices)
    assert len(text.splitlines()) == len(choices) and "= embed.weight (tied)" in text

    # A glob that asks for what the preset does anyway is not an override.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module_variables(meta_net(), rules={"*.bias": "zeros"}, preset="weightgen")


class Rotary(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("inv_freq", torch.arange(2, dtype=torch.float32), persistent=False)


def test_real_tensors_are_filled_in_place_and_computed_buffers_are_left(client):
    # Persistence is read from nn.Module's private _non_persistent_buffers_set (state_dict() would
    # run hooks, collectives on some parallel models): if torch renames it, this fails first.
    assert Rotary()._non_persistent_buffers_set == {"inv_freq"}
    model = Rotary()  # real, not meta
    weight, buffer = model.proj.weight, model.inv_freq
    materialize_module(model, client, seed=5)
    assert model.proj.weight is weight  # the same Parameter, its values overwritten
    want = client.materialize([module_variables(Rotary())["proj.weight"]], seed=5)["proj.weight"]
    assert same_bytes(numpy_of(model.proj.weight), want)
    assert model.inv_freq is buffer and torch.equal(buffer, torch.arange(2, dtype=torch.float32))
    assert "inv_freq" not in module_variables(Rotary())
    with torch.device("meta"):
        meta = Rotary()
    materialize_module(meta, client, seed=5)  # no rule needed for a non-persistent buffer
    assert meta.inv_freq.is_meta and not meta.proj.weight.is_meta
