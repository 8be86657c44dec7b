"""Shared fixtures. Feature fixtures live in tests/fakes/ (Forgejo simulator, Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.configs import ConfigFactory

pytest_plugins = ["tests.fakes.forgejo", "tests.fakes.docker"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_factory(tmp_path: Path) -> ConfigFactory:
    return ConfigFactory(tmp_path)
