"""Pictures for people: one headless matplotlib and one atomic PNG writer for every stage."""

from __future__ import annotations

import io
import os
from typing import Any

from agir.runs import write_bytes


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on cluster nodes), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 90) -> None:
    """Write a figure as PNG atomically (a killed run never leaves half a picture) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    write_bytes(path, buf.getvalue())
