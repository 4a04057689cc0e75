"""Make the CVAT test-server fixtures available here until the root conftest loads them as a plugin."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from cvat_server.fixtures import cvat_env, cvat_server, cvat_server_2_23  # noqa: E402,F401
