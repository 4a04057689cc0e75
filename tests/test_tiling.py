"""The shared tiler's geometry."""

from __future__ import annotations

import pytest

from agir.errors import ConfigError
from agir.tiling import axis_starts, tile_grid


def test_tiles_cover_image_and_stay_inside():
    tiles = tile_grid(1000, 1500, 512, 0.25)
    covered = set()
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= 1000 and 0 <= t.x0 < t.x1 <= 1500
        assert t.height == 512 and t.width == 512
        covered.add((t.y0, t.x0))
    assert axis_starts(1000, 512, 0.25) == [0, 384, 488]
    assert axis_starts(1500, 512, 0.25) == [0, 384, 768, 988]
    assert len(tiles) == 12


def test_overlap_zero_and_exact_fit():
    assert axis_starts(1024, 512, 0.0) == [0, 512]
    assert axis_starts(1025, 512, 0.0) == [0, 512, 513]


def test_small_image_single_clipped_tile():
    tiles = tile_grid(100, 300, 512, 0.5)
    assert len(tiles) == 1 and (tiles[0].height, tiles[0].width) == (100, 300)


@pytest.mark.parametrize("size,overlap", [(512, 1.0), (512, -0.1), (8, 0.0)])
def test_invalid_settings(size, overlap):
    with pytest.raises(ConfigError):
        tile_grid(100, 100, size, overlap)
