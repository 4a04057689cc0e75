"""A real-sized frame (9560 x 6368, 2 classes) stays within 3 GB of RAM through predict + post-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import resource, numpy as np, torch
    from agir.infer.predictor import TiledPredictor
    from agir.infer.baseline import plant_mask
    from agir.infer.postprocess import postprocess
    from agir.masks import make_classes, write_mask

    class PixelNet(torch.nn.Module):  # cheap stand-in: memory depends on the frame, not the network
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 2, 1)
        def forward(self, x):
            return self.c(x)

    h, w = 6368, 9560
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (120, 90, 60)
    img[1000:3000, 2000:5000] = (60, 150, 50)
    p = TiledPredictor(PixelNet(), head="softmax", mean=[0.5] * 3, std=[0.2] * 3, tile_size=512, overlap=0.25,
                       batch_size=4)
    mask, info = p.predict(img)
    assert mask.shape == (h, w) and info["tiles"] == 17 * 25
    mask, _ = postprocess(mask, 64, True)
    plant, _ = plant_mask(img)
    write_mask(sys.argv[1], mask, make_classes(["plant"]))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
).replace("import resource,", "import sys, resource,")


@pytest.mark.slow
def test_full_resolution_frame_stays_under_3_gb(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "m.png")], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stdout.strip().splitlines()[-1])
    assert peak_mb < 3000, f"peak RSS {peak_mb} MB"
