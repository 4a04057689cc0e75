"""A CVAT REST API server for tests: threaded, on 127.0.0.1, responses built with cvat_sdk models."""

from cvat_server.server import Annotator, CvatTestServer

__all__ = ["Annotator", "CvatTestServer"]
