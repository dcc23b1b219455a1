"""`make dist` builds a wheel and an sdist, and the wheel alone is a working client: installed into
a fresh virtual environment it runs `weightgen --version`, without JAX, and `weightgen serve`
there says to install the server extra."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_dist_builds_a_wheel_that_is_a_working_client(tmp_path):
    out = tmp_path / "dist"
    built = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "dist", f"DIST={out}"], capture_output=True, text=True, timeout=300, check=False
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    version = metadata.version("weightgen")
    wheel, sdist = out / f"weightgen-{version}-py3-none-any.whl", out / f"weightgen-{version}.tar.gz"
    assert sorted(p.name for p in out.iterdir()) == sorted([wheel.name, sdist.name])

    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "client/cli.py",
        "client/torch.py",
        "client/hf.py",
        "v1/weightgen.proto",
        "v1/version.py",
        "v1/weightgen_pb2.py",
        "server/service.py",
        "server/engine/rng.py",
    ):
        assert f"weightgen/{module}" in names, module
    info = zipfile.ZipFile(wheel).read(f"weightgen-{version}.dist-info/METADATA").decode()
    base = [line for line in info.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert base and not [line for line in base if "jax" in line or "torch" in line], base
    assert 'Requires-Dist: jax>=0.4.35; extra == "server"' in info
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "proto/weightgen/v1/weightgen.proto", "server/__main__.py"} <= members

    # A client-only install from the wheel: no JAX, a working command.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    command = venv / "bin" / "weightgen"
    shown = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert shown.stdout.startswith(f"weightgen {version} (client; contract weightgen/2"), shown.stdout + shown.stderr
    no_jax = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('jax'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_jax.stdout.strip() == "None"
    serve = subprocess.run([str(command), "serve"], capture_output=True, text=True, timeout=60, check=False)
    assert serve.returncode == 2 and "pip install 'weightgen[server]'" in serve.stderr, serve.stderr
    assert "Traceback" not in serve.stderr
