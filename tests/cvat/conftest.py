"""CVAT test-server fixtures (until the root conftest loads them as a plugin) and a config factory."""

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from cvat_server.fixtures import cvat_env, cvat_server, cvat_server_2_23  # noqa: E402,F401
from cvat_server.synth import cvat_config  # noqa: E402


@pytest.fixture
def cfg_factory(tmp_path):
    """cfg_factory(**section_overrides) -> (config dict, run folder)."""

    def make(**sections):
        cfg = cvat_config(tmp_path, **sections)
        return cfg, tmp_path / "runs" / "demo" / "round_001"

    return make
