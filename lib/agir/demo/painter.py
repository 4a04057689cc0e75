"""Paint bench-style photographs with exact per-plant masks (the demo's stand-in for SemiField images).

A frame looks like the real SemiField benches: black woven ground cover, black pots of bark mulch
seen from above, one plant per pot, a tag or marker here and there. Species are told apart by
shape and colour (grass blades vs broad, lobed, trifoliate, vine and rosette leaves; light,
yellowish, bluish and dark greens). The frames are deliberately hard for a vegetation index:
cast shadows and leaf drop-shadows, white-balance casts and uneven light, yellowing, browning and
reddish leaves, sun glints, green moss on pots, green plastic tags, neighbouring plants of
different species that touch and overlap, camera blur, noise and JPEG compression.

`paint_bench(rng, width, height, species)` returns the RGB image, a plant-instance map (0 = none,
i = plant i) and the species index of each plant; class masks and bboxes derive from those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agir.demo.species import Species

SHIFT = 3  # sub-pixel bits for cv2 drawing
SCALE = 1 << SHIFT


@dataclass
class Canvas:
    img: np.ndarray  # float32 RGB 0..255
    inst: np.ndarray  # int32 plant instance (0 = background)

    def fill(self, pts: np.ndarray, color: Sequence[float], plant: int | None) -> None:
        p = np.round(np.asarray(pts, dtype=np.float64) * SCALE).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.img, [p], tuple(float(c) for c in color), lineType=cv2.LINE_8, shift=SHIFT)
        if plant is not None:
            cv2.fillPoly(self.inst, [p], int(plant), lineType=cv2.LINE_8, shift=SHIFT)

    def line(self, pts: np.ndarray, color: Sequence[float], thickness: int, plant: int | None) -> None:
        p = np.round(np.asarray(pts, dtype=np.float64) * SCALE).astype(np.int32).reshape(-1, 1, 2)
        thickness = max(1, int(round(thickness)))
        cv2.polylines(self.img, [p], False, tuple(float(c) for c in color), thickness, cv2.LINE_8, SHIFT)
        if plant is not None:
            cv2.polylines(self.inst, [p], False, int(plant), thickness, cv2.LINE_8, SHIFT)

    def ellipse(self, c: Sequence[float], axes: Sequence[float], angle: float, color: Sequence[float],
                plant: int | None) -> None:
        center = (int(round(c[0] * SCALE)), int(round(c[1] * SCALE)))
        ax = (max(1, int(round(axes[0] * SCALE))), max(1, int(round(axes[1] * SCALE))))
        cv2.ellipse(self.img, center, ax, angle, 0, 360, tuple(float(v) for v in color), -1, cv2.LINE_8, SHIFT)
        if plant is not None:
            cv2.ellipse(self.inst, center, ax, angle, 0, 360, int(plant), -1, cv2.LINE_8, SHIFT)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [-1, 1] with features about `cell` px across."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) * (1 - t) + np.asarray(b, dtype=np.float32) * t


# ------------------------------------------------------------------------------------------- leaves

def _centreline(base: np.ndarray, angle: float, length: float, bend: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
    heading = angle + bend * t
    step = length / (n - 1)
    d = np.stack([np.cos(heading), np.sin(heading)], axis=1) * step
    pts = base + np.concatenate([[np.zeros(2)], np.cumsum(d[:-1], axis=0)])
    normal = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    return pts, normal


def draw_leaf(cv: Canvas, plant: int, base: np.ndarray, angle: float, length: float, width: float,
              profile: str, bend: float, color: np.ndarray, tip_color: np.ndarray | None = None,
              midrib: bool = True, n: int = 10) -> None:
    """A blade or leaf along a bent centreline, shaded from base to tip, drawn as quads."""
    pts, normal = _centreline(base, angle, length, bend, n)
    t = np.linspace(0, 1, n)
    if profile == "blade":  # grass: parallel-sided, tapering to a point
        w = width * np.clip((1 - t) ** 0.7, 0, 1) * np.minimum(1, 0.6 + 3 * t)
    elif profile == "lance":  # narrow, widest a third of the way up
        w = width * np.sin(np.pi * np.clip(t, 0, 1) ** 0.75)
    else:  # ovate
        w = width * np.sin(np.pi * np.clip(t, 0, 1) ** 0.6)
    w = np.maximum(w, 0.6)
    left = pts + normal * (w[:, None] / 2)
    right = pts - normal * (w[:, None] / 2)
    for i in range(n - 1):
        c = color * (0.86 + 0.22 * t[i])  # base in the shade of the leaves above, tip in the light
        if tip_color is not None and t[i] > 0.55:
            c = _mix(c, tip_color, min(1.0, (t[i] - 0.55) / 0.45))
        cv.fill(np.array([left[i], left[i + 1], right[i + 1], right[i]]), c, plant)
    if midrib and width >= 5:
        cv.line(pts[: n - 2], color * 1.18 + 8, max(1, int(width / 9)), None)


def _leaf_color(rng: np.random.Generator, sp: Species, health: float) -> tuple[np.ndarray, np.ndarray | None]:
    base = np.asarray(sp.leaf_rgb, dtype=np.float32) * rng.uniform(0.88, 1.12) + rng.normal(0, 5, 3)
    tip = None
    r = rng.random()
    if r < 0.04 + 0.2 * health:  # yellowing leaf
        base = _mix(base, (196, 178, 72), rng.uniform(0.35, 0.85))
    elif r < 0.06 + 0.26 * health:  # browning / dead leaf
        base = _mix(base, (128, 96, 58), rng.uniform(0.5, 0.95))
    elif r < 0.12 + 0.26 * health:  # sun glint: washed-out, low-saturation green
        base = base * 1.2 + 40
    if sp.red_stems and rng.random() < 0.2:  # palmer amaranth: reddish leaves
        base = _mix(base, (132, 58, 52), rng.uniform(0.25, 0.6))
    if sp.style == "grass" and rng.random() < 0.45:
        tip = np.asarray((188, 168, 92), dtype=np.float32)  # dry tips
    return np.clip(base, 0, 255), tip


def draw_plant(cv: Canvas, rng: np.random.Generator, plant: int, sp: Species, cx: float, cy: float,
               radius: float) -> None:
    """One plant of species `sp` centred at (cx, cy) spreading about `radius` px."""
    health = rng.random() ** 3  # most plants healthy, a few chlorotic
    c = np.array([cx, cy], dtype=np.float64)
    rot = rng.uniform(0, 2 * np.pi)
    if sp.style == "grass":
        n = int(rng.integers(9, 20))
        for _ in range(n):
            col, tip = _leaf_color(rng, sp, health)
            base = c + rng.normal(0, radius * 0.04, 2)
            draw_leaf(cv, plant, base, rng.uniform(0, 2 * np.pi), radius * rng.uniform(0.45, 1.05),
                      radius * rng.uniform(0.035, 0.06), "blade", rng.uniform(-1.3, 1.3), col, tip, n=12)
    elif sp.style == "broad":  # palmer amaranth: reddish stems, ovate-lanceolate leaves on petioles
        n = int(rng.integers(6, 13))
        stem = np.asarray((150, 70, 60) if sp.red_stems else (90, 130, 60), dtype=np.float32)
        for i in range(n):
            a = rot + i * 2.39996 + rng.normal(0, 0.2)  # golden-angle phyllotaxis
            pet = radius * rng.uniform(0.12, 0.4)
            end = c + pet * np.array([np.cos(a), np.sin(a)])
            cv.line(np.array([c, end]), stem * rng.uniform(0.8, 1.1), max(2, radius * 0.018), plant)
            col, _ = _leaf_color(rng, sp, health)
            length = radius * rng.uniform(0.4, 0.62)
            draw_leaf(cv, plant, end, a + rng.normal(0, 0.25), length, length * rng.uniform(0.38, 0.5),
                      "ovate", rng.uniform(-0.4, 0.4), col)
        cv.ellipse(c, (radius * 0.06, radius * 0.06), 0, stem, plant)
    elif sp.style == "lobed":  # cotton: large palmate leaves
        n = int(rng.integers(4, 8))
        for i in range(n):
            a = rot + i * 2.39996 + rng.normal(0, 0.2)
            pet = radius * rng.uniform(0.25, 0.5)
            end = c + pet * np.array([np.cos(a), np.sin(a)])
            cv.line(np.array([c, end]), np.asarray(sp.leaf_rgb) * 1.1, max(2, radius * 0.02), plant)
            col, _ = _leaf_color(rng, sp, health)
            rl = radius * rng.uniform(0.3, 0.45)
            lobes = int(rng.integers(3, 6))
            th = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            r = rl * (0.72 + 0.28 * np.abs(np.cos(lobes * th / 2))) * (1 + 0.05 * np.sin(3 * th + a))
            leaf_c = end + rl * 0.7 * np.array([np.cos(a), np.sin(a)])
            poly = leaf_c + np.stack([r * np.cos(th + a), r * np.sin(th + a)], axis=1)
            cv.fill(poly, col * 0.92, plant)
            cv.fill(leaf_c + 0.6 * (poly - leaf_c), col * 1.04, plant)
            for k in range(lobes):
                ang = a + k * 2 * np.pi / lobes
                cv.line(np.array([leaf_c, leaf_c + rl * 0.8 * np.array([np.cos(ang), np.sin(ang)])]),
                        col * 0.8, 1, None)
    elif sp.style == "trifoliate":  # soybean (large ovals) / clover (small round leaflets)
        small = sp.common_name != "soybean"
        n = int(rng.integers(10, 22) if small else rng.integers(4, 9))
        for i in range(n):
            a = rot + i * 2.39996 + rng.normal(0, 0.3)
            pet = radius * (rng.uniform(0.3, 0.75) if small else rng.uniform(0.2, 0.45))
            end = c + pet * np.array([np.cos(a), np.sin(a)])
            cv.line(np.array([c, end]), np.asarray(sp.leaf_rgb) * 1.05, max(1, radius * 0.015), plant)
            col, _ = _leaf_color(rng, sp, health)
            ll = radius * (rng.uniform(0.1, 0.16) if small else rng.uniform(0.22, 0.32))
            ratio = 0.85 if small else 0.55
            for da in (-1.0, 0.0, 1.0):
                aa = a + da * 0.95
                lc = end + ll * np.array([np.cos(aa), np.sin(aa)])
                shade = col * rng.uniform(0.9, 1.08)
                cv.ellipse(lc, (ll, ll * ratio), math.degrees(aa), shade, plant)
                if small:  # clover's pale chevron
                    cv.ellipse(lc, (ll * 0.45, ll * 0.2), math.degrees(aa), shade * 1.25 + 15, None)
                else:
                    cv.line(np.array([lc - ll * 0.9 * np.array([np.cos(aa), np.sin(aa)]),
                                      lc + ll * 0.9 * np.array([np.cos(aa), np.sin(aa)])]), shade * 1.2, 1, None)
    elif sp.style == "vine":  # hairy vetch: wandering stems with pairs of narrow leaflets
        stems = int(rng.integers(3, 7))
        for _ in range(stems):
            a = rng.uniform(0, 2 * np.pi)
            p = c.copy()
            pts = [p.copy()]
            steps = int(radius * rng.uniform(0.9, 1.4) / 6)
            col, _ = _leaf_color(rng, sp, health)
            for s in range(steps):
                a += rng.normal(0, 0.25)
                p = p + 6 * np.array([np.cos(a), np.sin(a)])
                pts.append(p.copy())
                if s % 2 == 0:
                    for side in (-1, 1):
                        la = a + side * rng.uniform(0.8, 1.2)
                        ll = radius * rng.uniform(0.06, 0.1)
                        lc = p + ll * 0.6 * np.array([np.cos(la), np.sin(la)])
                        cv.ellipse(lc, (ll * 0.6, ll * 0.18 + 1), math.degrees(la), col * rng.uniform(0.9, 1.1), plant)
            cv.line(np.array(pts), col * 1.1, max(2, radius * 0.015), plant)
    else:  # rosette (horseweed): many narrow leaves, smaller and lighter towards the centre
        n = int(rng.integers(22, 40))
        for i in range(n):
            frac = i / n
            col, _ = _leaf_color(rng, sp, health)
            col = col * (0.9 + 0.25 * frac)
            length = radius * (0.95 - 0.6 * frac) * rng.uniform(0.8, 1.05)
            draw_leaf(cv, plant, c + rng.normal(0, 2, 2), rot + i * 2.39996, length, length * rng.uniform(0.14, 0.2),
                      "lance", rng.uniform(-0.3, 0.3), col, n=8)


# ------------------------------------------------------------------------------------------- bench

def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Black woven ground-cover fabric with coarse unevenness."""
    yy, xx = (g.astype(np.float32) for g in np.ogrid[0:h, 0:w])
    period = rng.uniform(5, 8)
    weave = np.sin((xx + yy) * 2 * np.pi / period) * np.sin((xx - yy) * 2 * np.pi / period)
    g0 = rng.uniform(48, 72)
    lum = g0 + 7 * weave + 10 * smooth_noise(rng, h, w, 120) + 4 * smooth_noise(rng, h, w, 8)
    tint = np.array([1.0, 1.0, 1.04], dtype=np.float32)
    return lum[..., None] * tint


