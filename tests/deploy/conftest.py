"""Fixtures of the deployment tests: the rendered overlays."""

from __future__ import annotations

import pytest
from deployrender import OVERLAYS, rendered


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay) -> list[dict]:
    return rendered(f"overlays/{overlay}")
