"""The README's first examples, run as written against a real server, so that they cannot go stale:
the Python client block and every `weightgen` command of the command-line block (`make serve`
and `make test` are what CI runs; the interop and deployment blocks have their own make targets)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def commands() -> list[list[str]]:
    """Every `weightgen ...` line of the README's shell blocks, comments stripped."""
    found = []
    for body in blocks("sh"):
        for line in body.splitlines():
            if line.startswith("weightgen "):
                found.append(shlex.split(line, comments=True))
    return found


@pytest.mark.slow
def test_the_python_example_runs(server, tmp_path):
    (example,) = [b for b in blocks("python") if "from weightgen.client import Client, Variable, init" in b]
    code = example.replace('"localhost:50051"', repr(server.address))
    assert code != example  # the example names the address it connects to
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "init.safetensors").stat().st_size > 50257 * 768 * 2


@pytest.mark.slow
def test_every_weightgen_command_runs(server, tmp_path):
    found = commands()
    assert {c[1] for c in found} >= {"fetch", "inspect", "verify", "list", "explain"}, found
    # What the commands read: the repository's examples, and a (tiny) Hugging Face config.
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_head": 2,
              "n_embd": 32, "vocab_size": 100, "n_positions": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "WEIGHTGEN_SERVER": server.address, "COLUMNS": "200"}
    for command in found:
        result = subprocess.run(
            [sys.executable, "-m", "weightgen.client.cli", *command[1:]],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert (tmp_path / "gpt2.safetensors").exists() and (tmp_path / "ckpt" / "model.safetensors").exists()
