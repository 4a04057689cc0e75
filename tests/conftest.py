"""Shared fixtures. Stage-specific fixtures live next to their tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    return Path(os.environ.get("AGIR_SHARED_DIR", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared()
    if not (path / "data" / "semif_examples").is_dir():
        pytest.skip(f"shared data folder {path} not present (set AGIR_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def examples_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "semif_examples"
