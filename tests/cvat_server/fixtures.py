"""pytest fixtures for the CVAT test server: `cvat_server`, `cvat_env`, `cvat_server_2_23`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cvat_server.server import CvatTestServer


@pytest.fixture
def cvat_server() -> Iterator[CvatTestServer]:
    """A fresh server reporting the newest version; `.url`, `.username`, `.password`, `.token`, `.annotator`."""
    server = CvatTestServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cvat_server_2_23() -> Iterator[CvatTestServer]:
    """The same server reporting CVAT 2.23.0, the oldest supported version."""
    server = CvatTestServer(version="2.23.0").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cvat_env(cvat_server: CvatTestServer, monkeypatch: pytest.MonkeyPatch) -> CvatTestServer:
    """CVAT_* environment pointing at `cvat_server` with password login; no keys file is read."""
    for key in ("CVAT_ACCESS_TOKEN", "CVAT_ORG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_USERNAME", cvat_server.username)
    monkeypatch.setenv("CVAT_PASSWORD", cvat_server.password)
    return cvat_server
