"""Building requests from friendly Python and spec files (no server needed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from google.protobuf import json_format

from weightgen.client import Variable, init
from weightgen.client.balance import balance
from weightgen.client.specfile import SpecFileError, load_spec, parse_spec
from weightgen.client.specs import (
    dtype_value,
    initializer,
    make_initializer,
    parse_initializer,
    slice_ranges,
    variable_specs,
)
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "examples" / "specs"


def test_every_initializer_has_a_helper_with_its_parameters():
    kinds = pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields
    for field in kinds:
        message = getattr(init, field.name)()
        assert message.WhichOneof("kind") == field.name
        assert str(getattr(init, field.name).__signature__).startswith("(")
    assert init.variance_scaling(2.0, "fan_out", "uniform") == pb.Initializer(
        variance_scaling=pb.VarianceScaling(scale=2.0, mode=pb.FAN_MODE_FAN_OUT, distribution=pb.DISTRIBUTION_UNIFORM)
    )
    assert init.he_normal(layout="channels_first").fan_axes.layout == pb.FAN_LAYOUT_CHANNELS_FIRST
    axes = init.glorot_uniform(fan_in_axes=[0], fan_out_axes=[1], batch_axes=[2]).fan_axes
    assert (list(axes.in_axes), list(axes.out_axes), list(axes.batch_axes)) == ([0], [1], [2])
    base = init.broadcast(np.array([1.0, 2.0], np.float32)).broadcast.base
    assert base.dtype == pb.DTYPE_FLOAT32 and list(base.shape) == [2] and base.data == np.float32([1, 2]).tobytes()
    bf16 = init.broadcast(np.array([1.5], ml_dtypes.bfloat16)).broadcast.base
    assert bf16.dtype == pb.DTYPE_BFLOAT16 and bf16.data == b"\xc0\x3f"
    with pytest.raises(ValueError, match="unknown parameter 'stdev'"):
        init.random_normal(stdev=1)
    with pytest.raises(ValueError, match="fan_in, fan_out"):
        init.kaiming_normal(mode="fan_sideways")


def test_initializer_forms_agree():
    expected = pb.Initializer(random_uniform=pb.RandomUniform(min=-1, max=1))
    assert initializer({"randomUniform": {"min": -1, "max": 1}}) == expected
    assert initializer("random_uniform(min=-1, max=1)") == expected
    assert initializer("uniform(-1, 1)") == expected
    assert initializer("randomUniform(max=1, min=-1)") == expected
    assert initializer(expected) is expected and initializer(None) is None
    assert initializer("he_normal") == pb.Initializer(he_normal=pb.HeNormal())
    assert parse_initializer(
        "kaiming_normal(mode=fan_out, nonlinearity=relu, layout=channels_first)"
    ) == pb.Initializer(
        kaiming_normal=pb.Kaiming(mode=pb.FAN_MODE_FAN_OUT, nonlinearity=pb.NONLINEARITY_RELU),
        fan_axes=pb.FanAxes(layout=pb.FAN_LAYOUT_CHANNELS_FIRST),
    )
    assert parse_initializer("glorot_normal(fan_in_axes=[0, 1], fan_out_axes=[2])").fan_axes.in_axes == [0, 1]
    assert parse_initializer("dirac(groups=2)").dirac.groups == 2
    for bad in ("no_such_init", "he_normal(", "random_normal(1, 2, 3)", "dirac(groups=1.5)"):
        with pytest.raises(ValueError):
            parse_initializer(bad)
    with pytest.raises(ValueError):
        initializer({"notAnInitializer": {}})


def test_dtypes_and_slices():
    assert dtype_value(None) == pb.DTYPE_UNSPECIFIED
    assert dtype_value("bfloat16") == dtype_value("bf16") == dtype_value("DTYPE_BFLOAT16") == pb.DTYPE_BFLOAT16
    assert dtype_value(np.float16) == dtype_value(np.dtype("float16")) == pb.DTYPE_FLOAT16
    assert dtype_value(ml_dtypes.bfloat16) == pb.DTYPE_BFLOAT16 and dtype_value(bool) == pb.DTYPE_BOOL
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_value("float8")
    ranges = slice_ranges(np.s_[1:3, -2:], (4, 5, 6))
    assert [(r.start, r.stop) for r in ranges] == [(1, 3), (3, 5), (0, 6)]
    assert [(r.start, r.stop) for r in slice_ranges([(0, 2), (1, 1)], (2, 3))] == [(0, 2), (1, 1)]
    with pytest.raises(ValueError, match="steps"):
        slice_ranges(np.s_[::2], (4,))
    spec = Variable("w", [4, 6], "he", dtype="float16", seed=3, slice=np.s_[:, 2:4]).to_proto()
    assert spec == json_format.ParseDict(
        {
            "name": "w",
            "shape": [4, 6],
            "dtype": "DTYPE_FLOAT16",
            "initializer": {"he": {}},
            "seed": 3,
            "slice": [{"start": 0, "stop": 4}, {"start": 2, "stop": 4}],
        },
        pb.VariableSpec(),
    )
    assert variable_specs(
        {"name": "w", "shape": [4, 6], "initializer": "he", "dtype": "float16", "seed": 3, "slice": np.s_[:, 2:4]}
    ) == [spec]


def test_shorthand_and_protobuf_json_give_the_same_request():
    shorthand = {
        "seed": 42,
        "dtype": "bfloat16",
        "layout": "channels_first",
        "variables": {
            "conv": "8x4x3x3 kaiming_normal(mode=fan_out, nonlinearity=relu)",
            "bias": "8 zeros float32",
            "step": "scalar zeros int64 seed=5",
            "w": {"shape": "6x10", "init": {"heNormal": {}}, "slice": [[2, 4], [0, 10]], "layout": "channels_last"},
        },
    }
    protobuf_json = {
        "seed": "42",
        "variables": [
            {
                "name": "conv",
                "shape": ["8", "4", "3", "3"],
                "dtype": "DTYPE_BFLOAT16",
                "initializer": {
                    "kaimingNormal": {"mode": "FAN_MODE_FAN_OUT", "nonlinearity": "NONLINEARITY_RELU"},
                    "fanAxes": {"layout": "FAN_LAYOUT_CHANNELS_FIRST"},
                },
            },
            {"name": "bias", "shape": ["8"], "dtype": "DTYPE_FLOAT32", "initializer": {"zeros": {}}},
            {"name": "step", "dtype": "DTYPE_INT64", "initializer": {"zeros": {}}, "seed": "5"},
            {
                "name": "w",
                "shape": ["6", "10"],
                "dtype": "DTYPE_BFLOAT16",
                "initializer": {"heNormal": {}, "fanAxes": {"layout": "FAN_LAYOUT_CHANNELS_LAST"}},
                "slice": [{"start": "2", "stop": "4"}, {"stop": "10"}],
            },
        ],
    }
    assert parse_spec(shorthand) == parse_spec(protobuf_json)
    for bad, match in (
        ({"variables": {"w": "4x-2 he"}}, "'w'.*shape"),
        ({"variables": {"w": "4 he he"}}, "unexpected 'he'"),
        ({"variables": {"w": {"shape": [2], "init": "he", "colour": 1}}}, "colour"),
        ({"variables": "w"}, "list"),
        ({"seeed": 1, "variables": {}}, "seeed"),
    ):
        with pytest.raises(SpecFileError, match=match):
            parse_spec(bad)


def _params(request: pb.MaterializeRequest, skip: tuple[str, ...] = ()) -> int:
    return sum(math.prod(v.shape) for v in request.variables if not v.name.endswith(skip))


def test_example_specs_are_current_and_real():
    assert subprocess.run([sys.executable, str(SPECS / "make_specs.py"), "--check"], check=False).returncode == 0
    mlp = load_spec(SPECS / "mlp.json")
    assert isinstance(json.loads((SPECS / "mlp.json").read_text())["variables"], list)  # protobuf JSON form
    assert [v.name for v in mlp.variables][:2] == ["fc1.weight", "fc1.bias"] and _params(mlp) < 100_000
    resnet = load_spec(SPECS / "resnet50.json")
    buffers = (".running_mean", ".running_var", ".num_batches_tracked")
    assert _params(resnet, buffers) == 25_557_032  # torchvision resnet50's parameter count
    names = {v.name: v for v in resnet.variables}
    assert list(names["layer4.0.downsample.0.weight"].shape) == [2048, 1024, 1, 1]
    assert names["conv1.weight"].initializer.fan_axes.layout == pb.FAN_LAYOUT_CHANNELS_FIRST
    assert names["conv1.weight"].initializer.kaiming_normal.mode == pb.FAN_MODE_FAN_OUT
    assert names["layer1.0.bn1.num_batches_tracked"].dtype == pb.DTYPE_INT64
    gpt2 = load_spec(SPECS / "gpt2-small.json")
    assert _params(gpt2) == 124_439_808  # Hugging Face gpt2's parameter count
    names = {v.name: v for v in gpt2.variables}
    assert list(names["wte.weight"].shape) == [50257, 768] and list(names["h.11.mlp.c_proj.weight"].shape) == [
        3072,
        768,
    ]
    assert list(names["h.0.attn.c_attn.weight"].shape) == [768, 2304]
    assert names["h.0.attn.c_attn.weight"].initializer.random_normal.stddev == 0.02
    assert math.isclose(names["h.3.attn.c_proj.weight"].initializer.random_normal.stddev, 0.02 / math.sqrt(24))


def test_balance():
    sizes = [100, 1, 50, 50, 2, 97]
    groups = balance(sizes, 3)
    assert sorted(i for g in groups for i in g) == list(range(6)) and all(g == sorted(g) for g in groups)
    assert max(sum(sizes[i] for i in g) for g in groups) == 100
    assert balance(sizes, 10) and len(balance(sizes, 10)) == 6 and balance([], 3) == []
    assert balance([5, 5], 1) == [[0, 1]]


def test_dtype_names_users_type_and_dtype_objects():
    import jax.numpy as jnp
    import torch

    for name, want in [("fp32", "float32"), ("f32", "float32"), ("FP16", "float16"), ("bf16", "bfloat16"),
                       ("half", "float16"), ("double", "float64"), ("i8", "int8"), ("u16", "uint16"),
                       ("c64", "complex64"), ("long", "int64"), ("DTYPE_BFLOAT16", "bfloat16")]:
        assert dtype_value(name) == wire.BY_NAME[want], name
    for obj, want in [(torch.float16, "float16"), (torch.bfloat16, "bfloat16"), (torch.int64, "int64"),
                      (torch.bool, "bool"), (jnp.bfloat16, "bfloat16"), (jnp.float32, "float32"),
                      (np.dtype("uint8"), "uint8"), (float, "float64")]:
        assert dtype_value(obj) == wire.BY_NAME[want], obj
    assert Variable("w", (2,), "zeros", dtype=torch.float16).to_proto().dtype == pb.DTYPE_FLOAT16
    # Ambiguous names are refused, not guessed; unknown ones say what was probably meant.
    with pytest.raises(ValueError, match=r"dtype 'float' is ambiguous: say float32 \(PyTorch"):
        dtype_value("float")
    with pytest.raises(ValueError, match=r"weightgen has no dtype for torch.float8_e4m3fn"):
        dtype_value(torch.float8_e4m3fn)
    # At construction, naming the variable: not later, at the fetch.
    with pytest.raises(ValueError, match=r"variable 'w': unknown dtype 'bfloat' \(did you mean 'bfloat16'\?\)"):
        Variable("w", (2,), "zeros", dtype="bfloat")
    with pytest.raises(ValueError, match=r"variable 'w': weightgen has no dtype for torch.float8_e5m2"):
        Variable("w", (2,), "zeros", dtype=torch.float8_e5m2)


def test_did_you_mean_for_initializers_parameters_and_enum_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown initializer 'he_nromal' \(did you mean 'he_normal'\?\)"):
        Variable("w", (2, 2), "he_nromal")
    with pytest.raises(ValueError, match=r"unknown parameter 'modee' \(did you mean 'mode'\?\)"):
        make_initializer("kaiming_uniform", modee="fan_in")
    with pytest.raises(ValueError, match=r"unknown value 'fan_inn' \(did you mean 'fan_in'\?\)"):
        make_initializer("kaiming_uniform", mode="fan_inn")
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"variables": [{"name": "w", "shape": [4], "dtype": "DTYPE_FLOAT33"}]}))
    with pytest.raises(SpecFileError) as caught:
        load_spec(spec)
    message = str(caught.value)
    assert "(did you mean 'DTYPE_FLOAT32'?); valid names: DTYPE_FLOAT32, DTYPE_FLOAT64" in message, message


@pytest.mark.parametrize("flag", [True, False, np.True_])
def test_booleans_are_not_numbers(flag):
    """float(True) is 1.0 and int(False) is 0, and json_format reads true as 1.0 for a double: every
    path from Python, shorthand strings and spec files refuses a boolean where a number belongs."""
    word = "true" if flag else "false"
    with pytest.raises(ValueError, match=r"kaiming_uniform\.a: expected a number, got the boolean"):
        init.kaiming_uniform(a=flag)
    with pytest.raises(ValueError, match=r"xavier_uniform\.gain: expected a number, got the boolean"):
        init.xavier_uniform(gain=flag)
    with pytest.raises(ValueError, match=r"xavier_uniform\.gain: expected a number, got the boolean"):
        parse_initializer(f"xavier_uniform(gain={word})")
    with pytest.raises(ValueError, match=r"initializer.xavierUniform.gain: expected a number, got the boolean"):
        initializer({"xavierUniform": {"gain": bool(flag)}})
    with pytest.raises(ValueError, match=r"dirac\.groups: expected an integer"):
        init.dirac(groups=flag)
    with pytest.raises(ValueError, match="fan_in_axes: expected an integer"):
        init.he_normal(fan_in_axes=[flag])
    with pytest.raises(ValueError, match=r"w: shape: expected an integer, got the boolean"):
        Variable("w", [flag, 3], "zeros").to_proto()
    with pytest.raises(ValueError, match=r"w: seed: expected an integer"):
        Variable("w", [3], "zeros", seed=flag).to_proto()
    with pytest.raises(ValueError, match=r"slice axis 0: expected an integer"):
        slice_ranges([(flag, 2)], [3])
    with pytest.raises(ValueError, match=r"w.initializer.heNormal.*|w.shape\[0\]: expected a number"):
        variable_specs([{"name": "w", "shape": [flag], "initializer": {"heNormal": {}}}])
    # Spec files, both forms: the message names the variable and the parameter.
    shorthand = {"variables": {"fc.weight": f"4x4 kaiming_uniform(a={word})"}}
    with pytest.raises(SpecFileError, match=r"variable 'fc.weight': kaiming_uniform.a: expected a number, got the"):
        parse_spec(shorthand)
    with pytest.raises(SpecFileError, match=r"variable 'fc.weight': .*xavierUniform.gain: expected a number"):
        parse_spec({"variables": {"fc.weight": {"shape": [4, 4], "init": {"xavierUniform": {"gain": bool(flag)}}}}})
    with pytest.raises(SpecFileError, match=r"variable 'w': seed: expected an integer"):
        parse_spec({"variables": {"w": {"shape": [4], "init": "zeros", "seed": bool(flag)}}})
    with pytest.raises(SpecFileError, match=r"seed: expected an integer"):
        parse_spec({"seed": bool(flag), "variables": {"w": "4 zeros"}})
    as_json = json.loads(
        f'{{"seed": "1", "variables": [{{"name": "w", "shape": ["4", "4"], '
        f'"initializer": {{"xavierUniform": {{"gain": {word}}}}}}}]}}'
    )
    with pytest.raises(SpecFileError, match=r"variables\[0\].initializer.xavierUniform.gain: expected a number"):
        parse_spec(as_json)
    # The same files with numbers are accepted (the refusal is of booleans only).
    assert parse_spec({"variables": {"w": "4x4 kaiming_uniform(a=1)"}}).variables[0].initializer.kaiming_uniform.a == 1
    as_json["variables"][0]["initializer"]["xavierUniform"]["gain"] = 0
    assert parse_spec(as_json).variables[0].initializer.xavier_uniform.gain == 0


def test_protobuf_json_itself_reads_booleans_as_numbers():
    """Why the client checks: json_format turns a JSON true into 1.0 for a double field. (If a
    protobuf release starts refusing it, this test says the check has become a second line.)"""
    parsed = json_format.Parse('{"xavierUniform": {"gain": true}}', pb.Initializer())
    assert parsed.xavier_uniform.gain == 1.0


def test_sparse_forms_agree():
    """PyTorch's sparse_ (sparsity, std) in every client form."""
    expected = pb.Initializer(sparse=pb.Sparse(sparsity=0.1, stddev=0.02))
    assert init.sparse(0.1, 0.02) == expected
    assert init.sparse(sparsity=0.1, stddev=0.02) == expected
    assert parse_initializer("sparse(0.1, stddev=0.02)") == expected
    assert initializer({"sparse": {"sparsity": 0.1, "stddev": 0.02}}) == expected
    request = parse_spec({"layout": "channels_first", "variables": {"fc.weight": "256x784 sparse(sparsity=0.1)"}})
    message = request.variables[0].initializer
    assert message == pb.Initializer(sparse=pb.Sparse(sparsity=0.1))  # no fans: the default layout is not added
    assert not message.sparse.HasField("stddev")  # the server's default, 0.01
