"""The committed Python stubs are exactly what protoc generates from weightgen.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightgen.v1 import regen

COMMITTED = Path(regen.__file__).resolve().parent


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in regen.generate(tmp_path_factory.mktemp("regenerated"))}


@pytest.mark.parametrize("name", regen.GENERATED)
def test_generated_stubs_are_current(regenerated, name):
    assert regenerated[name] == (COMMITTED / name).read_bytes(), (
        f"proto/weightgen/v1/{name} differs from what protoc generates from weightgen.proto: "
        "run `make proto` and commit the result"
    )
