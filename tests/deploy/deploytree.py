"""The deploy/ tree as the deployment tests render it.

Each overlay's secretGenerator reads a session key file, ``session-keys``, that the operator makes
and never commits (deploy/README.md, "Session keys"): without it the overlay does not build, so no
committed key can reach a cluster. The tests therefore render a copy of deploy/ in which every
overlay holds deploy/session-keys.example (clearly marked example keys) as its ``session-keys``.
Key files of the checkout itself (an operator's real keys) are never copied.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import containerimage as ci
from deployrender import DEPLOY, OVERLAYS, documents, render

KEY_FILE = "session-keys"  # the file each overlay's secretGenerator reads
EXAMPLE_KEYS = DEPLOY / "session-keys.example"
RELATIVE = {
    "overlays/cpu": Path("overlays/cpu"),
    "overlays/gpu": Path("overlays/gpu"),
    "examples/trainer-job": Path("examples/trainer-job"),
}
KUSTOMIZATIONS = sorted(RELATIVE)


def copy_tree(keys: str | None) -> Path:
    """A fresh copy of deploy/ (removed at exit) whose overlays hold `keys` as their key file, or
    none if `keys` is None; returns the copy's deploy/ directory."""
    work = ci.REPO / "build"
    work.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="deploy-test-", dir=work))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    tree = root / "deploy"
    shutil.copytree(DEPLOY, tree, ignore=shutil.ignore_patterns(KEY_FILE))
    if keys is not None:
        for overlay in OVERLAYS:
            path = tree / "overlays" / overlay / KEY_FILE
            path.write_text(keys)
            path.chmod(0o600)
    return tree


@functools.cache
def tree() -> Path:
    """The copy of deploy/ with the example key file in every overlay (made once per test run)."""
    return copy_tree(EXAMPLE_KEYS.read_text())


_rendered: dict[str, str] = {}


def rendered_text(name: str) -> str:
    """The YAML of a kustomization under deploy/ (KUSTOMIZATIONS), with the example key file."""
    if name not in _rendered:
        _rendered[name] = render(tree() / RELATIVE[name])
    return _rendered[name]


def rendered(name: str) -> list[dict]:
    return documents(rendered_text(name))
