"""The first hour of a new user: versions, a client-only `serve`, busy ports and unwritable outputs
get one clear line each, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from weightgen.v1.version import CONTRACT

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "specs" / "mlp.json"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_versions_name_the_package_and_the_contract():
    from weightgen.server.engine.rng import GENERATOR

    assert CONTRACT == GENERATOR == "weightgen/2"
    version = metadata.version("weightgen")
    client = run("-m", "weightgen.client.cli", "--version")
    server = run("-m", "weightgen.server", "--version")
    assert client.returncode == 0 and server.returncode == 0, client.stderr + server.stderr
    assert client.stdout.strip() == f"weightgen {version} (client; contract {CONTRACT}, API weightgen.v1)"
    assert server.stdout.strip() == f"weightgen {version} (server; contract {CONTRACT}, API weightgen.v1)"


def test_serve_without_the_server_extra_says_what_to_install():
    # A client-only install: jax cannot be imported.
    code = "import sys; sys.modules['jax'] = None; from weightgen.client.cli import main; sys.exit(main(['serve']))"
    result = run("-c", code)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weightgen serve needs the server extra (jax is not"), lines
    assert "pip install 'weightgen[server]'" in lines[0]


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_busy_port_is_one_line_naming_the_address_and_the_flag(busy_port, flag, tmp_path):
    args = ["-m", "weightgen.server", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    args[args.index(flag) + 1] = str(busy_port)
    args += ["--devices", "1", "--warm-precisions", "", "--compilation-cache-dir", str(tmp_path)]
    result = run(*args, timeout=180)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("weightgen: cannot ") and f"127.0.0.1:{busy_port}" in last, result.stderr[-3000:]
    assert f"with {flag}" in last, last


def test_fetch_refuses_an_output_it_cannot_write_before_fetching(tmp_path):
    nowhere = ["--server", "127.0.0.1:1", "--no-progress"]  # nothing listens: a fetch would fail otherwise
    onto_dir = run("-m", "weightgen.client.cli", "fetch", str(MLP), "-o", str(tmp_path), *nowhere)
    assert onto_dir.returncode == 2, onto_dir.stderr
    assert f"error: -o {tmp_path} is a directory: give the file to write" in onto_dir.stderr
    missing = tmp_path / "no" / "such" / "w.safetensors"
    into_missing = run("-m", "weightgen.client.cli", "fetch", str(MLP), "-o", str(missing), *nowhere)
    assert into_missing.returncode == 2, into_missing.stderr
    assert f"the directory {missing.parent} does not exist" in into_missing.stderr
    assert list(tmp_path.iterdir()) == []  # no .partial left behind
