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


@pytest.hookimpl(tryfirst=True)  # before xdist's own (first result wins)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """make test: -n 2 --dist loadscope. Each test module runs on one worker (its module-scoped fixtures,
    e.g. a built project, are built once), and the modules with SLURM tests share one worker, so one
    single-node cluster is started: the node name and the munge daemon are the machine's."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    slurm = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("test_*.py")
             if "mark.slurm" in p.read_text(encoding="utf-8")}

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "slurm modules" if module in slurm else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests first: under xdist the long ones start early instead of ending the run alone."""
    slow = {item.nodeid.split("::")[0] for item in items
            if item.get_closest_marker("slow") or item.get_closest_marker("slurm")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)  # stable: modules stay contiguous
