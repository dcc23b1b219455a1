"""Hugging Face models filled with their family's own init (preset hf), against the real server, and
seed checkpoints made from a config file alone.

Each family's expected distributions are written here from transformers' ``_init_weights`` source
(not from weightgen.client.hf), and checked on transformers' own initialisation as well as on
weightgen's: the table is right about transformers, and weightgen follows it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from test_client_cli import weightgen as run_cli
from torch import nn
from transformers.pytorch_utils import Conv1D

from weightgen.client import Variable, cli, read_manifest
from weightgen.client.files import read_header
from weightgen.client.hf import FAMILIES, fetch_seed_checkpoint, seed_checkpoint
from weightgen.client.specfile import SpecFileError, load_spec, read_spec
from weightgen.client.torch import RuleOverrideWarning, materialize_module, module_variables
from weightgen.client.verify import verify_file
from weightgen.v1 import weightgen_pb2 as pb

RANGE = 0.03  # not transformers' default 0.02: the rules must read the config
FACTOR = 0.5  # T5's initializer_factor, likewise


def tiny(family: str) -> tuple[type, transformers.PretrainedConfig]:
    """A small model of each family: 2 layers, width 64, vocabulary 256."""
    llama_like = dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
        initializer_range=RANGE,
    )
    cases = {
        "gpt2": (
            transformers.GPT2LMHeadModel,
            transformers.GPT2Config(
                n_layer=2,
                n_embd=64,
                n_head=4,
                vocab_size=256,
                n_positions=64,
                initializer_range=RANGE,
                bos_token_id=0,
                eos_token_id=0,
            ),
        ),
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(**llama_like, pad_token_id=3)),
        "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig(**llama_like)),
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**llama_like, pad_token_id=5)),
        "qwen3": (transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**llama_like, head_dim=16)),
        "bert": (
            transformers.BertForMaskedLM,
            transformers.BertConfig(
                num_hidden_layers=2,
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                vocab_size=256,
                max_position_embeddings=64,
                initializer_range=RANGE,
                pad_token_id=0,
            ),
        ),
        "t5": (
            transformers.T5ForConditionalGeneration,
            transformers.T5Config(
                num_layers=2,
                d_model=64,
                d_ff=128,
                d_kv=16,
                num_heads=4,
                vocab_size=256,
                initializer_factor=FACTOR,
                relative_attention_num_buckets=32,
            ),
        ),
    }
    cls, config = cases[family]
    config.architectures = [cls.__name__]
    return cls, config


def expected_rule(family: str, key: str, config) -> tuple[str, float]:
    """("normal", std) or ("constant", value) for one state-dict key, read from transformers' source."""
    if key.endswith("bias") and family != "t5":
        return "constant", 0.0  # every bias: Linear, Conv1D, norms, BERT's LM head
    if family == "gpt2":
        if ".ln_" in key:
            return "constant", 1.0
        if key.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):  # GPT-2's residual scaling
            return "normal", RANGE / math.sqrt(2 * config.n_layer)
        return "normal", RANGE
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        return ("constant", 1.0) if "norm" in key else ("normal", RANGE)
    if family == "bert":
        return ("constant", 1.0) if "LayerNorm" in key else ("normal", RANGE)
    assert family == "t5"
    d, dkv, dff, heads = config.d_model, config.d_kv, config.d_ff, config.num_heads
    if "layer_norm" in key:
        return "constant", FACTOR
    if key in ("shared.weight", "lm_head.weight") or key.endswith("embed_tokens.weight"):
        return "normal", FACTOR
    stds = {
        ".q.weight": FACTOR * (d * dkv) ** -0.5,
        ".k.weight": FACTOR * d**-0.5,
        ".v.weight": FACTOR * d**-0.5,
        ".o.weight": FACTOR * (heads * dkv) ** -0.5,
        "relative_attention_bias.weight": FACTOR * d**-0.5,
        ".wi.weight": FACTOR * d**-0.5,
        ".wo.weight": FACTOR * dff**-0.5,
    }
    return "normal", next(std for end, std in stds.items() if key.endswith(end))


def padding_rows(family: str, key: str, config) -> list[int]:
    embeddings = {"llama": "model.embed_tokens.weight", "qwen2": "model.embed_tokens.weight"}
    embeddings |= {"bert": "bert.embeddings.word_embeddings.weight"}
    return [config.pad_token_id] if embeddings.get(family) == key and config.pad_token_id is not None else []


