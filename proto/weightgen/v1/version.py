"""Versions a user asks about: the package's, and the determinism contract's (docs/determinism.md).

The contract version names the values: every TensorInfo carries it as ``generator``, and it changes
only when the same request would give different bytes (a breaking change; determinism.md section
13). The package version changes with every release, values or not."""

from __future__ import annotations

from importlib import metadata

CONTRACT = "weightgen/2"
"""Name and version of the determinism contract; the server reports it in every TensorInfo."""

API = "weightgen.v1"
"""The protobuf package of the API."""


def package_version() -> str:
    """The installed weightgen's version ("unknown" when run from a tree that was never installed)."""
    try:
        return metadata.version("weightgen")
    except metadata.PackageNotFoundError:
        return "unknown"


def describe(part: str) -> str:
    """One line for ``--version``: ``weightgen 0.1.0 (client; contract weightgen/2, API weightgen.v1)``."""
    return f"weightgen {package_version()} ({part}; contract {CONTRACT}, API {API})"
