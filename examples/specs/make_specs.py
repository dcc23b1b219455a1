"""Generate the example spec files of this directory (``--check``: fail if a committed file differs).

    python examples/specs/make_specs.py            # rewrite mlp.json, resnet50.json, gpt2-small.json
    python examples/specs/make_specs.py --check    # what the tests run

- ``mlp.json``: a small PyTorch MLP (64 -> 128 -> 128 -> 10) in the API's protobuf JSON form, with
  ``nn.Linear``'s default initialisation: weight kaiming_uniform(a=sqrt(5)) over [out, in], so
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
- ``resnet50.json``: torchvision's ``resnet50()`` state dict (names, shapes, layout [out, in, kh, kw])
  in the shorthand, initialised as torchvision does: convs kaiming_normal(fan_out, relu), batch-norm
  weight 1 and bias 0, running mean 0 and variance 1, and the fc layer as ``nn.Linear``.
- ``gpt2-small.json``: Hugging Face's GPT-2 small checkpoint names and shapes (``Conv1D`` weights are
  [in, out]) in the shorthand, initialised as ``GPT2PreTrainedModel._init_weights`` does: normal(0.02)
  for embeddings and projections, normal(0.02 / sqrt(2 * n_layer)) for the residual ``c_proj`` weights
  (GPT-2 paper), layer norms weight 1 and bias 0, biases 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 42


def _linear_bound(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in)


def mlp() -> dict[str, Any]:
    """A MaterializeRequest in protobuf JSON (numbers written as numbers, which protobuf JSON accepts)."""
    sizes = [64, 128, 128, 10]
    variables = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        bound = _linear_bound(fan_in)
        variables.append(
            {
                "name": f"fc{layer}.weight",
                "shape": [fan_out, fan_in],
                "dtype": "DTYPE_FLOAT32",
                "initializer": {
                    "kaimingUniform": {"a": math.sqrt(5)},
                    "fanAxes": {"layout": "FAN_LAYOUT_CHANNELS_FIRST"},
                },
            }
        )
        variables.append(
            {
                "name": f"fc{layer}.bias",
                "shape": [fan_out],
                "dtype": "DTYPE_FLOAT32",
                "initializer": {"randomUniform": {"min": -bound, "max": bound}},
            }
        )
    return {"seed": SEED, "variables": variables}


def _batch_norm(prefix: str, channels: int, out: dict[str, str]) -> None:
    out[f"{prefix}.weight"] = f"{channels} ones"
    out[f"{prefix}.bias"] = f"{channels} zeros"
    out[f"{prefix}.running_mean"] = f"{channels} zeros"
    out[f"{prefix}.running_var"] = f"{channels} ones"
    out[f"{prefix}.num_batches_tracked"] = "scalar zeros int64"


def _conv(name: str, out_channels: int, in_channels: int, k: int, out: dict[str, str]) -> None:
    out[name] = f"{out_channels}x{in_channels}x{k}x{k} kaiming_normal(mode=fan_out, nonlinearity=relu)"


def resnet50() -> dict[str, Any]:
    v: dict[str, str] = {}
    _conv("conv1.weight", 64, 3, 7, v)
    _batch_norm("bn1", 64, v)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            _conv(f"{p}.conv1.weight", planes, inplanes, 1, v)
            _batch_norm(f"{p}.bn1", planes, v)
            _conv(f"{p}.conv2.weight", planes, planes, 3, v)
            _batch_norm(f"{p}.bn2", planes, v)
            _conv(f"{p}.conv3.weight", planes * 4, planes, 1, v)
            _batch_norm(f"{p}.bn3", planes * 4, v)
            if block == 0:
                _conv(f"{p}.downsample.0.weight", planes * 4, inplanes, 1, v)
                _batch_norm(f"{p}.downsample.1", planes * 4, v)
            inplanes = planes * 4
    bound = _linear_bound(2048)
    v["fc.weight"] = f"1000x2048 kaiming_uniform(a={math.sqrt(5)!r})"
    v["fc.bias"] = f"1000 random_uniform(min={-bound!r}, max={bound!r})"
    return {
        "comment": "torchvision resnet50() state dict, initialised as torchvision does; PyTorch layout",
        "seed": SEED,
        "dtype": "float32",
        "layout": "channels_first",
        "variables": v,
    }


def gpt2_small(n_layer: int = 12, d: int = 768, vocab: int = 50257, context: int = 1024) -> dict[str, Any]:
    std = 0.02
    residual = std / math.sqrt(2 * n_layer)
    v: dict[str, str] = {
        "wte.weight": f"{vocab}x{d} random_normal(stddev={std})",
        "wpe.weight": f"{context}x{d} random_normal(stddev={std})",
    }
    for i in range(n_layer):
        p = f"h.{i}"
        v[f"{p}.ln_1.weight"] = f"{d} ones"
        v[f"{p}.ln_1.bias"] = f"{d} zeros"
        v[f"{p}.attn.c_attn.weight"] = f"{d}x{3 * d} random_normal(stddev={std})"
        v[f"{p}.attn.c_attn.bias"] = f"{3 * d} zeros"
        v[f"{p}.attn.c_proj.weight"] = f"{d}x{d} random_normal(stddev={residual!r})"
        v[f"{p}.attn.c_proj.bias"] = f"{d} zeros"
        v[f"{p}.ln_2.weight"] = f"{d} ones"
        v[f"{p}.ln_2.bias"] = f"{d} zeros"
        v[f"{p}.mlp.c_fc.weight"] = f"{d}x{4 * d} random_normal(stddev={std})"
        v[f"{p}.mlp.c_fc.bias"] = f"{4 * d} zeros"
        v[f"{p}.mlp.c_proj.weight"] = f"{4 * d}x{d} random_normal(stddev={residual!r})"
        v[f"{p}.mlp.c_proj.bias"] = f"{d} zeros"
    v["ln_f.weight"] = f"{d} ones"
    v["ln_f.bias"] = f"{d} zeros"
    return {
        "comment": "Hugging Face GPT-2 small (gpt2) checkpoint names and shapes, initialised as _init_weights does",
        "seed": SEED,
        "dtype": "float32",
        "variables": v,
    }


SPECS = {"mlp.json": mlp, "resnet50.json": resnet50, "gpt2-small.json": gpt2_small}


def render(make) -> str:
    return json.dumps(make(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed spec differs from its generator")
    args = parser.parse_args(argv)
    stale = []
    for name, make in SPECS.items():
        path = HERE / name
        text = render(make)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python examples/specs/make_specs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
