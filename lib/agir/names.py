"""File-name-safe identifiers shared by every stage that names files after record or image ids."""

from __future__ import annotations

import hashlib
import re


def file_stem(record_id: str) -> str:
    """A file-name-safe stem; altered ids get a short hash so two ids never collide."""
    record_id = str(record_id)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", record_id)
    if safe != record_id or not safe:
        safe = f"{safe}-{hashlib.sha1(record_id.encode()).hexdigest()[:6]}"
    return safe
