"""The procedural object bank: plausible road obstacles and oddities, drawn from their id.

Animals as articulated shapes (dog, cow, deer: body, legs, neck, head, tail), cardboard boxes,
tyres, rocks, debris, furniture (chair, sofa, table), traffic cones, barrels, suitcases and
sacks. Each object is a pure function of its id (``bank:<category>-<NNNN>``): the id seeds a
numpy Generator through a stable hash. Objects are drawn side-on in metric units at a fixed
resolution (``PX_PER_M``), so every crop also knows its real height (``height_m``), which lets
the demo data paste them at a physically consistent size.

Colours are chosen away from the world's asphalt grey and car paints, yet muted (browns, tans,
fabric tones, rust, stone): anomalies are findable but not trivially neon.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from anomseg.errors import InputError
from anomseg.synth.sources import OBJECT_SOURCES, SourceObject
from anomseg.world.textures import jitter, sample_tile, tile_noise

SOURCE_NAME = "bank"
PX_PER_M = 120.0
MAX_SIDE_PX = 240
PER_CATEGORY = 200


class _Sketch:
    """A small canvas in metres (u right, v up, origin at the bottom centre)."""

    def __init__(self, rng: np.random.Generator, width_m: float, height_m: float) -> None:
        ppm = min(PX_PER_M, MAX_SIDE_PX / max(width_m, height_m))
        self.ppm = ppm
        self.rng = rng
        w, h = max(4, int(math.ceil(width_m * ppm)) + 4), max(4, int(math.ceil(height_m * ppm)) + 4)
        self.u = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2) / ppm)[None, :]
        self.v = ((h - 2 - np.arange(h, dtype=np.float32) - 0.5) / ppm)[:, None]
        self.rgb = np.zeros((h, w, 3), dtype=np.float32)
        self.mask = np.zeros((h, w), dtype=bool)
        self.tile = tile_noise(rng, 64, 8, 3)
        self.grain = tile_noise(rng, 64, 16, 2)
        self.off = rng.uniform(0, 64, 2).astype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def noise(self, per_m: float, fine: bool = False) -> np.ndarray:
        """Tileable noise sampled at ``per_m`` tile pixels per metre, full canvas shape."""
        t = self.grain if fine else self.tile
        return np.broadcast_to(
            sample_tile(t, self.u * per_m + self.off[0], self.v * per_m + self.off[1]), self.shape
        )

    def fill(self, region: np.ndarray, colour, shade: np.ndarray | float = 1.0) -> None:
        """Paint ``colour`` (RGB, or an (h, w, 3) array) times ``shade`` where ``region``."""
        region = np.broadcast_to(region, self.shape)
        val = np.asarray(colour, np.float32) * np.asarray(shade, np.float32)[..., None]
        self.rgb[region] = np.broadcast_to(val, (*self.shape, 3))[region]
        self.mask |= region

    def cut(self, region: np.ndarray) -> None:
        """Remove pixels (holes, e.g. the inside of a tyre)."""
        self.mask &= ~np.broadcast_to(region, self.shape)

    # -- shapes (all in metres) ---------------------------------------------------------------
    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        du, dv = self.u - cx, self.v - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            du, dv = c * du + s * dv, -s * du + c * dv
        return (du / rx) ** 2 + (dv / ry) ** 2 <= 1.0

    def capsule(
        self, ax: float, ay: float, bx: float, by: float, ra: float, rb: float | None = None
    ) -> np.ndarray:
        rb = ra if rb is None else rb
        px, py = self.u - ax, self.v - ay
        dx, dy = bx - ax, by - ay
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        r = ra + (rb - ra) * t
        return (px - t * dx) ** 2 + (py - t * dy) ** 2 <= r * r

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.u >= x0) & (self.u <= x1) & (self.v >= y0) & (self.v <= y1)

    def polygon(self, pts: Sequence[tuple[float, float]]) -> np.ndarray:
        """Even-odd fill of a simple polygon given as (u, v) vertices."""
        inside = np.zeros(self.shape, dtype=bool)
        n = len(pts)
        for i in range(n):
            (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
            if y0 == y1:
                continue
            cond = (self.v >= min(y0, y1)) & (self.v < max(y0, y1))
            xc = x0 + (self.v - y0) * (x1 - x0) / (y1 - y0)
            inside ^= cond & (self.u < xc)
        return inside

    def round_rect(self, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
        cx, cy = np.clip(self.u, x0 + r, x1 - r), np.clip(self.v, y0 + r, y1 - r)
        return (self.u - cx) ** 2 + (self.v - cy) ** 2 <= r * r

    def dome(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """Fake sphere lighting in [0.6, 1.15]: lit from the upper left."""
        du, dv = (self.u - cx) / rx, (self.v - cy) / ry
        return np.clip(1.0 - 0.25 * du + 0.25 * dv - 0.2 * (du * du + dv * dv), 0.6, 1.15)

    def result(self, object_id: str, category: str) -> tuple[SourceObject, float]:
        if not self.mask.any():
            raise RuntimeError(f"object {object_id} came out empty")
        ys, xs = np.nonzero(self.mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        rgb = np.clip(self.rgb[y0:y1, x0:x1] + 0.5, 0, 255).astype(np.uint8)
        mask = self.mask[y0:y1, x0:x1].copy()
        rgb[~mask] = 0
        rgb.flags.writeable = False
        mask.flags.writeable = False
        return SourceObject(id=object_id, rgb=rgb, mask=mask, category=category), (
            y1 - y0
        ) / self.ppm


# --------------------------------------------------------------------------------------------
# animals


def _quadruped(
    sk: _Sketch,
    rng: np.random.Generator,
    *,
    body_len: float,
    body_h: float,
    leg: float,
    neck: float,
    head: tuple[float, float],
    fur,
    belly=None,
    patches=None,
    tail: str = "hang",
    ears: str = "up",
    antlers: bool = False,
    horns: bool = False,
) -> None:
    top = leg + body_h
    cy = leg + body_h / 2
    fur = np.asarray(fur, np.float32)
    hair = 0.85 + 0.25 * sk.noise(40, fine=True) + 0.1 * sk.noise(6)
    phase = rng.uniform(0, 2 * math.pi)
    hips = ((-0.36 * body_len, 0.45), (0.34 * body_len, 0.0))
    # Far legs first and darker; then body, near legs, neck and head.
    for near in (False, True):
        for hx, ph in hips:
            swing = 0.18 * leg * math.sin(phase + ph * 7 + (math.pi if near else 0))
            knee = (hx + 0.5 * swing + (0.04 if hx > 0 else -0.06), 0.48 * leg)
            foot = (hx + swing, 0.0)
            thick = 0.075 * body_h + 0.035
            region = sk.capsule(hx, leg + 0.15 * body_h, *knee, thick * 1.4, thick) | sk.capsule(
                *knee, foot[0], foot[1] + thick * 0.6, thick, thick * 0.7
            )
            sk.fill(region, fur, hair * (1.0 if near else 0.72))
            hoof = sk.ellipse(foot[0] + 0.02, thick * 0.6, thick * 1.05, thick * 0.7)
            sk.fill(hoof & region, fur * (0.8 if tail == "curl" else 0.4), 0.8)  # paws / hooves
        if not near:
            # Tail behind the body.
            bx = -body_len / 2
            if tail == "curl":
                region = sk.capsule(
                    bx + 0.03, top - 0.05, bx - 0.12 * body_len, top + 0.15 * body_h, 0.045, 0.03
                )
            elif tail == "short":
                region = sk.ellipse(
                    bx - 0.02, top - 0.1 * body_h, 0.05 + 0.06 * body_h, 0.1 * body_h + 0.03, 0.6
                )
            else:
                region = sk.capsule(bx + 0.03, top - 0.05, bx - 0.06, leg * 0.5, 0.04, 0.025)
                region |= sk.ellipse(bx - 0.06, leg * 0.45, 0.05, 0.1)
            sk.fill(region, fur, hair * 0.85)
            body = sk.ellipse(0, cy, body_len / 2, body_h / 2)
            body |= sk.ellipse(0.3 * body_len, cy + 0.05 * body_h, 0.22 * body_len, body_h * 0.52)
            shade = hair * sk.dome(0, cy, body_len / 2, body_h / 2)
            sk.fill(body, fur, shade)
            if belly is not None:
                sk.fill(body & (sk.v < cy - 0.2 * body_h), belly, shade)
            if patches is not None:
                blot = sk.noise(3.5) > 0.55
                sk.fill(body & blot, patches, shade)
    # Neck and head, in front and above the shoulders.
    hl, hh = head
    nx0, ny0 = 0.38 * body_len, cy + 0.15 * body_h
    ang = rng.uniform(0.5, 1.1)  # neck elevation
    nx1, ny1 = nx0 + neck * math.cos(ang), ny0 + neck * math.sin(ang)
    sk.fill(sk.capsule(nx0, ny0, nx1, ny1, 0.32 * body_h, 0.45 * hh), fur, hair * 0.95)
    tilt = -rng.uniform(0.3, 0.8)
    hx, hy = nx1 + 0.35 * hl * math.cos(tilt), ny1 + 0.35 * hl * math.sin(tilt)
    skull = sk.ellipse(nx1 + 0.05 * hl, ny1, 0.38 * hl, hh / 2, tilt)
    snout = sk.ellipse(
        hx + 0.15 * hl * math.cos(tilt), hy + 0.15 * hl * math.sin(tilt), 0.3 * hl, hh * 0.33, tilt
    )
    sk.fill(skull | snout, fur, hair * sk.dome(hx, hy, hl, hh))
    nose = sk.ellipse(
        hx + 0.42 * hl * math.cos(tilt),
        hy + 0.42 * hl * math.sin(tilt),
        0.06 * hl + 0.01,
        0.06 * hl + 0.01,
    )
    sk.fill(nose & (skull | snout), (30, 25, 25))
    eye = sk.ellipse(nx1 + 0.12 * hl, ny1 + 0.12 * hh, 0.025, 0.025)
    sk.fill(eye, (15, 12, 10))
    if ears == "up":
        sk.fill(
            sk.polygon(
                [
                    (nx1 - 0.12 * hl, ny1 + 0.3 * hh),
                    (nx1 + 0.02 * hl, ny1 + 0.35 * hh),
                    (nx1 - 0.1 * hl, ny1 + 0.95 * hh),
                ]
            ),
            fur,
            0.8,
        )
    else:
        sk.fill(
            sk.ellipse(nx1 - 0.12 * hl, ny1 - 0.05 * hh, 0.1 * hl, 0.4 * hh, 0.3), fur * 0.7, 0.9
        )
    if antlers:
        bx, by = nx1 - 0.05 * hl, ny1 + 0.4 * hh
        for k, (dx, dy) in enumerate(((-0.12, 0.35), (0.05, 0.45))):
            ex, ey = bx + dx, by + dy
            sk.fill(sk.capsule(bx, by, ex, ey, 0.018, 0.012), (120, 100, 75))
            for j in range(2):
                t = 0.45 + 0.3 * j
                px, py = bx + dx * t, by + dy * t
                sk.fill(
                    sk.capsule(px, py, px + 0.1 + 0.03 * k, py + 0.1, 0.012, 0.008), (120, 100, 75)
                )
    if horns:
        sk.fill(
            sk.capsule(
                nx1 - 0.05 * hl, ny1 + 0.4 * hh, nx1 + 0.05 * hl, ny1 + 0.7 * hh, 0.03, 0.015
            ),
            (215, 205, 180),
        )


def _dog(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    body_len = rng.uniform(0.45, 0.85)
    body_h = body_len * rng.uniform(0.38, 0.5)
    leg = body_len * rng.uniform(0.5, 0.75)
    sk = sk_factory(body_len * 1.9 + 0.3, leg + body_h + 0.55 * body_len)
    fur = [
        (165, 120, 70),
        (60, 45, 35),
        (195, 170, 130),
        (130, 110, 95),
        (150, 85, 45),
        (220, 205, 180),
    ][rng.integers(6)]
    belly = (225, 210, 185) if rng.random() < 0.4 else None
    _quadruped(
        sk,
        rng,
        body_len=body_len,
        body_h=body_h,
        leg=leg,
        neck=0.28 * body_len,
        head=(0.45 * body_len, 0.3 * body_len),
        fur=jitter(rng, fur, 0.08),
        belly=belly,
        tail="curl" if rng.random() < 0.6 else "hang",
        ears="up" if rng.random() < 0.5 else "flop",
    )
    return sk


def _cow(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    body_len = rng.uniform(1.6, 2.1)
    body_h = body_len * rng.uniform(0.38, 0.45)
    leg = rng.uniform(0.6, 0.8)
    sk = sk_factory(body_len * 1.6 + 0.5, leg + body_h + 0.6)
    if rng.random() < 0.55:
        fur, patches = (225, 220, 210), [(35, 30, 28), (120, 70, 40)][rng.integers(2)]
    else:
        fur, patches = [(140, 85, 50), (95, 60, 40), (185, 150, 110)][rng.integers(3)], None
    _quadruped(
        sk,
        rng,
        body_len=body_len,
        body_h=body_h,
        leg=leg,
        neck=0.25,
        head=(0.55, 0.32),
        fur=jitter(rng, fur, 0.06),
        patches=patches,
        tail="hang",
        ears="flop",
        horns=bool(rng.random() < 0.5),
    )
    return sk


def _deer(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    body_len = rng.uniform(1.0, 1.4)
    body_h = body_len * rng.uniform(0.38, 0.45)
    leg = rng.uniform(0.7, 0.95)
    sk = sk_factory(body_len * 1.7 + 0.4, leg + body_h + 0.95)
    fur = jitter(rng, [(150, 105, 65), (125, 90, 60), (170, 125, 80)][rng.integers(3)], 0.06)
    _quadruped(
        sk,
        rng,
        body_len=body_len,
        body_h=body_h,
        leg=leg,
        neck=0.5,
        head=(0.36, 0.18),
        fur=fur,
        belly=(205, 185, 160),
        tail="short",
        ears="up",
        antlers=bool(rng.random() < 0.5),
    )
    return sk


# --------------------------------------------------------------------------------------------
# things


def _box(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    w, h, dpt = rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.65), rng.uniform(0.25, 0.6)
    stack = int(rng.choice([1, 1, 2, 3]))
    ox, oy = 0.35 * dpt, 0.25 * dpt  # oblique projection of the depth axis
    sk = sk_factory(w * 1.3 + ox + 0.2, h * stack + oy + 0.1)
    base = 0.0
    for k in range(stack):
        col = jitter(
            rng,
            [(185, 145, 95), (165, 125, 80), (200, 170, 120), (140, 110, 75)][rng.integers(4)],
            0.06,
        )
        shift = rng.uniform(-0.1, 0.1) * w if k else 0.0
        x0 = -w / 2 - ox / 2 + shift
        x1 = x0 + w
        y0, y1 = base, base + h
        front = sk.rect(x0, y0, x1, y1)
        top = sk.polygon([(x0, y1), (x1, y1), (x1 + ox, y1 + oy), (x0 + ox, y1 + oy)])
        side = sk.polygon([(x1, y0), (x1 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1, y1)])
        grain = 0.9 + 0.15 * sk.noise(20, fine=True)
        sk.fill(side, col, 0.72 * grain)
        sk.fill(top, col, 1.12 * grain)
        sk.fill(front, col, grain)
        tape = top & (np.abs(sk.u - (x0 + x1 + ox) / 2 - (sk.v - y1) * ox / oy * 0) < 0.04)
        sk.fill(tape, (205, 190, 150), 1.0)
        seam = front & (np.abs(sk.v - (y1 - 0.03)) < 0.01)
        sk.fill(seam, col, 0.7)
        if rng.random() < 0.5:
            label = sk.rect(x0 + 0.1 * w, y0 + 0.45 * h, x0 + 0.45 * w, y0 + 0.75 * h)
            sk.fill(label, (225, 225, 215))
        base = y1
    return sk


def _tyre(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    R = rng.uniform(0.28, 0.4)
    lying = rng.random() < 0.35
    sk = sk_factory(2 * R + 0.3, (0.6 * R if lying else 2 * R) + 0.25)
    rubber = jitter(rng, (38, 36, 36), 0.1)
    if lying:
        ry = R * rng.uniform(0.25, 0.4)
        t = rng.uniform(0.16, 0.24)
        outer = sk.ellipse(0, ry + t, R, ry) | sk.rect(-R, ry, R, ry + t) | sk.ellipse(0, ry, R, ry)
        sk.fill(outer, rubber, 0.9 + 0.2 * sk.noise(25, fine=True))
        top = sk.ellipse(0, ry + t, R, ry)
        sk.fill(top, rubber, 1.15)
        sk.cut(sk.ellipse(0, ry + t, 0.55 * R, 0.55 * ry))
        sk.fill(
            sk.ellipse(0, ry + t, 0.55 * R, 0.55 * ry) & (sk.v < ry + t - 0.2 * ry), rubber, 0.5
        )
    else:
        squash = rng.uniform(0.35, 1.0)
        cx, cy = 0.0, R
        outer = sk.ellipse(cx, cy, R * squash, R)
        tread = ((sk.v * 30) % 1.0) < 0.5
        sk.fill(outer, rubber, np.where(tread, 0.85, 1.05) * sk.dome(cx, cy, R, R))
        hub = sk.ellipse(cx, cy, 0.6 * R * squash, 0.6 * R)
        if rng.random() < 0.5:
            sk.fill(hub, jitter(rng, (150, 150, 145), 0.1), sk.dome(cx, cy, 0.6 * R, 0.6 * R))
            sk.fill(sk.ellipse(cx, cy, 0.15 * R * squash, 0.15 * R), (70, 70, 70))
        else:
            sk.cut(sk.ellipse(cx, cy, 0.5 * R * squash, 0.5 * R))
    return sk


def _rock(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    r = rng.uniform(0.15, 0.45)
    sk = sk_factory(2.5 * r + 0.1, 2.2 * r + 0.1)
    n = 7 + int(rng.integers(6))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.8, 1.15, n)
    flat = rng.uniform(0.6, 0.9)
    cy = 0.75 * r * flat
    pts = [
        (float(a * math.cos(t)), float(cy + a * math.sin(t) * flat))
        for a, t in zip(rad, ang, strict=True)
    ]
    region = sk.polygon(pts) & (sk.v >= 0)
    col = jitter(
        rng, [(135, 125, 112), (112, 100, 92), (150, 135, 118), (98, 86, 78)][rng.integers(4)], 0.03
    )
    facets = 0.8 + 0.35 * sk.noise(6) + 0.15 * sk.noise(30, fine=True)
    sk.fill(region, col, facets * sk.dome(0, cy, r, r * flat))
    return sk


def _debris(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    span = rng.uniform(0.6, 1.5)
    sk = sk_factory(span + 0.3, 0.5)
    wood = rng.random() < 0.7
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(-0.35, 0.35) * span, rng.uniform(0.04, 0.25)
        length, th = rng.uniform(0.4, 1.0) * span, rng.uniform(0.03, 0.09)
        a = rng.uniform(-0.35, 0.35)
        region = (
            sk.ellipse(cx, cy, length / 2, th, a)
            if not wood
            else (
                (np.abs((sk.u - cx) * math.cos(a) + (sk.v - cy) * math.sin(a)) < length / 2)
                & (np.abs(-(sk.u - cx) * math.sin(a) + (sk.v - cy) * math.cos(a)) < th)
            )
        )
        if wood:
            col = jitter(
                rng, [(150, 110, 70), (120, 90, 60), (175, 140, 95)][rng.integers(3)], 0.08
            )
            grain = 0.85 + 0.3 * sk.noise(25, fine=True)
        else:
            col = jitter(rng, [(130, 75, 45), (105, 95, 85), (150, 90, 55)][rng.integers(3)], 0.1)
            grain = 0.75 + 0.45 * sk.noise(12)
        sk.fill(region & (sk.v >= 0), col, grain)
    return sk


def _chair(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    w, seat, back = rng.uniform(0.4, 0.5), rng.uniform(0.42, 0.48), rng.uniform(0.35, 0.5)
    sk = sk_factory(w + 0.4, seat + back + 0.1)
    col = jitter(
        rng,
        [(150, 105, 65), (120, 80, 50), (215, 210, 200), (70, 110, 80), (160, 60, 45)][
            rng.integers(5)
        ],
        0.06,
    )
    grain = 0.9 + 0.15 * sk.noise(20, fine=True)
    leg = 0.025
    sk.fill(
        sk.rect(w / 2 - 0.02, 0, w / 2 + 2 * leg, seat)
        | sk.rect(-w / 2 + 0.12, 0, -w / 2 + 0.12 + 2 * leg, seat),
        col,
        0.65 * grain,
    )
    sk.fill(
        sk.rect(-w / 2, 0, -w / 2 + 2 * leg, seat + back)
        | sk.rect(w / 2 - 2 * leg + 0.06, 0, w / 2 + 0.06, seat),
        col,
        0.85 * grain,
    )
    sk.fill(sk.rect(-w / 2, seat - 0.04, w / 2 + 0.06, seat + 0.02), col, grain * 1.05)
    slats = sk.rect(-w / 2, seat + 0.1, -w / 2 + 0.05, seat + back) | sk.rect(
        -w / 2, seat + back - 0.12, -w / 2 + 0.08, seat + back
    )
    sk.fill(slats, col, grain)
    return sk


def _sofa(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    w, h = rng.uniform(1.5, 2.2), rng.uniform(0.75, 0.95)
    seat, arm = 0.45, rng.uniform(0.5, 0.7)
    sk = sk_factory(w + 0.2, h + 0.05)
    col = jitter(
        rng,
        [
            (60, 110, 105),
            (185, 150, 65),
            (120, 45, 50),
            (110, 110, 65),
            (190, 175, 150),
            (140, 95, 120),
        ][rng.integers(6)],
        0.06,
    )
    fabric = 0.88 + 0.18 * sk.noise(30, fine=True)
    sk.fill(sk.round_rect(-w / 2 + 0.05, seat - 0.05, w / 2 - 0.05, h, 0.08), col, 0.8 * fabric)
    sk.fill(sk.round_rect(-w / 2 + 0.12, 0.1, w / 2 - 0.12, seat, 0.05), col, fabric)
    for x in (-w / 2, w / 2 - 0.2):
        sk.fill(sk.round_rect(x, 0.08, x + 0.2, arm, 0.07), col, 1.05 * fabric)
    gap = (np.abs(sk.u) < 0.01) & (sk.v > 0.15) & (sk.v < seat)
    sk.fill(gap, col, 0.6)
    for x in (-w / 2 + 0.1, w / 2 - 0.15):
        sk.fill(sk.rect(x, 0, x + 0.05, 0.1), (60, 45, 35))
    return sk


def _table(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    w, h = rng.uniform(0.8, 1.6), rng.uniform(0.7, 0.78)
    sk = sk_factory(w + 0.2, h + 0.05)
    col = jitter(
        rng, [(160, 115, 70), (130, 90, 55), (200, 190, 170), (95, 70, 50)][rng.integers(4)], 0.06
    )
    grain = 0.88 + 0.2 * sk.noise(15, fine=True)
    legs = sk.rect(-w / 2 + 0.05, 0, -w / 2 + 0.11, h) | sk.rect(w / 2 - 0.11, 0, w / 2 - 0.05, h)
    back = sk.rect(-w / 2 + 0.2, 0.05, -w / 2 + 0.25, h) | sk.rect(
        w / 2 - 0.25, 0.05, w / 2 - 0.2, h
    )
    sk.fill(back, col, 0.6 * grain)
    sk.fill(legs, col, 0.85 * grain)
    sk.fill(sk.rect(-w / 2, h - 0.05, w / 2, h), col, grain)
    sk.fill(sk.rect(-w / 2 + 0.05, h - 0.12, w / 2 - 0.05, h - 0.05), col, 0.7 * grain)
    return sk


def _cone(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    h = rng.uniform(0.45, 0.75)
    b = h * rng.uniform(0.28, 0.34)
    sk = sk_factory(2 * b + 0.2, h + 0.05)
    orange = jitter(rng, (215, 105, 45), 0.05)
    body = sk.polygon([(-b * 0.8, 0.04), (b * 0.8, 0.04), (0.06 * b, h), (-0.06 * b, h)])
    shade = np.clip(1.05 - 0.5 * (sk.u / b) ** 2, 0.6, 1.1)
    sk.fill(body, orange, shade)
    for y in (0.45 * h, 0.68 * h):
        sk.fill(body & (np.abs(sk.v - y) < 0.06 * h), (225, 225, 220), shade)
    sk.fill(sk.rect(-b, 0, b, 0.05), (45, 45, 45))
    return sk


def _barrel(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    r, h = rng.uniform(0.28, 0.32), rng.uniform(0.85, 0.95)
    sk = sk_factory(2 * r + 0.1, h + 0.15)
    col = jitter(
        rng,
        [(45, 85, 140), (140, 70, 40), (65, 110, 65), (190, 160, 55), (110, 45, 40)][
            rng.integers(5)
        ],
        0.06,
    )
    ry = 0.1 * r
    shade = np.clip(1.1 - 0.6 * (sk.u / r + 0.3) ** 2, 0.5, 1.15)
    rust = sk.noise(8) > 0.62
    body = sk.rect(-r, ry, r, h) | sk.ellipse(0, ry, r, ry)
    sk.fill(body, col, shade)
    sk.fill(body & rust, (115, 70, 45), shade)
    for y in (h * 0.33, h * 0.66):
        sk.fill(body & (np.abs(sk.v - y - ry * (1 - (sk.u / r) ** 2)) < 0.015), col, shade * 0.7)
    sk.fill(sk.ellipse(0, h, r, ry), col, 1.2)
    return sk


def _suitcase(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    w, h = rng.uniform(0.4, 0.6), rng.uniform(0.55, 0.75)
    sk = sk_factory(w + 0.1, h + 0.2)
    col = jitter(
        rng,
        [(120, 40, 45), (60, 100, 95), (150, 130, 90), (90, 60, 110), (170, 110, 60)][
            rng.integers(5)
        ],
        0.06,
    )
    body = sk.round_rect(-w / 2, 0.05, w / 2, h, 0.05)
    sk.fill(body, col, 0.9 + 0.15 * sk.noise(10) + 0.1 * np.clip(-sk.u / w, -1, 1))
    for x in (-w / 4, w / 4):
        sk.fill(body & (np.abs(sk.u - x) < 0.01), col, 0.7)
    handle = (
        sk.rect(-0.08, h, -0.06, h + 0.12)
        | sk.rect(0.06, h, 0.08, h + 0.12)
        | sk.rect(-0.08, h + 0.1, 0.08, h + 0.12)
    )
    sk.fill(handle, (50, 50, 50))
    sk.fill(
        sk.ellipse(-w / 2 + 0.06, 0.04, 0.04, 0.04) | sk.ellipse(w / 2 - 0.06, 0.04, 0.04, 0.04),
        (30, 30, 30),
    )
    return sk


def _sack(sk_factory: Callable[[float, float], _Sketch], rng: np.random.Generator) -> _Sketch:
    w, h = rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.55)
    sk = sk_factory(w + 0.2, h + 0.15)
    col = jitter(
        rng,
        [(200, 185, 150), (175, 160, 120), (225, 220, 205), (130, 120, 90)][rng.integers(4)],
        0.06,
    )
    wob = 1 + 0.12 * np.sin(np.arctan2(sk.v - h / 2, sk.u) * 5 + rng.uniform(0, 6))
    region = ((sk.u / (w / 2)) ** 2 + ((sk.v - h / 2) / (h / 2)) ** 2 < wob) & (sk.v >= 0)
    folds = 0.85 + 0.25 * sk.noise(9) + 0.1 * sk.noise(35, fine=True)
    sk.fill(region, col, folds * sk.dome(0, h / 2, w / 2, h / 2))
    sk.fill(sk.capsule(w / 2 - 0.05, h * 0.6, w / 2 + 0.08, h * 0.8, 0.035), col, 0.8)
    return sk


@dataclass(frozen=True)
class Category:
    """An object category: its drawing function and whether it is a small road obstacle."""

    name: str
    draw: Callable
    small: bool


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("dog", _dog, False),
        Category("cow", _cow, False),
        Category("deer", _deer, False),
        Category("box", _box, True),
        Category("tyre", _tyre, True),
        Category("rock", _rock, True),
        Category("debris", _debris, True),
        Category("chair", _chair, False),
        Category("sofa", _sofa, False),
        Category("table", _table, False),
        Category("cone", _cone, True),
        Category("barrel", _barrel, False),
        Category("suitcase", _suitcase, True),
        Category("sack", _sack, True),
    )
}
SMALL_CATEGORIES = tuple(n for n, c in CATEGORIES.items() if c.small)
LARGE_CATEGORIES = tuple(n for n, c in CATEGORIES.items() if not c.small)


def object_id(category: str, index: int) -> str:
    """The id of object ``index`` of ``category``: ``bank:<category>-<NNNN>``."""
    return f"{SOURCE_NAME}:{category}-{index:04d}"


def parse_id(oid: str) -> tuple[str, int]:
    """(category, index) of a bank object id; InputError naming the id if malformed."""
    prefix = f"{SOURCE_NAME}:"
    if isinstance(oid, str) and oid.startswith(prefix) and "-" in oid:
        cat, _, num = oid[len(prefix) :].rpartition("-")
        if cat in CATEGORIES and num.isdigit() and len(num) == 4:
            return cat, int(num)
    raise InputError(
        f"object id {oid!r}: expected 'bank:<category>-<NNNN>' with category one of "
        f"{', '.join(CATEGORIES)}"
    )


@lru_cache(maxsize=512)
def _draw(oid: str) -> tuple[SourceObject, float]:
    cat, _ = parse_id(oid)
    rng = np.random.default_rng([zlib.crc32(oid.encode("utf-8")), 0xB0B])
    sk = CATEGORIES[cat].draw(lambda w, h: _Sketch(rng, w, h), rng)
    return sk.result(oid, cat)


def make_object(oid: str) -> SourceObject:
    """Draw the bank object ``oid`` (cached; the arrays are read-only)."""
    return _draw(oid)[0]


def height_m(oid: str) -> float:
    """Real height in metres of the bank object ``oid`` (its crop height / pixels per metre)."""
    return _draw(oid)[1]


class ObjectBank:
    """ObjectSource over the procedural bank, optionally limited to categories / index range."""

    name = SOURCE_NAME

    def __init__(
        self, categories: Sequence[str] | None = None, start: int = 0, stop: int = PER_CATEGORY
    ) -> None:
        cats = tuple(categories) if categories is not None else tuple(CATEGORIES)
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown or not cats:
            raise InputError(
                f"object bank categories: unknown {unknown or '(empty list)'}; expected some of "
                f"{', '.join(CATEGORIES)}"
            )
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= 10_000):
            raise InputError(
                f"object bank index range: expected 0 <= start < stop <= 10000, got {start}..{stop}"
            )
        self.categories, self.start, self.stop = cats, start, stop

    def ids(self) -> list[str]:
        """All object ids, category by category, in index order."""
        return [object_id(c, i) for c in self.categories for i in range(self.start, self.stop)]

    def load(self, object_id: str) -> SourceObject:
        """The object with this id; InputError if it is not in this bank's selection."""
        cat, idx = parse_id(object_id)
        if cat not in self.categories or not self.start <= idx < self.stop:
            raise InputError(
                f"object id {object_id!r} is not in this object bank (categories "
                f"{', '.join(self.categories)}, indices {self.start}..{self.stop - 1})"
            )
        return make_object(object_id)

    def height_m(self, object_id: str) -> float:
        """Real height in metres of an object of this bank."""
        self.load(object_id)
        return height_m(object_id)


@OBJECT_SOURCES.register(SOURCE_NAME)
def build_bank(
    categories: Sequence[str] | None = None, start: int = 0, stop: int = PER_CATEGORY
) -> ObjectBank:
    """Builder for the ``bank`` object source (config: categories, start, stop)."""
    return ObjectBank(categories=categories, start=start, stop=stop)