def check_normal(values: np.ndarray, std: float, what: str) -> None:
    """N(0, std), not truncated, not uniform: mean, standard deviation and the share beyond two
    standard deviations (4.55% for a normal, 0 for weightgen's truncated normal or a uniform) each
    within 6 standard errors for the sample size."""
    values = values.astype(np.float64).reshape(-1)
    n = values.size
    assert n >= 64 and np.isfinite(values).all(), what
    assert abs(values.mean()) <= 6 * std / math.sqrt(n), (what, values.mean(), std)
    assert abs(values.std() / std - 1) <= 6 / math.sqrt(2 * n), (what, values.std(), std)
    tail, p = float(np.mean(np.abs(values) > 2 * std)), 0.0455
    assert abs(tail - p) <= 6 * math.sqrt(p * (1 - p) / n), (what, tail)


def check_family(family: str, config, state: dict[str, torch.Tensor], who: str) -> None:
    """Every tensor of `state` follows the family's rule."""
    for key, tensor in state.items():
        if tensor.dtype == torch.int64:  # BERT's position_ids and token_type_ids, checked elsewhere
            continue
        values = tensor.detach().float().numpy()
        kind, value = expected_rule(family, key, config)
        what = f"{who} {key}"
        if kind == "constant":
            assert (values == value).all(), what
            continue
        rows = padding_rows(family, key, config)
        for row in rows:
            assert (values[row] == 0).all(), f"{what}: padding row {row}"
        check_normal(np.delete(values, rows, axis=0), value, what)


def forward(model, config) -> torch.Tensor:
    ids = torch.arange(8).unsqueeze(0) * 7 % config.vocab_size
    with torch.no_grad():
        extra = {"decoder_input_ids": ids} if config.is_encoder_decoder else {}
        return model.eval()(input_ids=ids, **extra).logits


FAMILY_NAMES = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "bert", "t5"]


