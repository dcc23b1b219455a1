"""transformers models with the torch adapter: Conv1D (GPT-2) weights are [in, out]."""

from __future__ import annotations

import math

import numpy as np
import torch
import transformers
from transformers.pytorch_utils import Conv1D

from weightgen.client.torch import module_variables
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
