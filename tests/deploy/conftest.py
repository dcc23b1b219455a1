"""Fixtures of the deployment tests: the rendered overlays (with the example session key file)."""

from __future__ import annotations

import pytest
from deployrender import OVERLAYS
from deploytree import rendered


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay) -> list[dict]:
    return rendered(f"overlays/{overlay}")
