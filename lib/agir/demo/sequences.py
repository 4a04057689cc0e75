"""Pot sequences for the active-learning simulator: an AgIR-like species pool with near-duplicates.

SemiField photographs the same pots day after day, so a real pool is made of sequences of
near-duplicate frames (growth, light and position change), most pixels are background, a few crops
are common and many weeds are rare. `make_pool` paints such a pool with the demo painter's plants:

- a *group* (`group_id`, one pot) holds one crop plant of 3 common crops; a few groups also hold
  one small rare weed (5 weed species, each in `RARE_SHARE` of the groups: 1-5 % of the images);
- the group is imaged on `days` days: plants grow, the light (brightness, colour cast, shadows)
  and the camera position (a few px shift, a small rotation) change, the plants' shapes stay;
- `make_balanced_set` paints held-out frames balanced over species (every species in the same
  number of frames, one frame per fresh group), for a validation or test set.

Everything is deterministic in the seed; nothing here changes the default demo database.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from agir.demo.painter import Canvas, _background, _soils, draw_plant, smooth_noise
from agir.demo.species import BY_NAME as CATALOGUE
from agir.demo.species import Species

# three more broad-leaved weeds of US fields, drawn in the painter's styles: at 128 px the
# catalogue's grasses and vetch are 1-2 px thin strokes, which this small model cannot learn at all
# (pilot run: barley IoU 0.0 even with the whole pool)
EXTRA = (
    Species(101, "common lambsquarters", "CHAL7", "CHEAL", "weed", "Magnoliopsida", "Caryophyllidae",
            "Caryophyllales", "Amaranthaceae", "Chenopodium", "album", "L.", "forb/herb", "annual", "#aaffc3",
            500, 200, "broad", (150, 166, 164)),
    Species(102, "velvetleaf", "ABTH", "ABUTH", "weed", "Magnoliopsida", "Dilleniidae", "Malvales", "Malvaceae",
            "Abutilon", "theophrasti", "Medik.", "forb/herb", "annual", "#808000", 500, 300, "lobed",
            (172, 192, 84)),
    Species(103, "common ragweed", "AMAR2", "AMBEL", "weed", "Magnoliopsida", "Asteridae", "Asterales",
            "Asteraceae", "Ambrosia", "artemisiifolia", "L.", "forb/herb", "annual", "#000075", 500, 200, "lobed",
            (36, 70, 48)),
)
# the weeds' own leaf colours, as a camera sees them next to the crops (the painter's catalogue gives
# every species a similar mid green): palmer amaranth dark and glossy (its red stems stay), horseweed
# a hairy grey-green rosette, lambsquarters mealy blue-grey, velvetleaf pale yellow-green, ragweed
# very dark. Without this a 0.9 M-parameter model at 128 px never told a rare weed from a crop
# (rare IoU 0.000 for the full-pool model in the first benchmark run).
_LOOK = {"palmer amaranth": (44, 96, 22), "horseweed": (132, 150, 112)}
BY_NAME = {**CATALOGUE, **{s.common_name: s for s in EXTRA},
           **{n: dataclasses.replace(CATALOGUE[n], leaf_rgb=c) for n, c in _LOOK.items()}}
CROPS = ("soybean", "upland cotton", "crimson clover")
RARE = ("palmer amaranth", "horseweed", "common lambsquarters", "velvetleaf", "common ragweed")
# share of the pool's groups (= of its images) holding each rare weed: 1-5 %, as the issue asks
RARE_SHARE = (0.05, 0.04, 0.03, 0.02, 0.01)
CLASSES = CROPS + RARE  # class index = position + 1 (0 = background)


@dataclass
class Frame:
    id: str
    group_id: str
    day: int
    rgb: np.ndarray  # uint8 (H, W, 3)
    truth: np.ndarray  # uint8 class index (0 background, i = CLASSES[i - 1])
    meta: dict = field(default_factory=dict)


@dataclass
class _Group:
    gid: str
    seed: tuple
    crop: str
    weed: str | None
    pot: tuple[float, float, float]  # cx, cy, r
    crop_r: float
    weed_at: tuple[float, float, float]  # dx, dy (pot-relative), final radius
    weed_from: int  # first day the weed shows


def _plan(rng: np.random.Generator, gid: str, seed: tuple, size: int, crop: str, weed: str | None,
          days: int) -> _Group:
    r = size * rng.uniform(0.34, 0.42)
    cx, cy = size / 2 + rng.normal(0, size * 0.04, 2)
    ang = rng.uniform(0, 2 * math.pi)
    d = r * rng.uniform(0.5, 0.75)
    # a crop that fills most of its pot and a weed of 0.4-0.55 pot radii (~1-3 % of the frame once
    # grown): the frame is still ~88 % background, as in published crop/weed sets
    return _Group(gid, seed, crop, weed, (cx, cy, r), r * rng.uniform(0.7, 0.95),
                  (d * math.cos(ang), d * math.sin(ang), r * rng.uniform(0.4, 0.55)),
                  int(rng.integers(0, max(1, days // 3))))


def _paint(g: _Group, day: int, days: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame of group `g` on `day`: the same pot and plants, grown, lit and framed anew."""
    rng = np.random.default_rng([*g.seed, 1000 + day])  # what changes day to day
    scene = np.random.default_rng([*g.seed, 1])  # what stays: fabric, soil, leaf layout
    h = w = size
    img = _background(scene, h, w)
    soil, _ = _soils(scene, h, w)
    cx, cy, r = g.pot
    yy, xx = np.ogrid[0:h, 0:w]
    d = np.hypot(xx - cx, yy - cy)
    img[(d < r) & (d >= r * 0.9)] = (30, 30, 33)
    inner = d < r * 0.9
    img[inner] = soil[inner]
    cv = Canvas(np.ascontiguousarray(img, dtype=np.float32), np.zeros((h, w), np.int32))
    growth = 0.45 + 0.55 * (day + 1) / days
    sp: list[Species] = [BY_NAME[g.crop]]
    draw_plant(cv, np.random.default_rng([*g.seed, 2]), 1, sp[0], cx, cy, g.crop_r * growth)
    if g.weed and day >= g.weed_from:
        dx, dy, wr = g.weed_at
        wg = 0.5 + 0.5 * (day - g.weed_from + 1) / (days - g.weed_from)
        sp.append(BY_NAME[g.weed])
        draw_plant(cv, np.random.default_rng([*g.seed, 3]), 2, sp[1], cx + dx, cy + dy, wr * wg)
    img, inst = cv.img, cv.inst
    # light of the day: brightness, colour cast, a soft shadow band, noise
    cast = 1 + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    img = img * cast * rng.uniform(0.8, 1.2)
    if rng.random() < 0.5:
        ang = rng.uniform(0, math.pi)
        dist = (xx - rng.uniform(0, w)) * math.cos(ang) + (yy - rng.uniform(0, h)) * math.sin(ang)
        band = np.clip(3 * (1 - np.abs(dist) / (rng.uniform(0.1, 0.25) * w)), 0, 1)
        img = img * (1 - rng.uniform(0.25, 0.5) * band)[..., None]
    img = img + smooth_noise(rng, h, w, 2)[..., None] * 5 * (inst > 0)[..., None]
    img = img + rng.standard_normal((h, w, 1)).astype(np.float32) * 2.5
    # the camera never lands twice on the same spot
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.normal(0, 6), 1.0)
    m[:, 2] += rng.normal(0, size * 0.03, 2)
    img = cv2.warpAffine(np.clip(img, 0, 255).astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    inst = cv2.warpAffine(inst.astype(np.float32), m, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT).astype(np.int32)
    truth = np.zeros((h, w), np.uint8)
    for k, s in enumerate(sp, start=1):
        truth[inst == k] = CLASSES.index(s.common_name) + 1
    return np.clip(img, 0, 255).astype(np.uint8), truth


def _frame(g: _Group, day: int, days: int, size: int) -> Frame:
    rgb, truth = _paint(g, day, days, size)
    present = [CLASSES[c - 1] for c in np.unique(truth) if c]
    areas = {CLASSES[c - 1]: int((truth == c).sum()) for c in np.unique(truth) if c}
    # the planting record names the pot's crop; a weed that grew in is not in it
    meta = {"category_common_name": g.crop, "species": ",".join(sorted(present)), "cutouts": len(present),
            "cover": round(float((truth > 0).mean()), 5),
            # the database's plant-size column (a frame is about 40 x 40 cm): what veg_random bins by
            "estimated_bbox_area_cm2": round(float((truth > 0).mean()) * 1600.0, 2), "day": day, "group_id": g.gid, "areas": areas}
    return Frame(f"{g.gid}_d{day:02d}", g.gid, day, rgb, truth, meta)


def make_pool(groups: int = 60, days: int = 6, size: int = 128, seed: int = 0) -> list[Frame]:
    """`groups` pots x `days` frames; crops spread evenly, each rare weed in RARE_SHARE of the groups (>= 1)."""
    rng = np.random.default_rng([seed, 11])
    crops = [CROPS[i % len(CROPS)] for i in rng.permutation(groups)]
    weeds: list[str | None] = [None] * groups
    free = list(rng.permutation(groups))
    for name, share in zip(RARE, RARE_SHARE):
        for _ in range(max(1, int(round(share * groups)))):
            if free:
                weeds[int(free.pop())] = name
    out = []
    for i in range(groups):
        g = _plan(rng, f"pot{i:03d}", (seed, 21, i), size, crops[i], weeds[i], days)
        out += [_frame(g, d, days, size) for d in range(days)]
    return out


def make_balanced_set(per_species: int = 6, days: int = 6, size: int = 128, seed: int = 1,
                      prefix: str = "test") -> list[Frame]:
    """`per_species` frames per species (8 species), each from its own fresh group on a random day.

    A crop's frames show that crop alone; a rare weed's frames show it with a random crop, grown
    (from the middle of the sequence on), as a held-out balanced test or validation set.
    """
    rng = np.random.default_rng([seed, 12])
    out = []
    k = 0
    for name in CLASSES:
        for _ in range(per_species):
            crop, weed = (name, None) if name in CROPS else (CROPS[int(rng.integers(0, 3))], name)
            g = _plan(rng, f"{prefix}{k:03d}", (seed, 22, k), size, crop, weed, days)
            g.weed_from = 0
            out.append(_frame(g, int(rng.integers(days // 2, days)), days, size))
            k += 1
    return out