def _soils(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Bark mulch and a gravelly potting mix: textures for the inside of pots."""
    t = np.clip(0.5 + 0.35 * smooth_noise(rng, h, w, 10) + 0.3 * smooth_noise(rng, h, w, 3), 0, 1)[..., None]
    out = []
    for dark, light in (((48, 32, 24), (138, 96, 66)), ((95, 82, 78), (170, 150, 140))):
        soil = np.asarray(dark, np.float32) + t * (np.asarray(light, np.float32) - np.asarray(dark, np.float32))
        n = int(h * w * 0.004)  # perlite specks
        soil[rng.integers(0, h, n), rng.integers(0, w, n)] = (205, 200, 190)
        out.append(soil)
    return out[0], out[1]


@dataclass
class Pot:
    cx: float
    cy: float
    r: float


def paint_bench(rng: np.random.Generator, width: int, height: int, species: Sequence[Species],
                empty_pot_fraction: float = 0.12) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(RGB uint8 image, int32 plant-instance map, species index per plant 1..N)."""
    h, w = height, width
    img = _background(rng, h, w)
    yy, xx = (g.astype(np.float32) for g in np.ogrid[0:h, 0:w])
    soil_a, soil_b = _soils(rng, h, w)
    gravel_frac = rng.uniform(0, 0.5)
    rows = int(rng.integers(2, 4))
    cols = int(rng.integers(3, 5))
    pot_r = min(w / cols, h / rows) * rng.uniform(0.36, 0.44)
    pots = []
    for i in range(rows):
        for j in range(cols):
            cx = (j + 0.5) * w / cols + rng.normal(0, pot_r * 0.12) + (pot_r * 0.5 if i % 2 else 0)
            cy = (i + 0.5) * h / rows + rng.normal(0, pot_r * 0.12)
            pots.append(Pot(cx, cy, pot_r * rng.uniform(0.92, 1.05)))
    light_dir = rng.uniform(0, 2 * np.pi)
    ldx, ldy = math.cos(light_dir), math.sin(light_dir)
    moss_layer = np.zeros((h, w), np.float32)
    for pot in pots:
        # work in a window around the pot (speed)
        x0, x1 = max(0, int(pot.cx - pot.r * 1.25)), min(w, int(pot.cx + pot.r * 1.25) + 1)
        y0, y1 = max(0, int(pot.cy - pot.r * 1.25)), min(h, int(pot.cy + pot.r * 1.25) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        ly, lx = np.ogrid[y0:y1, x0:x1]
        dx, dy = lx - pot.cx, ly - pot.cy
        d = np.hypot(dx, dy)
        win = img[y0:y1, x0:x1]
        # the pot's wall casts a crescent on the fabric opposite the light
        sd = np.hypot(dx + ldx * pot.r * 0.12, dy + ldy * pot.r * 0.12)
        win[(sd < pot.r * 1.08) & (d >= pot.r)] *= 0.55
        rim = (d < pot.r) & (d >= pot.r * 0.9)
        win[rim] = (30, 30, 33)
        win[rim & ((dx * ldx + dy * ldy) < -pot.r * 0.6)] = (88, 88, 92)
        inner = d < pot.r * 0.9
        src = (soil_b if rng.random() < gravel_frac else soil_a)[y0:y1, x0:x1]
        win[inner] = src[inner]
        if rng.random() < 0.2:  # moss and algae creeping on the soil and rim
            for _ in range(int(rng.integers(1, 3))):
                ang = rng.uniform(0, 2 * np.pi)
                mx, my = pot.r * 0.8 * math.cos(ang), pot.r * 0.8 * math.sin(ang)
                blob = (np.hypot(dx - mx, dy - my) < pot.r * rng.uniform(0.12, 0.28)) & (d < pot.r)
                moss_layer[y0:y1, x0:x1][blob] = 1.0
    if moss_layer.any():
        tex = np.clip(0.55 + 0.5 * smooth_noise(rng, h, w, 4), 0, 1) * moss_layer
        moss_rgb = np.asarray((98, 116, 56), np.float32) * (0.8 + 0.4 * smooth_noise(rng, h, w, 15))[..., None]
        img = img * (1 - tex[..., None]) + moss_rgb * tex[..., None]

    cv = Canvas(np.ascontiguousarray(img, dtype=np.float32), np.zeros((h, w), np.int32))
    # tags first: plants grow over them
    for _ in range(int(rng.poisson(1.2))):
        tx, ty = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, np.pi)
        tl, tw = rng.uniform(0.025, 0.045) * w, rng.uniform(0.008, 0.014) * w
        box = cv2.boxPoints(((tx, ty), (tl, tw), math.degrees(ang)))
        if rng.random() < 0.6:
            cv.fill(box, _mix((40, 150, 62), (110, 195, 90), rng.random()), None)  # green plastic label
        else:
            s = rng.uniform(0.02, 0.035) * w
            sq = cv2.boxPoints(((tx, ty), (s, s), math.degrees(ang)))
            cv.fill(sq, (225, 225, 220), None)  # white marker with a black pattern
            cv.ellipse((tx, ty), (s * 0.25, s * 0.25), 0, (25, 25, 25), None)

    plant_species: list[int] = []
    order = rng.permutation(len(pots))
    # few species per frame, neighbours of different species
    frame_species = rng.choice(len(species), size=min(len(species), int(rng.integers(2, 4))), replace=False,
                               p=np.asarray([s.weight for s in species]) / sum(s.weight for s in species))
    for idx in order:
        if rng.random() < empty_pot_fraction:
            continue
        pot = pots[idx]
        si = int(frame_species[rng.integers(0, len(frame_species))])
        sp = species[si]
        scale = {"grass": 1.25, "lobed": 1.25, "vine": 1.1, "rosette": 0.9, "broad": 1.05}.get(sp.style, 1.0)
        radius = pot.r * scale * rng.uniform(0.75, 1.6)
        plant_species.append(si)
        draw_plant(cv, rng, len(plant_species), sp, pot.cx + rng.normal(0, pot.r * 0.1),
                   pot.cy + rng.normal(0, pot.r * 0.1), radius)

    img = cv.img
    plant = cv.inst > 0
    # leaf drop shadows on whatever lies below
    sh = np.zeros((h, w), np.float32)
    off = rng.uniform(6, 14)
    m = np.float32([[1, 0, -ldx * off], [0, 1, -ldy * off]])
    sh = cv2.warpAffine(plant.astype(np.float32), m, (w, h))
    sh = cv2.GaussianBlur(sh, (0, 0), 4)
    img *= (1 - 0.5 * sh * (~plant))[..., None]
    # cast shadows from the gantry: soft bands across the frame
    for _ in range(int(rng.integers(0, 3))):
        ang = rng.uniform(0, np.pi)
        dist = (xx - rng.uniform(0, w)) * math.cos(ang) + (yy - rng.uniform(0, h)) * math.sin(ang)
        band = np.clip(1 - np.abs(dist) / rng.uniform(0.05, 0.15) / w, 0, 1)
        band = np.clip(band * 3, 0, 1)
        img *= (1 - rng.uniform(0.3, 0.55) * band)[..., None]
    # uneven light, vignette, white-balance cast
    grad = 1 + rng.uniform(-0.18, 0.18) * (xx / w - 0.5) + rng.uniform(-0.18, 0.18) * (yy / h - 0.5)
    vig = 1 - 0.25 * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)
    cast = np.array(
        [(1.0, 1.0, 1.0), (1.12, 1.0, 0.82), (0.88, 0.98, 1.15), (1.08, 0.92, 1.06), (0.95, 1.06, 0.92)][
            int(rng.integers(0, 5))], np.float32)
    cast = 1 + (cast - 1) * rng.uniform(0.5, 1.2)
    img *= (grad * vig)[..., None] * cast * rng.uniform(0.85, 1.2)
    # leaf texture, sensor noise, lens blur
    img += smooth_noise(rng, h, w, 2)[..., None] * 6 * plant[..., None]
    img += rng.standard_normal(size=(h, w, 1), dtype=np.float32) * 2.5
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.8))
    return np.clip(img, 0, 255).astype(np.uint8), cv.inst, plant_species


def exg_otsu(rgb: np.ndarray) -> np.ndarray:
    """Excess-green (2g - r - b on chromatic coordinates) thresholded with Otsu: the plain baseline."""
    f = rgb.astype(np.float32)
    s = f.sum(axis=2) + 1e-6
    exg = (2 * f[..., 1] - f[..., 0] - f[..., 2]) / s
    u8 = np.clip((exg + 1) * 127.5, 0, 255).astype(np.uint8)
    _, th = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return th.astype(bool)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0
