"""The weightgen CLI, run as a subprocess against the real server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_helpers import same_bytes, xxh3
from safetensors.numpy import load_file

from weightgen.client import read_manifest
from weightgen.client.files import read_header
from weightgen.client.specfile import load_spec

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "specs" / "mlp.json"


def weightgen(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "weightgen.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**{k: v for k, v in os.environ.items() if k != "WEIGHTGEN_SERVER"}, "COLUMNS": "200"},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"weightgen {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def fetched(server, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli") / "mlp.safetensors"
    result = weightgen("fetch", str(MLP), "-o", str(out), "--server", server.address, "--no-progress")
    return out, result


def test_fetch_writes_what_the_client_materializes(fetched, client):
    path, result = fetched
    loaded = load_file(path)
    expected = client.materialize(load_spec(MLP))
    assert list(expected) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert set(loaded) == set(expected) and all(same_bytes(loaded[k], expected[k]) for k in expected)
    assert loaded["fc1.weight"].shape == (128, 64)
    bound = 1 / np.sqrt(64)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(loaded["fc1.weight"]).max() <= bound and np.abs(loaded["fc1.weight"]).max() > 0.9 * bound
    # The summary table: variables, bytes, seed, time.
    for text in ("variables", "6", "104,488", "seed", "42", "weightgen/2", "time"):
        assert text in result.stdout, text
    manifest = read_manifest(path)
    assert manifest.seeds == [42] and manifest.request == load_spec(MLP)


def test_fetch_shorthand_with_seed_and_streams(server, tmp_path, client):
    spec = tmp_path / "small.json"
    spec.write_text(
        json.dumps(
            {
                "seed": 1,
                "dtype": "bfloat16",
                "layout": "channels_first",
                "variables": {
                    "conv.weight": "8x4x3x3 kaiming_normal(mode=fan_out, nonlinearity=relu)",
                    "conv.bias": "8 zeros float32",
                    "head": {"shape": [6, 10], "init": {"heNormal": {}}, "slice": [[2, 4], [0, 10]]},
                },
            }
        )
    )
    out = tmp_path / "small.safetensors"
    weightgen(
        "fetch", str(spec), "-o", str(out), "--seed", "9", "--streams", "2", "--server", server.address, "--no-progress"
    )
    loaded = load_file(out)
    request = load_spec(spec)
    expected = client.materialize(request, seed=9)
    assert all(same_bytes(loaded[k], expected[k]) for k in expected)
    assert loaded["conv.weight"].dtype.name == "bfloat16" and loaded["head"].shape == (2, 10)
    assert read_manifest(out).seeds == [9]


@pytest.mark.parametrize("digest", ["sha256", "none"])
def test_fetch_digest_option(server, tmp_path, digest, fetched):
    out = tmp_path / f"mlp-{digest}.safetensors"
    weightgen("fetch", str(MLP), "-o", str(out), "--digest", digest, "--server", server.address, "--no-progress")
    manifest, default = read_manifest(out), read_manifest(fetched[0])
    assert default.digest_algorithm == "xxh3_128"  # without --digest
    assert manifest.digest_algorithm == ("sha256" if digest == "sha256" else "xxh3_128")  # none: the client's XXH3
    loaded = load_file(out)
    for entry, before in zip(manifest.variables, default.variables, strict=True):
        data = np.ascontiguousarray(loaded[entry.name]).reshape(-1).view(np.uint8).tobytes()
        expected = hashlib.sha256(data).hexdigest() if digest == "sha256" else xxh3(data).hex()
        assert entry.digest == expected, entry.name
        assert (entry.digest == before.digest) == (digest == "none"), entry.name
    bad = weightgen("fetch", str(MLP), "-o", str(out), "--digest", "crc32", "--server", server.address, check=False)
    assert bad.returncode != 0 and "crc32" in bad.stderr


def test_list(server):
    result = weightgen("list", "--server", server.address)
    for name in ("he_normal", "randomUniform", "variance_scaling", "stddev=0.01", "[lower, upper]"):
        assert name in result.stdout, name
    listed = json.loads(weightgen("list", "--json", "--server", server.address).stdout)
    assert listed["generator"] == "weightgen/2" and len(listed["initializers"]) >= 23


def test_inspect(fetched):
    path, _ = fetched
    result = weightgen("inspect", str(path))
    for text in ("fc1.weight", "128x64", "F32", "manifest", "weightgen/2", "42"):
        assert text in result.stdout, text
    report = json.loads(weightgen("inspect", "--json", str(path)).stdout)
    loaded = load_file(path)
    for tensor in report["tensors"]:
        values = loaded[tensor["name"]].astype(np.float64)
        assert tensor["shape"] == list(values.shape)
        assert np.isclose(tensor["mean"], values.mean(), rtol=1e-9, atol=1e-12)
        assert np.isclose(tensor["std"], values.std(), rtol=1e-9)
        assert tensor["min"] == values.min() and tensor["max"] == values.max()
    assert report["manifest"]["request"]["seed"] == "42"


def test_verify_passes_then_fails_after_a_flipped_byte(fetched, server, tmp_path):
    path, _ = fetched
    ok = weightgen("verify", str(path))  # the server recorded in the manifest
    assert "OK: 6 tensors" in ok.stdout
    corrupted = tmp_path / "corrupted.safetensors"
    data = bytearray(path.read_bytes())
    _, tensors = read_header(path)
    target = next(t for t in tensors if t.name == "fc2.bias")
    data[target.begin + 17] ^= 0x01
    corrupted.write_bytes(bytes(data))
    bad = weightgen("verify", str(corrupted), "--server", server.address, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "fc2.bias" in bad.stdout and "1 of 6" in bad.stdout and "fc1.weight" not in bad.stdout


def test_errors_and_exit_codes(server, tmp_path):
    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text(json.dumps({"variables": {"w": "4x-2 he"}}))
    usage = weightgen("fetch", str(bad_spec), "-o", str(tmp_path / "x.safetensors"), check=False)
    assert usage.returncode == 2 and "error:" in usage.stderr and "'w'" in usage.stderr
    refused_spec = tmp_path / "refused.json"
    refused_spec.write_text(json.dumps({"seed": 1, "variables": {"u": "4 random_uniform(min=3, max=1)"}}))
    refused = weightgen(
        "fetch",
        str(refused_spec),
        "-o",
        str(tmp_path / "x.safetensors"),
        "--server",
        server.address,
        "--no-progress",
        check=False,
    )
    assert refused.returncode == 1
    assert "error: INVALID_ARGUMENT: variables[0] ('u')" in refused.stderr
    assert not (tmp_path / "x.safetensors").exists()
    missing = weightgen("inspect", str(tmp_path / "nope.safetensors"), check=False)
    assert missing.returncode == 2
    assert weightgen("frobnicate", check=False).returncode == 2


def test_retry_seconds_and_lists_of_replicas(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = weightgen("list", "--server", f"127.0.0.1:{port}", "--retry-seconds", "1", check=False)
    assert down.returncode == 1 and "error: UNAVAILABLE" in down.stderr and "retry_seconds=1" in down.stderr
    # A list of addresses is a fleet (the same replica twice here); host names must be one DNS name.
    listed = weightgen("list", "--json", "--server", f"{server.address},{server.address}")
    assert '"generator": "weightgen/2"' in listed.stdout
    names = weightgen("list", "--server", "replica-a:50051,replica-b:50051", check=False)
    assert names.returncode == 2 and "dns:///" in names.stderr, names.stderr


def test_explain_lists_each_tensor_with_the_rule_that_chose_it(tmp_path):
    (tmp_path / "tinymodel.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Embedding(10, 4, padding_idx=0), nn.Linear(4, 4), nn.LayerNorm(4))\n"
    )
    (tmp_path / "rules.json").write_text(json.dumps({"*.weight": "he_normal", "1.bias": "zeros"}))
    command = [sys.executable, "-m", "weightgen.client.cli", "explain", "--module", "tinymodel:build"]
    run = lambda *extra: subprocess.run(  # noqa: E731
        [*command, *extra], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
    )
    plain = run("--json")
    assert plain.returncode == 0, plain.stderr
    rows = {row["key"]: row for row in json.loads(plain.stdout)}
    assert list(rows) == ["0.weight", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert rows["2.weight"]["initializer"] == {"ones": {}} and rows["2.weight"]["rule"].startswith("preset torch (")
    assert rows["1.weight"]["initializer"]["kaimingUniform"]["a"] == pytest.approx(2.23606797749979)
    assert not plain.stderr  # nothing overridden, nothing to warn about

    ruled = run("--json", "--rules", "rules.json")
    assert ruled.returncode == 0, ruled.stderr
    rows = {row["key"]: row for row in json.loads(ruled.stdout)}
    assert rows["1.bias"] == {**rows["1.bias"], "rule": "rules['1.bias']", "overrides": None}
    assert rows["2.weight"]["rule"] == "rules['*.weight']" and "a norm's scale: ones" in rows["2.weight"]["overrides"]
    assert "padding row 0 zeroed" in rows["0.weight"]["overrides"]
    assert ruled.stderr.startswith("warning: a glob rule takes over tensors the preset initialises specially")
    assert len(ruled.stderr.strip().splitlines()) == 1  # one line, not wrapped

    table = run("--rules", "rules.json")
    assert "rules['*.weight'] (overrides preset torch" in table.stdout
    bad = run("--module", "tinymodel")
    assert bad.returncode == 2 and "expected 'package.module:factory'" in bad.stderr


def test_progress_and_summary_speak_the_same_units(server, tmp_path):
    out = tmp_path / "mlp.safetensors"
    result = weightgen("fetch", str(MLP), "-o", str(out), "--server", server.address)
    progress = result.stderr.strip().splitlines()[-1]
    assert "102.0/102.0 KiB" in progress and progress.rstrip().split()[-2].endswith("iB/s"), progress
    assert " kB" not in result.stderr and " MB" not in result.stderr, result.stderr
    summary = result.stdout
    assert "102.0 KiB (104,488)" in summary and "iB/s)" in summary, summary


def test_two_identical_fetches_are_byte_identical_files(fetched, server, tmp_path):
    again = tmp_path / "again.safetensors"
    weightgen("fetch", str(MLP), "-o", str(again), "--server", server.address, "--no-progress")
    assert again.read_bytes() == fetched[0].read_bytes()
    timed = tmp_path / "timed.safetensors"
    weightgen("fetch", str(MLP), "-o", str(timed), "--server", server.address, "--no-progress", "--record-time")
    assert read_manifest(timed).created and not read_manifest(again).created
    assert "created" in weightgen("inspect", str(timed)).stdout
    assert "created" not in weightgen("inspect", str(again)).stdout
