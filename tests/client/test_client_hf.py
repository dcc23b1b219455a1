"""transformers models with the torch adapter, and rows zeroed after a fetch (padding rows) in files
and spec files.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

from weightgen.client import Variable, read_manifest
from weightgen.client.files import read_header
from weightgen.client.specfile import SpecFileError, load_spec, read_spec
from weightgen.client.torch import module_variables
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