def test_the_families_are_those_tested():
    assert sorted(FAMILIES) == sorted(FAMILY_NAMES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_preset_hf_follows_the_family_init(family, client, tmp_path):
    cls, config = tiny(family)
    torch.manual_seed(0)
    reference = cls(config)  # transformers' own init
    check_family(family, config, reference.state_dict(), "transformers")

    with torch.device("meta"):
        model = cls(config)
    variables = module_variables(model)  # preset "auto" is "hf" for a transformers model
    for key, variable in variables.items():
        message = variable.to_proto().initializer
        if variable.dtype == "int64" or "inv_freq" in key:  # computed buffers: equal to transformers', below
            assert message.WhichOneof("kind") in ("broadcast", "zeros"), key
            continue
        kind, value = expected_rule(family, key, config)
        if kind == "normal":  # untruncated, with the family's std
            assert message.random_normal.stddev == pytest.approx(value, rel=1e-12), key
        else:
            assert message.WhichOneof("kind") in ("zeros", "ones", "constant"), key

    materialize_module(model, client, seed=11)
    assert not [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    state = model.state_dict()
    check_family(family, config, state, "weightgen")
    assert state.keys() == reference.state_dict().keys()
    for name, buffer in reference.named_buffers():  # computed ones: rotary frequencies, BERT's ids
        assert torch.equal(dict(model.named_buffers())[name], buffer), name
    if config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    model.save_pretrained(tmp_path)
    loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    logits = forward(model, config)
    assert torch.isfinite(logits).all() and torch.equal(forward(loaded, config), logits)


def test_caller_rules_come_before_the_family_ones():
    cls, config = tiny("llama")
    with torch.device("meta"):
        model = cls(config)
    variables = module_variables(model, rules={"*.q_proj.weight": "zeros"})
    assert variables["model.layers.0.self_attn.q_proj.weight"].to_proto().initializer.WhichOneof("kind") == "zeros"
    k_proj = variables["model.layers.0.self_attn.k_proj.weight"].to_proto().initializer
    assert k_proj.random_normal.stddev == RANGE
    choices = module_variables(model, rules={"*.q_proj.weight": "zeros"}, explain=True)
    assert choices["model.layers.0.self_attn.q_proj.weight"].source == "rules['*.q_proj.weight']"
    assert (
        choices["model.layers.0.self_attn.k_proj.weight"].source
        == "preset hf (Linear|Conv1d|Conv2d|Conv3d|ConvTranspose1d|ConvTranspose2d, 'weight')"
    )
    assert "*RMSNorm" in choices["model.norm.weight"].source
    with pytest.warns(RuleOverrideWarning, match=r"padding row 3 zeroed.*input_layernorm.weight .*a norm's scale"):
        module_variables(model, rules={"*.weight": "random_normal(stddev=0.1)"})


def test_what_the_preset_cannot_reproduce_is_refused():
    config = transformers.GPTNeoConfig(
        num_layers=2,
        hidden_size=32,
        num_heads=2,
        vocab_size=64,
        attention_types=[[["global", "local"], 1]],
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.device("meta"):
        neo = transformers.GPTNeoForCausalLM(config)
    with pytest.raises(ValueError, match=r"no rules for model_type 'gpt_neo'.*gpt2 \(GPT-2\).*preset='torch'"):
        module_variables(neo)

    class Custom(transformers.LlamaForCausalLM):
        def _init_weights(self, module):
            super()._init_weights(module)

    with torch.device("meta"):
        custom = Custom(tiny("llama")[1])
    with pytest.raises(ValueError, match=r"Custom initialises with .*Custom._init_weights.*preset='torch'"):
        module_variables(custom, preset="hf")

    class NotTransformers(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = tiny("llama")[1]
            self.fc = nn.Linear(4, 4)

    with pytest.raises(ValueError, match=r"a transformers PreTrainedModel's _init_weights; NotTransformers is not one"):
        module_variables(NotTransformers())  # auto: hf, as it has a config.model_type
    assert set(module_variables(NotTransformers(), preset="torch")) == {"fc.weight", "fc.bias"}


def test_conv1d_weights_are_in_out_for_fans(client):
    cls, config = tiny("gpt2")
    with torch.device("meta"):
        model = cls(config)
    default = module_variables(model, preset="torch")["transformer.h.0.mlp.c_fc.weight"].to_proto().initializer
    assert default.random_normal.stddev == 0.02  # Conv1D's own __init__
    rules = {(Conv1D, "weight"): "kaiming_uniform"}
    variables = module_variables(model, rules=rules, preset="torch")
    c_fc = variables["transformer.h.0.mlp.c_fc.weight"]
    assert tuple(c_fc.shape) == (64, 256)  # [in, out]
    assert c_fc.to_proto().initializer.fan_axes.layout == pb.FAN_LAYOUT_CHANNELS_LAST
    values = client.materialize([c_fc], seed=3)[c_fc.name]
    bound = math.sqrt(6 / 64)  # kaiming_uniform (gain sqrt(2)): fan_in is the 64 inputs, not the 256 outputs
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound


# -- zero rows in files and spec files ---------------------------------------------------------


def test_zero_rows_are_applied_recorded_and_verified(client, tmp_path):
    message = [
        Variable("table", [10, 6], "random_normal(stddev=1)"),
        Variable("half", [10, 6], "random_normal(stddev=1)", slice=np.s_[4:10]),
    ]
    plain = client.materialize(message, seed=3)
    path = tmp_path / "rows.safetensors"
    manifest = client.materialize_to_file(message, path, seed=3, zero_rows={"table": [7, 2], "half": [1, 5]})
    stored = load_file(path)
    want_table, want_half = plain["table"].copy(), plain["half"].copy()
    want_table[[2, 7]] = 0
    want_half[5 - 4] = 0  # row 1 is outside the slice [4, 10)
    assert np.array_equal(stored["table"].numpy(), want_table) and np.array_equal(stored["half"].numpy(), want_half)
    assert [v.zero_rows for v in manifest.variables] == [[2, 7], [1, 5]]
    assert [v.zero_rows for v in read_manifest(path).variables] == [[2, 7], [1, 5]]
    assert all(check.ok for check in verify_file(client, path))

    # A zero row that is not zero in the file, or a value zeroed that should not be, is found.
    _, tensors = read_header(path)
    where = next(t for t in tensors if t.name == "table")
    with open(path, "r+b") as f:
        f.seek(where.begin + 2 * 6 * 4)
        f.write(np.float32(1.5).tobytes())
    checks = {c.name: c for c in verify_file(client, path)}
    assert checks["half"].ok and not checks["table"].ok
    assert "differ from the server's with the manifest's zero rows" in checks["table"].problems[0]

    for bad, message_part in [
        ({"nope": [0]}, "'nope' is not a variable of the request"),
        ({"table": [10]}, "variable 'table': zero row 10 is not a row index in [0, 10)"),
        ({"table": "0"}, "variable 'table': zero rows must be a list"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message_part)):
            client.materialize_to_file(message, tmp_path / "bad.safetensors", zero_rows=bad)
    assert not (tmp_path / "bad.safetensors").exists()


def test_spec_files_carry_zero_rows(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"variables": {"emb": "8x4 normal"}, "zeroRows": {"emb": [3]}}))
    assert read_spec(spec).zero_rows == {"emb": [3]} and read_spec(spec).request.variables[0].name == "emb"
    with pytest.raises(SpecFileError, match=r"has zeroRows \(emb\).*read_spec"):
        load_spec(spec)
    spec.write_text(json.dumps({"variables": [{"name": "emb", "shape": [8, 4]}], "zeroRows": {"emb": [8]}}))
    with pytest.raises(SpecFileError, match=r"spec.json: variable 'emb': zero row 8 is not a row index in \[0, 8\)"):
        read_spec(spec)


# -- seed checkpoints --------------------------------------------------------------------------


def write_config(family: str, folder: Path) -> tuple[type, transformers.PretrainedConfig, Path]:
    cls, config = tiny(family)
    config.save_pretrained(folder)
    return cls, config, folder / "config.json"


@pytest.mark.parametrize(("family", "dtype"), [("gpt2", None), ("llama", "bfloat16"), ("bert", None), ("t5", None)])
def test_a_seed_checkpoint_from_a_config_alone(family, dtype, client, tmp_path):
    cls, config, config_file = write_config(family, tmp_path / "config")
    folder = tmp_path / "ckpt"
    if family == "gpt2":  # a file: just the weights
        path, manifest = fetch_seed_checkpoint(client, config_file, folder / "model.safetensors", seed=5, dtype=dtype)
        assert not (folder / "config.json").exists()
        config.save_pretrained(folder)
    else:  # a folder: the weights and the config, which from_pretrained reads
        path, manifest = fetch_seed_checkpoint(client, config_file, folder, seed=5, dtype=dtype)
        assert (folder / "config.json").read_bytes() == config_file.read_bytes()
    assert path == folder / "model.safetensors"
    metadata, _ = read_header(path)
    assert metadata["format"] == "pt"  # transformers refuses safetensors files without it
    stored = load_file(path)
    want = torch.bfloat16 if dtype else torch.float32
    assert all(t.dtype == want for t in stored.values())
    check_family(family, config, stored, "seed checkpoint")

    # The same tensors as a model built on meta and filled by materialize_module (a tied tensor
    # once, under its first key; no non-persistent buffers).
    with torch.device("meta"):
        model = cls(config).to(want)
    state = materialize_module(model, client, seed=5, preset="hf").state_dict()
    tied = {"gpt2": ["lm_head.weight"], "bert": ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]}
    tied["t5"] = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    assert sorted(stored) == sorted(set(state) - set(tied.get(family, [])))
    for key, tensor in stored.items():
        assert torch.equal(tensor, state[key]), key

    loaded, info = cls.from_pretrained(folder, output_loading_info=True, dtype=want)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    loaded_state = loaded.state_dict()
    for key, tensor in stored.items():
        assert torch.equal(loaded_state[key], tensor), key
    for key in tied.get(family, []):
        assert torch.equal(loaded_state[key], state[key]), key
    assert torch.isfinite(forward(loaded, config).float()).all()

    rows = {k: padding_rows(family, k, config) for k in stored if padding_rows(family, k, config)}
    assert {v.name: v.zero_rows for v in manifest.variables if v.zero_rows} == rows
    assert bool(rows) == (family in ("llama", "bert"))  # the tiny Llama has a pad_token_id
    assert all(check.ok for check in verify_file(client, path))


def test_a_seed_checkpoint_without_a_server(tmp_path):
    """The request alone (what ``weightgen spec`` writes) needs no server, and builds nothing real."""
    config_file = write_config("llama", tmp_path)[2]
    checkpoint = seed_checkpoint(config_file)
    assert all(p.is_meta for p in checkpoint.model.parameters())
    names = [v.name for v in checkpoint.variables]
    assert "model.rotary_emb.inv_freq" not in names and "lm_head.weight" in names  # Llama does not tie by default
    assert checkpoint.zero_rows == {"model.embed_tokens.weight": [3]}
    assert checkpoint.spec(seed=4)["zeroRows"] == {"model.embed_tokens.weight": [3]}


def test_seed_checkpoint_cli(server, tmp_path):
    _, config, config_file = write_config("bert", tmp_path / "config")
    spec_path, folder, file = tmp_path / "spec.json", tmp_path / "ckpt", tmp_path / "from-spec.safetensors"
    connect = ["--server", server.address, "--no-progress"]

    made = run_cli("spec", "--hf-config", str(config_file), "-o", str(spec_path), "--seed", "9")
    assert "BertForMaskedLM, BERT init" in made.stdout and "bert.embeddings.word_embeddings.weight [0]" in made.stdout
    spec = read_spec(spec_path)
    assert spec.request.seed == 9 and spec.zero_rows == {"bert.embeddings.word_embeddings.weight": [0]}
    assert "cls.predictions.decoder.weight" not in {v.name for v in spec.request.variables}  # tied: fetched once
    assert "bert.embeddings.position_ids" not in {v.name for v in spec.request.variables}  # not saved

    fetched = run_cli("fetch", "--hf-config", str(config_file), "-o", str(folder), "--seed", "9", *connect)
    assert "zero rows" in fetched.stdout and "config.json" in fetched.stdout
    run_cli("fetch", str(spec_path), "-o", str(file), *connect)
    from_config, from_spec = load_file(folder / "model.safetensors"), load_file(file)
    assert from_config.keys() == from_spec.keys()
    assert all(torch.equal(from_config[k], from_spec[k]) for k in from_config)
    assert (from_config["bert.embeddings.word_embeddings.weight"][0] == 0).all()
    assert read_manifest(file).variable("bert.embeddings.word_embeddings.weight").zero_rows == [0]
    check_family("bert", config, from_config, "CLI seed checkpoint")
    assert "OK" in run_cli("verify", str(file), "--server", server.address).stdout

    loaded, info = transformers.AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert all(torch.equal(loaded.state_dict()[k], t) for k, t in from_config.items())

    # explain: each tensor of the model the config describes, with the family rule that chose it.
    explained = json.loads(run_cli("explain", "--hf-config", str(config_file), "--json").stdout)
    rows = {row["key"]: row for row in explained}
    assert rows["bert.embeddings.LayerNorm.weight"]["initializer"] == {"ones": {}}
    assert rows["bert.embeddings.word_embeddings.weight"]["rule"].startswith("preset hf ")
    assert rows["cls.predictions.decoder.weight"]["tied_to"] == "bert.embeddings.word_embeddings.weight"
    assert {v.name for v in spec.request.variables} <= set(rows)


def test_seed_checkpoint_cli_errors(tmp_path, capsys, monkeypatch):
    def fails(*args: str) -> str:
        capsys.readouterr()
        assert cli.main(list(args)) == 2
        return capsys.readouterr().err

    _, config, config_file = write_config("gpt2", tmp_path / "gpt2")
    config.architectures = None
    config.save_pretrained(tmp_path / "plain")
    assert "config names no architectures" in fails("spec", "--hf-config", str(tmp_path / "plain"))
    assert "--hf-class" in fails("spec", "--hf-config", str(tmp_path / "plain"))
    assert cli.main(["spec", "--hf-config", str(tmp_path / "plain"), "--hf-class", "GPT2LMHeadModel"]) == 0
    assert json.loads(capsys.readouterr().out)["variables"][0]["name"] == "transformer.wte.weight"

    neo = transformers.GPTNeoConfig(
        num_layers=2,
        hidden_size=32,
        num_heads=2,
        vocab_size=64,
        attention_types=[[["global", "local"], 1]],
        bos_token_id=0,
        eos_token_id=0,
    )
    neo.architectures = ["GPTNeoForCausalLM"]
    neo.save_pretrained(tmp_path / "neo")
    error = fails("spec", "--hf-config", str(tmp_path / "neo"))
    assert "no rules for model_type 'gpt_neo'" in error and "preset='torch'" in error
    assert "no such config" in fails("spec", "--hf-config", str(tmp_path / "missing.json"))
    assert "not a transformers model class" in fails("spec", "--hf-config", str(config_file), "--hf-class", "os")
    assert "either a spec file or --hf-config" in fails(
        "fetch", "spec.json", "--hf-config", str(config_file), "-o", "x"
    )
    assert "go with --hf-config" in fails("fetch", "spec.json", "--hf-dtype", "bfloat16", "-o", "x")

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    error = fails("spec", "--hf-config", str(config_file))
    assert "needs torch and transformers" in error and "pip install torch transformers" in error
    assert len(error.strip().splitlines()) == 1


def test_a_boolean_in_the_config_is_not_a_std():
    """``"initializer_range": true`` would be std 1.0 through float(): refused with the reason.
    (transformers' own config classes refuse it too; a plain config object need not.)"""
    from types import SimpleNamespace

    from weightgen.client.hf import _generic_rules

    with pytest.raises(ValueError, match="expected a number, got the boolean True"):
        _generic_rules(SimpleNamespace(initializer_range=True))
    assert _generic_rules(SimpleNamespace(initializer_range=0.5))  # a number is fine
