"""Procedural road scenes with Cityscapes trainId labels: a small, deterministic world.

A scene is a pure function of its seed. ``scene_params(seed)`` draws the layout (camera, road,
roadside, buildings, vehicles, people, poles, lighting, weather) from one numpy Generator, with
no dependence on the image size; ``render_scene(params, size)`` rasterises it at any size. So
``generate_scene(seed, (128, 256))`` is a smaller picture of the same street as at 512x1024.

Geometry: a pinhole camera at height ``cam_h`` above a flat ground; world X to the right, Z
forward (depth), Y up. The road follows a gently curving centre line ``X = c(Z)``; everything on
the roadside is placed in road coordinates ``(d, Z)`` with ``d = X - c(Z)``. Drawing goes through a
z-buffer, so occlusion (far to near) is right whatever the drawing order: ground (depth per row),
facades / fences / hedges (depth per column), and camera-facing billboards for trees,
poles, signs, vehicles and people (constant depth). Everything is vectorised numpy over the
whole image or an object's bounding box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from anomseg.data.classes import TRAIN_ID
from anomseg.errors import InputError
from anomseg.synth.sources import BACKGROUND_SOURCES, Background
from anomseg.world.textures import fractal_noise, jitter, sample_tile, tile_noise

ROAD, SIDEWALK, BUILDING = TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["building"]
FENCE, POLE = TRAIN_ID["fence"], TRAIN_ID["pole"]
TSIGN, VEG = TRAIN_ID["traffic sign"], TRAIN_ID["vegetation"]
TERRAIN, SKY, PERSON = TRAIN_ID["terrain"], TRAIN_ID["sky"], TRAIN_ID["person"]
CAR, TRUCK = TRAIN_ID["car"], TRAIN_ID["truck"]
# The 12 classes the world draws. Of the "wall or fence" and "truck or bus" it draws one
# each, and no traffic lights: at 128x256 the demo models confused walls with fences, buses with
# trucks and read 1-2 px traffic lights as poles, which cost more mIoU than the classes added.
WORLD_CLASSES = (
    ROAD,
    SIDEWALK,
    BUILDING,
    FENCE,
    POLE,
    TSIGN,
    VEG,
    TERRAIN,
    SKY,
    PERSON,
    CAR,
    TRUCK,
)

DEFAULT_SIZE = (512, 1024)
Z_FAR = 400.0  # ground beyond this depth is hidden by the distant skyline
Z_SKYLINE = 220.0
SOURCE_PREFIX = "procedural"

# Ground kinds (an index map first, then colours and labels by table lookup).
G_ROAD, G_KERB, G_SIDEWALK, G_GRASS, G_SOIL = 0, 1, 2, 3, 4
_GROUND_LABEL = np.array([ROAD, SIDEWALK, SIDEWALK, TERRAIN, TERRAIN], dtype=np.uint8)

CAR_COLOURS = (
    (205, 205, 205),
    (165, 167, 170),
    (35, 35, 38),
    (75, 77, 80),
    (32, 45, 85),
    (120, 25, 28),
    (220, 220, 215),
    (55, 65, 60),
    (95, 100, 110),
)
PLASTER = (
    (190, 180, 160),
    (170, 165, 155),
    (200, 195, 185),
    (150, 140, 130),
    (185, 170, 140),
    (160, 160, 165),
    (175, 150, 130),
    (210, 200, 175),
)
BRICK = ((140, 75, 55), (120, 70, 55), (160, 95, 70), (110, 85, 70))
CLOTHES = (
    (40, 40, 45),
    (60, 60, 80),
    (90, 30, 30),
    (30, 50, 90),
    (110, 100, 80),
    (150, 150, 150),
    (70, 85, 60),
    (180, 160, 120),
    (25, 25, 25),
    (120, 60, 90),
)
SKIN = ((225, 190, 165), (195, 150, 120), (150, 105, 75), (100, 70, 50))


# --------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class Piece:
    """One stretch of a vertical roadside surface (a building, a fence, a hedge)."""

    z0: float
    z1: float
    height: float
    label: int
    colour: tuple[float, float, float]
    style: int = 0  # buildings: 0 plaster, 1 brick; fences: 0 planks, 1 bars
    spacing: float = 3.0  # window / post spacing (m)
    floor_h: float = 3.0
    win_w: float = 1.2
    win_h: float = 1.5
    shop: bool = False
    offset: float = 0.0  # lateral setback beyond the surface's base line (m)


@dataclass(frozen=True)
class Thing:
    """A camera-facing object standing on the ground at road coordinates (d, z)."""

    kind: str  # tree, pole, person, car, truck
    d: float
    z: float
    h: float
    w: float
    colour: tuple[float, float, float]
    length: float = 0.0  # vehicles: length along the road
    facing: int = 1  # vehicles: 1 rear visible, -1 front visible
    extra: tuple = ()  # kind-specific parameters


@dataclass(frozen=True)
class Side:
    """One roadside: bands outward from the road edge and the surfaces standing on it."""

    sign: int  # +1 right, -1 left
    bands: tuple[tuple[float, int], ...]  # (width m, ground kind) from the road edge outward
    outer: int  # ground kind beyond the last band
    pieces: tuple[Piece, ...]  # facades (sorted by z0), at d = edge + sum(bands) + piece.offset
    low: tuple[Piece, ...]  # fences / hedges at the outer edge of the bands


@dataclass(frozen=True)
class SceneParams:
    """Everything a scene is made of, drawn from the seed; rendering adds only pixels."""

    seed: int
    horizon: float  # horizon row as a fraction of the image height
    focal: float  # focal length as a fraction of the image width
    cam_h: float  # camera height (m)
    c0: float  # road centre line lateral offset at z=0 (m), camera at X=0
    yaw: float
    curve: float
    left: float  # road extent left of the centre line (m)
    right: float
    lane_w: float
    lanes_left: int
    lanes_right: int
    park_left: float
    park_right: float
    centre_line: int  # 0 none, 1 dashed, 2 double solid
    zebra: float  # depth of a zebra crossing (0 = none)
    sides: tuple[Side, Side]
    things: tuple[Thing, ...]
    skyline: tuple[tuple[float, float, int], ...]  # (angle start, height m, label) segments
    lighting: str  # sun, overcast, dusk
    sun_side: int
    fog_dist: float
    wet: bool
    road_grey: float
    road_tint: tuple[float, float, float]
    sidewalk_colour: tuple[float, float, float]
    paver: float
    grass_colour: tuple[float, float, float]
    exposure: float

    def centre(self, z: np.ndarray | float) -> np.ndarray | float:
        """Lateral position X of the road's centre line at depth z."""
        return self.c0 + self.yaw * z + 0.5 * self.curve * z * z

    def edge(self, sign: int) -> float:
        """Road coordinate d of the road edge on a side (+1 right, -1 left)."""
        return self.right if sign > 0 else -self.left


def _side(rng: np.random.Generator, sign: int, urban_bias: float) -> Side:
    kind = rng.choice(
        ["urban", "suburban", "green"], p=[0.5 * urban_bias + 0.2, 0.3, 0.5 - 0.5 * urban_bias]
    )
    bands: list[tuple[float, int]] = [(float(rng.uniform(0.15, 0.3)), G_KERB)]
    if kind != "urban" and rng.random() < 0.6:
        bands.append((float(rng.uniform(0.8, 3.0)), G_GRASS if rng.random() < 0.8 else G_SOIL))
    bands.append((float(rng.uniform(1.5, 4.5)), G_SIDEWALK))
    outer = G_SIDEWALK if kind == "urban" else (G_GRASS if rng.random() < 0.75 else G_SOIL)
    pieces: list[Piece] = []
    low: list[Piece] = []
    z = float(rng.uniform(-5, 5))
    if kind == "urban":
        setback, hrange = float(rng.uniform(0.0, 2.0)), (8.0, 26.0)
    elif kind == "suburban":
        setback, hrange = float(rng.uniform(5.0, 14.0)), (5.0, 10.0)
    else:
        setback, hrange = float(rng.uniform(25.0, 60.0)), (6.0, 18.0)
    gap_p = {"urban": 0.15, "suburban": 0.45, "green": 0.6}[kind]
    while z < 260:
        length = float(rng.uniform(7, 30) if kind == "urban" else rng.uniform(8, 18))
        if rng.random() < gap_p:
            z += float(rng.uniform(3, 15))
        brick = rng.random() < 0.3
        col = BRICK[rng.integers(len(BRICK))] if brick else PLASTER[rng.integers(len(PLASTER))]
        pieces.append(
            Piece(
                z0=z,
                z1=z + length,
                height=float(rng.uniform(*hrange)),
                label=BUILDING,
                colour=tuple(jitter(rng, col, 0.08).tolist()),
                style=int(brick),
                spacing=float(rng.uniform(2.3, 3.6)),
                floor_h=float(rng.uniform(2.8, 3.4)),
                win_w=float(rng.uniform(0.9, 1.5)),
                win_h=float(rng.uniform(1.2, 1.8)),
                shop=bool(kind == "urban" and rng.random() < 0.5),
                offset=setback + float(rng.uniform(0, 1.5 if kind == "urban" else 6)),
            )
        )
        z += length
    # Low boundary line: fences and hedges along the outer edge of the sidewalk.
    p_low = {"urban": 0.35, "suburban": 0.95, "green": 0.6}[kind]
    if rng.random() < p_low:
        z = float(rng.uniform(-5, 20))
        while z < 200:
            length = float(rng.uniform(8, 40))
            what = rng.choice(["fence", "hedge"], p=[0.7, 0.3])
            if what == "fence":
                bars = rng.random() < 0.5
                col = (60, 70, 65) if bars else (125, 95, 65)
                piece = Piece(
                    z,
                    z + length,
                    float(rng.uniform(1.0, 2.0)),
                    FENCE,
                    tuple(jitter(rng, col, 0.15).tolist()),
                    style=int(bars),
                    spacing=float(rng.uniform(0.12, 0.25)),
                )
            else:
                piece = Piece(
                    z,
                    z + length,
                    float(rng.uniform(1.0, 2.4)),
                    VEG,
                    tuple(jitter(rng, (55, 85, 40), 0.15).tolist()),
                )
            low.append(piece)
            z += length + (float(rng.uniform(2, 15)) if rng.random() < 0.5 else 0.0)
    return Side(
        sign=sign, bands=tuple(bands), outer=int(outer), pieces=tuple(pieces), low=tuple(low)
    )


def _band_range(side: Side, kinds: tuple[int, ...]) -> list[tuple[float, float]]:
    """(start, end) distances from the road edge of the bands of the given kinds."""
    out, acc = [], 0.0
    for width, kind in side.bands:
        if kind in kinds:
            out.append((acc, acc + width))
        acc += width
    return out


def scene_params(seed: int) -> SceneParams:
    """Draw a scene's layout from ``seed`` (deterministic; independent of the image size)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"scene seed: expected a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    horizon = float(rng.uniform(0.36, 0.48))
    focal = float(rng.uniform(0.95, 1.2))
    cam_h = float(rng.uniform(1.2, 1.8))
    lane_w = float(rng.uniform(2.9, 3.6))
    lanes_right = int(rng.choice([1, 2], p=[0.7, 0.3]))
    lanes_left = int(rng.choice([0, 1, 2], p=[0.2, 0.6, 0.2]))
    park_right = float(rng.uniform(2.0, 2.4)) if rng.random() < 0.5 else 0.0
    park_left = float(rng.uniform(2.0, 2.4)) if rng.random() < 0.4 else 0.0
    right = lanes_right * lane_w + park_right
    left = lanes_left * lane_w + park_left
    lane = int(rng.integers(lanes_right))
    c0 = -(lane + 0.5) * lane_w + float(rng.uniform(-0.3, 0.3))
    yaw = float(rng.uniform(-0.03, 0.03))
    curve = float(rng.choice([0.0, 1.0], p=[0.4, 0.6]) * rng.uniform(-0.0025, 0.0025))
    centre_line = int(rng.choice([0, 1, 2], p=[0.2, 0.6, 0.2])) if lanes_left else 0
    zebra = float(rng.uniform(8, 40)) if rng.random() < 0.25 else 0.0
    urban_bias = float(rng.uniform(0, 1))
    sides = (_side(rng, -1, urban_bias), _side(rng, +1, urban_bias))

    lighting = str(rng.choice(["sun", "overcast", "dusk"], p=[0.45, 0.37, 0.18]))
    weather = rng.choice(["clear", "haze", "fog"], p=[0.6, 0.3, 0.1])
    fog_dist = float(
        {
            "clear": rng.uniform(600, 2000),
            "haze": rng.uniform(120, 300),
            "fog": rng.uniform(55, 110),
        }[weather]
    )
    wet = bool(rng.random() < (0.5 if lighting == "overcast" else 0.12))

    things = _things(
        rng, sides, lane_w, lanes_left, lanes_right, park_left, park_right, left, right, zebra
    )
    skyline = []
    a = -1.0
    while a < 1.0:
        width = float(rng.uniform(0.02, 0.12))
        lab = BUILDING if rng.random() < 0.55 else VEG
        skyline.append(
            (a, float(rng.uniform(4, 30) if lab == BUILDING else rng.uniform(5, 14)), lab)
        )
        a += width
    return SceneParams(
        seed=int(seed),
        horizon=horizon,
        focal=focal,
        cam_h=cam_h,
        c0=c0,
        yaw=yaw,
        curve=curve,
        left=left,
        right=right,
        lane_w=lane_w,
        lanes_left=lanes_left,
        lanes_right=lanes_right,
        park_left=park_left,
        park_right=park_right,
        centre_line=centre_line,
        zebra=zebra,
        sides=sides,
        things=tuple(things),
        skyline=tuple(skyline),
        lighting=lighting,
        sun_side=int(rng.choice([-1, 1])),
        fog_dist=fog_dist,
        wet=wet,
        road_grey=float(rng.uniform(85, 125)),
        road_tint=tuple(jitter(rng, (1.0, 1.0, 1.03), 0.03).tolist()),
        sidewalk_colour=tuple(
            jitter(rng, (165, 160, 155) if rng.random() < 0.7 else (165, 125, 115), 0.07).tolist()
        ),
        paver=float(rng.uniform(0.3, 0.6)),
        grass_colour=tuple(jitter(rng, (110, 135, 60), 0.12).tolist()),
        exposure=float(rng.uniform(0.9, 1.1)),
    )


def _things(
    rng, sides, lane_w, lanes_left, lanes_right, park_left, park_right, left, right, zebra
) -> list[Thing]:
    things: list[Thing] = []

    def vehicle(d: float, z: float, facing: int, parked: bool) -> float:
        r = rng.random()
        if parked or r < 0.84:
            kind, h, w, length = (
                "car",
                rng.uniform(1.4, 1.65),
                rng.uniform(1.7, 1.9),
                rng.uniform(4.0, 4.8),
            )
            col = jitter(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))], 0.06)
            extra: tuple = (float(rng.uniform(0.5, 0.62)),)
        else:
            kind, h, w, length = "truck", rng.uniform(2.8, 3.8), 2.45, rng.uniform(6, 9)
            col = jitter(
                rng,
                [(215, 215, 210), (180, 40, 35), (40, 70, 130), (200, 190, 160)][rng.integers(4)],
                0.05,
            )
            extra = (tuple(jitter(rng, (200, 200, 195), 0.1).tolist()),)
        things.append(
            Thing(kind, d, z, float(h), float(w), tuple(col.tolist()), float(length), facing, extra)
        )
        return float(length)

    # Moving traffic in every lane (rear view in ours, front view oncoming), parked cars.
    lanes = [((i + 0.5) * lane_w, 1) for i in range(lanes_right)]
    lanes += [(-(i + 0.5) * lane_w, -1) for i in range(lanes_left)]
    for d, facing in lanes:
        z = float(rng.uniform(7, 30))
        while z < 110:
            if rng.random() < 0.45:
                z += vehicle(d + float(rng.uniform(-0.3, 0.3)), z, facing, False)
            z += float(rng.uniform(8, 40))
    for sign, park in ((1, park_right), (-1, park_left)):
        if park <= 0:
            continue
        d0 = sign * ((lanes_right if sign > 0 else lanes_left) * lane_w + park / 2)
        z = float(rng.uniform(3, 15))
        while z < 90:
            if rng.random() < 0.55:
                facing = 1 if sign > 0 or rng.random() < 0.5 else -1
                z += vehicle(d0 + float(rng.uniform(-0.2, 0.2)), z, facing, True)
            z += float(rng.uniform(0.8, 8))
    if not any(t.kind in ("car", "truck") for t in things):
        vehicle(0.5 * lane_w, float(rng.uniform(10, 25)), 1, True)

    edge = {1: right, -1: -left}
    for side in sides:
        s = side.sign
        walk = _band_range(side, (G_SIDEWALK,))
        a, b = walk[-1]
        # People on the sidewalk (and now and then on a zebra crossing).
        for _ in range(int(rng.integers(0, 6))):
            d = edge[s] + s * float(rng.uniform(a + 0.3, b - 0.2))
            things.append(_person(rng, d, float(rng.uniform(3, 45))))
        # Poles along the kerb: street lights and sign posts.
        z = float(rng.uniform(3, 18))
        while z < 120:
            d = edge[s] + s * float(rng.uniform(0.35, 0.6))
            kind = rng.choice(["lamp", "sign", "plain"], p=[0.35, 0.5, 0.15])
            things.append(_pole(rng, d, z, s, str(kind)))
            z += float(rng.uniform(12, 32))
        # Trees: street trees in the sidewalk or grass strip, or clumps beyond.
        grass = _band_range(side, (G_GRASS, G_SOIL))
        if grass or rng.random() < 0.35:
            lo, hi = grass[0] if grass else (a + 0.4, a + 1.0)
            z = float(rng.uniform(2, 15))
            while z < 140:
                d = edge[s] + s * float(rng.uniform(lo + 0.3, max(hi - 0.3, lo + 0.35)))
                things.append(_tree(rng, d, z))
                z += float(rng.uniform(9, 24))
        if side.outer in (G_GRASS, G_SOIL):
            total = sum(w for w, _ in side.bands)
            for _ in range(int(rng.integers(1, 7))):
                d = edge[s] + s * (total + float(rng.uniform(1, 20)))
                things.append(_tree(rng, d, float(rng.uniform(5, 150))))
    if zebra and rng.random() < 0.6:
        things.append(_person(rng, float(rng.uniform(-left + 0.5, right - 0.5)), zebra + 2))
    # A few guarantees keep every class present often enough to learn.
    if not any(t.kind == "person" for t in things):
        side = sides[int(rng.integers(2))]
        a, b = _band_range(side, (G_SIDEWALK,))[-1]
        d = edge[side.sign] + side.sign * float(rng.uniform(a + 0.3, b - 0.2))
        things.append(_person(rng, d, float(rng.uniform(6, 25))))
    if not any(t.kind == "pole" and t.extra[0] == "sign" and t.z < 45 for t in things):
        s = 1 if rng.random() < 0.7 else -1
        things.append(_pole(rng, edge[s] + s * 0.45, float(rng.uniform(8, 35)), s, "sign"))
    if not any(t.kind == "tree" and t.z < 60 for t in things):
        s = int(rng.choice([-1, 1]))
        side = sides[0 if s < 0 else 1]
        a, b = _band_range(side, (G_SIDEWALK,))[-1]
        things.append(_tree(rng, edge[s] + s * (b - 0.5), float(rng.uniform(8, 40))))
    return things


def _person(rng: np.random.Generator, d: float, z: float) -> Thing:
    h = float(rng.uniform(1.55, 1.92))
    top = CLOTHES[rng.integers(len(CLOTHES))]
    legs = CLOTHES[rng.integers(len(CLOTHES))]
    skin = SKIN[rng.integers(len(SKIN))]
    hair = (float(rng.uniform(20, 110)),) * 3
    stride = float(rng.uniform(-0.18, 0.18))
    return Thing(
        "person",
        d,
        z,
        h,
        0.55,
        tuple(jitter(rng, top, 0.1).tolist()),
        extra=(tuple(legs), tuple(skin), hair, stride, bool(rng.random() < 0.3)),
    )


def _pole(rng: np.random.Generator, d: float, z: float, side: int, kind: str) -> Thing:
    if kind == "lamp":
        h = float(rng.uniform(6, 9))
    elif kind == "sign":
        h = float(rng.uniform(2.6, 3.4))
    else:
        h = float(rng.uniform(2.5, 4))
    signs = []
    if kind == "sign":
        for k in range(int(rng.integers(1, 3))):
            shape = int(rng.integers(4))  # disc, triangle, rectangle, diamond
            signs.append((shape, h - 0.4 - 0.95 * k, float(rng.uniform(0.36, 0.5))))
    col = jitter(rng, (120, 122, 125) if rng.random() < 0.7 else (70, 80, 75), 0.1)
    return Thing(
        "pole",
        d,
        z,
        h,
        float(rng.uniform(0.16, 0.28)),
        tuple(col.tolist()),
        facing=side,
        extra=(kind, tuple(signs), float(rng.uniform(1.2, 2.5)), int(rng.integers(3))),
    )


def _tree(rng: np.random.Generator, d: float, z: float) -> Thing:
    h = float(rng.uniform(4, 11))
    crown = float(rng.uniform(0.25, 0.45)) * h
    phases = tuple(rng.uniform(0, 2 * math.pi, 3).tolist())
    col = jitter(rng, (60, 95, 40), 0.18)
    return Thing(
        "tree",
        d,
        z,
        h,
        float(rng.uniform(0.15, 0.35)),
        tuple(col.tolist()),
        extra=(crown, phases, float(rng.uniform(0.7, 1.2))),
    )


# --------------------------------------------------------------------------------------------
# rendering


class _Canvas:
    """Albedo, labels and depth; ``paint`` writes only where the new surface is nearer."""

    def __init__(self, h: int, w: int) -> None:
        self.rgb = np.zeros((h, w, 3), dtype=np.float32)
        self.labels = np.full((h, w), SKY, dtype=np.uint8)
        self.z = np.full((h, w), np.inf, dtype=np.float32)

    def paint(self, y0: int, x0: int, mask: np.ndarray, z, label, rgb) -> None:
        """Write ``rgb``/``label`` at mask pixels of the box at (y0, x0) nearer than the z-buffer."""
        h, w = mask.shape
        zs = self.z[y0 : y0 + h, x0 : x0 + w]
        zb = np.broadcast_to(np.asarray(z, dtype=np.float32), mask.shape)
        m = mask & (zb < zs)
        if not m.any():
            return
        zs[m] = zb[m]
        lab = self.labels[y0 : y0 + h, x0 : x0 + w]
        lab[m] = label if np.isscalar(label) else np.broadcast_to(label, mask.shape)[m]
        out = self.rgb[y0 : y0 + h, x0 : x0 + w]
        rgb = np.asarray(rgb, dtype=np.float32)
        out[m] = rgb if rgb.ndim == 1 else np.broadcast_to(rgb, (*mask.shape, 3))[m]


class _Renderer:
    def __init__(self, p: SceneParams, size: tuple[int, int]) -> None:
        self.p = p
        self.H, self.W = int(size[0]), int(size[1])
        self.f = p.focal * self.W
        self.cx = self.W / 2.0
        self.hz = p.horizon * self.H
        self.cv = _Canvas(self.H, self.W)
        # Texture draws use their own stream so that they never shift the layout draws.
        self.rng = np.random.default_rng([p.seed, 0x7E87])
        r = self.rng
        self.fine = tile_noise(r, 128, 16, 2)
        self.mid = tile_noise(r, 128, 8, 3)
        self.leaf = tile_noise(r, 128, 12, 3)
        self.cells = r.random((64, 64), dtype=np.float32)
        self.sun_k = float(r.uniform(0.3, 1.0))  # shadow length per metre of facade height

    # -- helpers ------------------------------------------------------------------------------
    def ground_row_z(self, rows: np.ndarray) -> np.ndarray:
        dy = rows + 0.5 - self.hz
        with np.errstate(divide="ignore"):
            z = np.where(dy > 0, self.f * self.p.cam_h / np.maximum(dy, 1e-6), np.inf)
        return z.astype(np.float32)

    def shade_at(self, d: float, z: float) -> float:
        """Sun shadow factor at a ground point (buildings on the sun side cast it)."""
        p = self.p
        if p.lighting != "sun":
            return 1.0
        side = p.sides[0 if p.sun_side < 0 else 1]
        inside = side.sign * (p.edge(side.sign) + side.sign * sum(w for w, _ in side.bands) - d)
        for pc in side.pieces:
            if pc.z0 <= z < pc.z1:
                return 0.55 if -1.0 <= inside < pc.height * self.sun_k - pc.offset else 1.0
        return 1.0

    def bbox(self, X: float, Z: float, umin: float, umax: float, vmin: float, vmax: float):
        """Pixel box of a camera-facing rectangle at depth Z and its metric (u, v) grids."""
        if Z <= 0.3:
            return None
        k = self.f / Z
        x0, x1 = self.cx + k * (X + umin), self.cx + k * (X + umax)
        y0, y1 = self.hz + k * (self.p.cam_h - vmax), self.hz + k * (self.p.cam_h - vmin)
        ix0, ix1 = max(0, int(math.floor(x0))), min(self.W, int(math.ceil(x1)))
        iy0, iy1 = max(0, int(math.floor(y0))), min(self.H, int(math.ceil(y1)))
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        u = ((np.arange(ix0, ix1, dtype=np.float32) + 0.5 - self.cx) / k - X)[None, :]
        v = (self.p.cam_h - (np.arange(iy0, iy1, dtype=np.float32) + 0.5 - self.hz) / k)[:, None]
        return iy0, ix0, u, v

    # -- layers -------------------------------------------------------------------------------
    def sky(self) -> None:
        p, H, W = self.p, self.H, self.W
        rows = min(H, int(math.ceil(self.hz + 0.02 * H)) + 1)
        t = (np.arange(rows, dtype=np.float32) + 0.5) / max(self.hz, 1.0)
        t = np.clip(t, 0, 1)[:, None, None]
        top, bottom, cloud = _SKY[p.lighting]
        grad = np.asarray(top, np.float32) * (1 - t**0.7) + np.asarray(bottom, np.float32) * t**0.7
        cover = {"sun": 0.55, "overcast": 0.25, "dusk": 0.6}[p.lighting]
        n = fractal_noise(self.rng, (rows, W), cells=3, octaves=4)
        c = np.clip((n - cover) * 3.0, 0, 1)[..., None]
        self.sky_bottom = np.asarray(bottom, np.float32)
        self.cv.rgb[:rows] = grad * (1 - c) + np.asarray(cloud, np.float32) * c

    def ground(self) -> None:
        p, H, W, f = self.p, self.H, self.W, self.f
        r0 = int(max(0, math.floor(self.hz)))
        rows = np.arange(r0, H)
        z = self.ground_row_z(rows)
        ok = np.isfinite(z) & (z < Z_FAR)
        rows, z = rows[ok], z[ok]
        if rows.size == 0:
            return
        r0 = int(rows[0])
        zc = z[:, None]
        X = (np.arange(W, dtype=np.float32)[None, :] + 0.5 - self.cx) * zc / f
        d = X - np.asarray(p.centre(z), np.float32)[:, None]
        kind = np.full(d.shape, G_ROAD, dtype=np.uint8)
        for side in p.sides:
            e = side.sign * (d - p.edge(side.sign))  # distance beyond this side's road edge
            outside = e > 0
            kind[outside] = side.outer
            acc = sum(w for w, _ in side.bands)
            for width, k in reversed(side.bands):
                kind[outside & (e <= acc)] = k
                acc -= width
        Z = np.broadcast_to(zc, d.shape)
        rgb = np.empty((*d.shape, 3), dtype=np.float32)
        # Each ground kind is textured on its own pixels only (flattened), in metric (d, z).
        m = kind == G_ROAD
        dm, zm = d[m], Z[m]
        fine = sample_tile(self.fine, dm * 60, zm * 60)
        mid = sample_tile(self.mid, dm * 5, zm * 5)
        coarse = sample_tile(self.mid, dm * 0.6 + 37, zm * 0.35 + 11)
        shade = 0.82 + 0.3 * fine + 0.2 * (mid - 0.5)
        shade -= 0.08 * np.clip((coarse - 0.64) * 12, 0, 1)  # repaired patches
        # Darker tyre tracks along the lane centres.
        tracks = np.zeros_like(dm)
        for c in [(i + 0.5) * p.lane_w for i in range(p.lanes_right)] + [
            -(i + 0.5) * p.lane_w for i in range(p.lanes_left)
        ]:
            tracks += np.exp(-(((np.abs(dm - c) - 0.8) / 0.35) ** 2))
        shade -= 0.07 * np.minimum(tracks, 1)
        road = np.asarray(p.road_tint, np.float32) * (p.road_grey * shade)[:, None]
        if p.wet:
            road *= 0.62
        mark = self.markings(dm, zm, mid)[:, None]
        rgb[m] = road * (1 - mark) + np.float32(215) * mark

        m = (kind == G_SIDEWALK) | (kind == G_KERB)
        if m.any():
            dm, zm, ts = d[m], Z[m], p.paver
            fine = sample_tile(self.fine, dm * 60, zm * 60)
            ci = sample_tile(self.cells, np.floor(dm / ts), np.floor(zm / ts))
            fd, fz = (dm / ts) % 1.0, (zm / ts) % 1.0
            joint = (np.minimum(fd, 1 - fd) < 0.05) | (np.minimum(fz, 1 - fz) < 0.05)
            s = (0.92 + 0.1 * ci + 0.12 * (fine - 0.5)) * np.where(joint, 0.8, 1.0)
            walk = np.asarray(p.sidewalk_colour, np.float32) * s[:, None]
            kerb = np.float32(185) * (0.9 + 0.15 * fine)[:, None]
            walk = np.where((kind[m] == G_KERB)[:, None], kerb, walk)
            rgb[m] = walk * (0.78 if p.wet else 1.0)
        for k, base in ((G_GRASS, p.grass_colour), (G_SOIL, (125, 105, 80))):
            m = kind == k
            if m.any():
                dm, zm = d[m], Z[m]
                s = 0.65 + 0.35 * sample_tile(self.fine, dm * 60, zm * 60)
                s += 0.35 * sample_tile(self.mid, dm * 5, zm * 5)
                rgb[m] = np.asarray(base, np.float32) * s[:, None]

        light = np.ones(d.shape, dtype=np.float32)
        if p.lighting == "sun":
            side = p.sides[0 if p.sun_side < 0 else 1]
            base = p.edge(side.sign) + side.sign * sum(w for w, _ in side.bands)
            # Each facade throws a shadow band of (height x sun factor) from its own line.
            inside = side.sign * (base - d)
            starts = np.array([pc.z0 for pc in side.pieces])
            ends = np.array([pc.z1 for pc in side.pieces])
            reach = np.array([pc.height * self.sun_k - pc.offset for pc in side.pieces])
            idx = np.clip(np.searchsorted(starts, z, side="right") - 1, 0, None)
            built = (z >= starts[idx]) & (z < ends[idx]) if starts.size else np.zeros_like(z, bool)
            reach_z = np.where(built, reach[idx] if starts.size else 0.0, -1.0)[:, None]
            light[(inside >= -1.0) & (inside < reach_z)] = 0.55
        # Contact shadows under vehicles.
        for t in p.things:
            if t.kind in ("car", "truck"):
                zz = np.nonzero((z >= t.z - 0.2) & (z <= t.z + t.length + 0.3))[0]
                if zz.size:
                    a, b = int(zz[0]), int(zz[-1]) + 1
                    band = light[a:b]
                    band[np.abs(d[a:b] - t.d) < t.w / 2 + 0.15] *= 0.45
        rgb *= light[..., None]
        if p.wet:
            # Sky reflections: stronger towards the horizon (Fresnel) and in puddles.
            a = 0.12 + 0.4 * (1 - np.exp(-zc / 35.0))
            puddle = (sample_tile(self.mid, d * 1.5 + 5, zc * 1.5) > 0.66) & (kind == G_ROAD)
            a = np.where(puddle, 0.7, np.broadcast_to(a, d.shape)) * (kind <= G_SIDEWALK)
            rgb = rgb * (1 - a[..., None]) + self.sky_bottom * a[..., None]
        # The ground is the first opaque layer below the sky: write it directly.
        self.cv.z[r0:] = Z
        self.cv.labels[r0:] = _GROUND_LABEL[kind]
        self.cv.rgb[r0:] = rgb

    def markings(self, d: np.ndarray, zc: np.ndarray, wear: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] of white road paint at road coordinates (d, z)."""
        p = self.p
        m = np.zeros(d.shape, dtype=bool)
        w = 0.07
        if p.centre_line == 1:
            m |= (np.abs(d) < w) & ((zc % 9.0) < 3.0)
        elif p.centre_line == 2:
            m |= np.abs(np.abs(d) - 0.12) < w
        for i in range(1, p.lanes_right):
            m |= (np.abs(d - i * p.lane_w) < w) & (((zc + 2) % 9.0) < 3.0)
        for i in range(1, p.lanes_left):
            m |= (np.abs(d + i * p.lane_w) < w) & (((zc + 5) % 9.0) < 3.0)
        edge_r = p.lanes_right * p.lane_w
        edge_l = -p.lanes_left * p.lane_w
        m |= np.abs(d - (edge_r - 0.2)) < w
        if p.lanes_left:
            m |= np.abs(d - (edge_l + 0.2)) < w
        if p.zebra:
            m |= (
                (zc > p.zebra)
                & (zc < p.zebra + 4.0)
                & ((d % 1.0) < 0.5)
                & (d > edge_l)
                & (d < edge_r)
            )
        return m * np.clip(0.55 + 0.9 * wear, 0, 1) * 0.9

    def skyline(self) -> None:
        p, W = self.p, self.W
        xs = np.arange(W, dtype=np.float32) + 0.5
        ang = (xs - self.cx) / self.f
        starts = np.array([s[0] for s in p.skyline], np.float32)
        idx = np.clip(np.searchsorted(starts, ang, side="right") - 1, 0, len(starts) - 1)
        height = np.array([s[1] for s in p.skyline], np.float32)[idx]
        lab = np.array([s[2] for s in p.skyline], np.uint8)[idx]
        # Trees get a bumpy top, buildings stay flat.
        bump = (
            np.sin(xs * 0.9 / max(W / 1024, 0.25)) * 0.8
            + np.sin(xs * 0.23 / max(W / 1024, 0.25)) * 1.5
        )
        height = np.where(lab == VEG, height + bump, height)
        k = self.f / Z_SKYLINE
        top = self.hz + k * (p.cam_h - height)
        bot = self.hz + k * p.cam_h + 1
        y0, y1 = max(0, int(top.min())), min(self.H, int(math.ceil(bot)) + 1)
        if y1 <= y0:
            return
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        mask = (ys >= top[None, :]) & (ys <= bot)
        col = np.where((lab == VEG)[:, None], np.float32([70, 90, 70]), np.float32([120, 120, 125]))
        n = sample_tile(self.mid, xs[None, :] * 0.3, ys * 0.3)
        rgb = col[None, :, :] * (0.85 + 0.3 * n)[..., None]
        self.cv.paint(y0, 0, mask, Z_SKYLINE, np.broadcast_to(lab[None, :], mask.shape), rgb)

    def surface(
        self, base: float, pieces: tuple[Piece, ...], sign: int, lit: float, building: bool
    ) -> None:
        """Vertical surfaces along the road at d = base (+ piece offset), depth per column."""
        p, W, f = self.p, self.W, self.f
        if not pieces:
            return
        zs = np.geomspace(0.6, 300, 700).astype(np.float64)
        mid = 0.5 * (zs[:-1] + zs[1:])
        starts = np.array([pc.z0 for pc in pieces])
        ends = np.array([pc.z1 for pc in pieces])
        pid = np.searchsorted(starts, mid, side="right") - 1
        ok = (pid >= 0) & (mid < ends[np.clip(pid, 0, None)])
        if not ok.any():
            return
        off = np.array([pc.offset for pc in pieces])[np.clip(pid, 0, None)]
        X0 = p.centre(zs[:-1]) + base + sign * off
        X1 = p.centre(zs[1:]) + base + sign * off
        xa, xb = self.cx + f * X0 / zs[:-1], self.cx + f * X1 / zs[1:]
        xa, xb, za, zb, pid = xa[ok], xb[ok], zs[:-1][ok], zs[1:][ok], pid[ok]
        lo = np.clip(np.ceil(np.minimum(xa, xb) - 0.5), 0, W).astype(np.int64)
        hi = np.clip(np.floor(np.maximum(xa, xb) - 0.5), -1, W - 1).astype(np.int64)
        n = np.clip(hi - lo + 1, 0, None)
        if n.sum() == 0:
            return
        seg = np.repeat(np.arange(n.size), n)
        cols = lo[seg] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        dx = xb[seg] - xa[seg]
        t = np.where(np.abs(dx) > 1e-9, (cols + 0.5 - xa[seg]) / np.where(dx == 0, 1, dx), 0.5)
        t = np.clip(t, 0, 1)
        zc = 1.0 / (1.0 / za[seg] + t * (1.0 / zb[seg] - 1.0 / za[seg]))
        order = np.lexsort((zc, cols))
        cs = cols[order]
        first = order[np.r_[True, cs[1:] != cs[:-1]]]
        zcol = np.full(W, np.inf, np.float32)
        pcol = np.full(W, -1, np.int64)
        zcol[cols[first]] = zc[first]
        pcol[cols[first]] = pid[seg[first]]
        valid = pcol >= 0
        c0, c1 = int(np.argmax(valid)), int(W - np.argmax(valid[::-1]))
        zcol, pcol = zcol[c0:c1], np.clip(pcol[c0:c1], 0, None)
        valid = valid[c0:c1]
        heights = np.array([pc.height for pc in pieces], np.float32)[pcol]
        # Hedges and planks get an uneven top edge.
        zsafe = np.where(valid, zcol, 1.0)
        if not building:
            heights = heights * (0.94 + 0.1 * sample_tile(self.mid, zsafe * 4, heights * 3))
        top = self.hz + f * (p.cam_h - heights) / zsafe
        bot = self.hz + f * p.cam_h / zsafe
        y0 = int(max(0, np.floor(top[valid].min())))
        y1 = int(min(self.H, np.ceil(bot[valid].max()) + 1))
        if y1 <= y0:
            return
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        v = p.cam_h - (ys - self.hz) * zsafe[None, :] / f
        mask = valid[None, :] & (v >= 0) & (v <= heights[None, :])
        s = zsafe[None, :]  # along-road coordinate (m)
        labels = np.array([pc.label for pc in pieces], np.uint8)[pcol]
        colour = np.array([pc.colour for pc in pieces], np.float32)[pcol][None, :, :]
        if building:
            rgb = self.facade(pieces, pcol, s, v, colour)
        else:
            rgb, keep = self.low_surface(pieces, pcol, s, v, colour, labels, heights)
            mask &= keep
        rgb = rgb * lit
        self.cv.paint(
            y0,
            c0,
            mask,
            np.broadcast_to(zcol[None, :], mask.shape),
            np.broadcast_to(labels[None, :], mask.shape),
            rgb,
        )

    def facade(self, pieces, pcol, s, v, colour) -> np.ndarray:
        def g(name: str, dt=np.float32) -> np.ndarray:
            # Per-column value of a piece attribute, shaped (1, columns).
            return np.array([getattr(pc, name) for pc in pieces], dt)[pcol][None, :]

        spacing, floor_h = g("spacing"), g("floor_h")
        win_w, win_h = g("win_w"), g("win_h")
        brick, shop = g("style", np.int64) == 1, g("shop", bool)
        z0, height = g("z0"), g("height")
        along = s - z0
        noise = sample_tile(self.mid, along * 3, v * 3)
        shade = 0.85 + 0.25 * noise
        # Bricks: offset courses; mortar lines slightly lighter.
        course = np.floor(v / 0.08)
        bx = ((along + 0.12 * (course % 2)) / 0.24) % 1.0
        mortar = brick & (((v / 0.08) % 1.0 < 0.18) | (bx < 0.06))
        shade = np.where(mortar, shade * 1.25, shade)
        rgb = colour * shade[..., None]
        fx = (along % spacing) / spacing
        fl = np.floor(v / floor_h)
        fy = v - fl * floor_h
        x_in = np.abs(fx - 0.5) * spacing < win_w / 2
        win = x_in & (fy > 0.9) & (fy < 0.9 + win_h) & (fl >= 1) & (v < height - 0.8)
        shopwin = shop & (v > 0.3) & (v < 2.6) & ((along % 6.0) > 0.6)
        ground_band = shop & (v < 3.2)
        cell = sample_tile(self.cells, np.floor(along / spacing) + 7 * pcol[None, :], fl)
        glass = np.float32([55, 65, 80]) * (0.7 + 0.6 * cell)[..., None]
        glass = (
            glass
            + np.float32([40, 45, 50])
            * np.clip((fy - 0.9) / np.maximum(win_h, 0.1), 0, 1)[..., None]
        )
        if self.p.lighting == "dusk":
            lit = cell > 0.7
            glass = np.where(lit[..., None], np.float32([235, 200, 130]), glass)
        rgb = np.where(ground_band[..., None], colour * 0.6 * shade[..., None], rgb)
        rgb = np.where((win | shopwin)[..., None], glass, rgb)
        frame = x_in & (np.abs(fy - 0.85) < 0.07) & (fl >= 1)  # sills
        rgb = np.where(frame[..., None], np.float32([200, 200, 195]), rgb)
        cornice = v > height - 0.5
        rgb = np.where(cornice[..., None], rgb * 0.7, rgb)
        return rgb

    def low_surface(self, pieces, pcol, s, v, colour, labels, heights):
        """Fences and hedges: (rgb, opaque mask) over the surface's pixel box."""
        style = np.array([pc.style for pc in pieces], np.int64)[pcol][None, :]
        spacing = np.array([pc.spacing for pc in pieces], np.float32)[pcol][None, :]
        lab, top = labels[None, :], heights[None, :]
        shade = 0.85 + 0.3 * sample_tile(self.mid, s * 4, v * 4)
        # Fences: planks with narrow gaps (style 0) or see-through metal bars (style 1).
        fs = (s / spacing) % 1.0
        shade = np.where((lab == FENCE) & (style == 0) & (fs < 0.08), shade * 0.5, shade)
        bars = (fs < 0.3) | (((s / 2.5) % 1.0) < 0.03) | (np.abs(v - 0.15) < 0.04)
        bars |= np.abs(v - top + 0.06) < 0.05  # top rail
        keep = ~((lab == FENCE) & (style == 1) & ~bars)
        # Hedges: leafy clumps.
        leaf = sample_tile(self.leaf, s * 9, v * 9)
        shade = np.where(lab == VEG, 0.55 + 0.7 * leaf, shade)
        return colour * shade[..., None], keep

    # -- billboards -----------------------------------------------------------------------------
    def thing(self, t: Thing) -> None:
        X = float(self.p.centre(t.z)) + t.d
        getattr(self, f"draw_{t.kind}")(t, X)

    def draw_tree(self, t: Thing, X: float) -> None:
        crown, phases, spread = t.extra
        cy = t.h - crown
        rx = crown * spread
        bb = self.bbox(X, t.z, -rx * 1.45, rx * 1.45, 0.0, cy + crown * 1.45)
        if bb is None:
            return
        y0, x0, u, v = bb
        trunk = (np.abs(u) < t.w / 2 * (1 + 0.4 * (v < 0.3))) & (v < cy)
        du, dv = u / rx, (v - cy) / crown
        ang = np.arctan2(dv, du)
        rad = (
            1
            + 0.12 * np.sin(3 * ang + phases[0])
            + 0.08 * np.sin(5 * ang + phases[1])
            + 0.06 * np.sin(9 * ang + phases[2])
        )
        r = np.sqrt(du * du + dv * dv)
        leaf = sample_tile(self.leaf, (u + 13 * t.d) * 10, (v + t.z) * 10)
        blob = r < rad * (0.85 + 0.3 * leaf)
        shade = (0.55 + 0.65 * leaf) * (1.05 - 0.25 * np.clip(dv * -1, 0, 1))
        leaf_rgb = np.asarray(t.colour, np.float32) * shade[..., None]
        trunk_rgb = np.broadcast_to(
            np.float32([80, 65, 50]) * (0.8 + 0.4 * leaf)[..., None], leaf_rgb.shape
        )
        rgb = np.where(blob[..., None], leaf_rgb, trunk_rgb)
        self.cv.paint(y0, x0, blob | trunk, t.z, VEG, rgb * self.shade_at(t.d, t.z))

    def draw_pole(self, t: Thing, X: float) -> None:
        kind, signs, arm, lit = t.extra
        inward = -t.facing  # arms and lights reach over the road
        umin, umax = (-arm - 0.5, 0.6) if inward < 0 else (-0.6, arm + 0.5)
        bb = self.bbox(X, t.z, umin, umax, 0.0, t.h + 0.3)
        if bb is None:
            return
        y0, x0, u, v = bb
        col = np.asarray(t.colour, np.float32)
        shape = np.broadcast_shapes(u.shape, v.shape)
        rgb = np.broadcast_to(col * (0.9 + 0.2 * (u > 0))[..., None], (*shape, 3)).copy()
        lab = np.full(shape, POLE, np.uint8)
        mask = np.broadcast_to((np.abs(u) < t.w / 2) & (v < t.h), shape).copy()
        if kind == "lamp":
            au = u * inward
            arm_m = (au > 0) & (au < arm) & (np.abs(v - (t.h - 0.1)) < 0.07)
            head = (au > arm - 0.45) & (au < arm + 0.1) & (v > t.h - 0.25) & (v < t.h - 0.05)
            mask |= arm_m | head
            rgb[head] = col * 0.6
        for shape, cy, size in signs:
            du, dv = u, v - cy
            if shape == 0:
                r2 = du * du + dv * dv
                sm, inner = r2 < size**2, r2 < (0.8 * size) ** 2
                face, rim = (40, 75, 165), (235, 235, 235)
            elif shape == 1:
                sm = (dv > -size * 0.8) & (np.abs(du) < (size - (dv + size * 0.8)) * 0.7)
                inner = (dv > -size * 0.6) & (np.abs(du) < (size * 0.75 - (dv + size * 0.6)) * 0.7)
                face, rim = (235, 235, 230), (190, 30, 30)
            elif shape == 2:
                sm = (np.abs(du) < size * 1.1) & (np.abs(dv) < size * 0.75)
                inner = (np.abs(du) < size) & (np.abs(dv) < size * 0.65)
                face, rim = (35, 90, 160), (230, 230, 230)
            else:
                sm = np.abs(du) + np.abs(dv) < size
                inner = np.abs(du) + np.abs(dv) < size * 0.75
                face, rim = (230, 185, 40), (240, 240, 235)
            rgb[sm] = rim
            rgb[inner & sm] = face
            lab[sm] = TSIGN
            mask |= sm
        self.cv.paint(y0, x0, mask, t.z, lab, rgb * self.shade_at(t.d, t.z))

    def draw_person(self, t: Thing, X: float) -> None:
        legs, skin, hair, stride, bag = t.extra
        s = t.h / 1.75
        bb = self.bbox(X, t.z, -0.45 * s, 0.45 * s, 0.0, t.h + 0.02)
        if bb is None:
            return
        y0, x0, u, v = bb
        u, v = u / s, v / s

        def capsule(ax, ay, bx, by, r):
            px, py = u - ax, v - ay
            dx, dy = bx - ax, by - ay
            h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0, 1)
            return (px - h * dx) ** 2 + (py - h * dy) ** 2 < r * r

        leg = capsule(-0.08, 0.88, -0.09 + stride, 0.06, 0.075) | capsule(
            0.08, 0.88, 0.09 - stride, 0.06, 0.075
        )
        torso = capsule(0, 1.05, 0, 1.38, 0.19)
        arms = capsule(-0.21, 1.4, -0.24 - stride * 0.6, 0.85, 0.055) | capsule(
            0.21, 1.4, 0.24 + stride * 0.6, 0.85, 0.055
        )
        head = (u / 0.095) ** 2 + ((v - 1.6) / 0.12) ** 2 < 1
        hair_m = head & (v > 1.63)
        shape = np.broadcast_shapes(u.shape, v.shape)
        rgb = np.empty((*shape, 3), np.float32)
        rgb[...] = legs
        rgb[np.broadcast_to(torso | arms, shape)] = t.colour
        rgb[np.broadcast_to(head, shape)] = skin
        rgb[np.broadcast_to(hair_m, shape)] = hair
        mask = leg | torso | arms | head
        if bag:
            b = (np.abs(u - 0.27) < 0.1) & (np.abs(v - 0.95) < 0.13)
            rgb[np.broadcast_to(b, shape)] = (60, 45, 35)
            mask = mask | b
        shade = 0.9 + 0.15 * np.clip(1 - np.abs(u) * 3, 0, 1)
        rgb *= shade[..., None] if np.ndim(shade) == 2 else 1.0
        self.cv.paint(
            y0, x0, np.broadcast_to(mask, shape), t.z, PERSON, rgb * self.shade_at(t.d, t.z)
        )

    def _vehicle_side(self, t: Thing, X: float, label: int) -> None:
        """The side face of a vehicle box, seen when it is off to one side."""
        p, f = self.p, self.f
        half = t.w / 2
        if abs(X) <= half:
            return
        Xs = X - half if X > 0 else X + half
        z0, z1 = t.z, t.z + t.length
        xa, xb = self.cx + f * Xs / z0, self.cx + f * Xs / z1
        c0, c1 = max(0, int(math.floor(min(xa, xb)))), min(self.W, int(math.ceil(max(xa, xb))))
        if c1 <= c0:
            return
        xs = np.arange(c0, c1, dtype=np.float32) + 0.5
        zcol = f * Xs / (xs - self.cx)
        valid = (zcol >= z0) & (zcol <= z1)
        if not valid.any():
            return
        zcol = np.where(valid, zcol, z1)
        y0 = max(0, int(math.floor(self.hz + f * (p.cam_h - t.h) / z0)))
        y1 = min(self.H, int(math.ceil(self.hz + f * p.cam_h / z0)) + 1)
        if y1 <= y0:
            return
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        v = p.cam_h - (ys - self.hz) * zcol[None, :] / f
        a = ((zcol - z0) / t.length)[None, :]  # 0 at the near end, 1 at the far end
        if t.facing < 0:
            a = 1 - a  # the front is nearest for oncoming traffic
        col = np.asarray(t.colour, np.float32)
        L = t.length
        if t.kind == "car":
            belt = t.extra[0] * t.h
            body = v < belt
            cabin = (
                (v >= belt)
                & (v < t.h)
                & (a > 0.22 + 0.1 * (v - belt) / (t.h - belt))
                & (a < 0.85 - 0.1 * (v - belt) / (t.h - belt))
            )
            glass = cabin & (v < t.h - 0.08)
            wheel_r = 0.33
            mask = valid[None, :] & (v >= 0.02) & (body | cabin)
        else:
            body = v < t.h
            glass = (a > 0.82) & (v > 0.55 * t.h) & (v < 0.85 * t.h)
            wheel_r = 0.5
            mask = valid[None, :] & (v >= 0.02) & body
            if t.kind == "truck":
                cab = a > 0.78
                mask &= cab | (v > 0.9) | (a < 0.78)
        wheels = ((a * L - 0.18 * L) ** 2 + (v - wheel_r) ** 2 < wheel_r**2) | (
            (a * L - 0.82 * L) ** 2 + (v - wheel_r) ** 2 < wheel_r**2
        )
        shape = mask.shape
        rgb = np.broadcast_to(col * 0.78, (*shape, 3)).copy()
        if t.kind == "truck":
            cargo = np.broadcast_to(a < 0.78, shape)
            rgb[cargo] = np.asarray(t.extra[0], np.float32) * 0.8
        rgb[np.broadcast_to(glass, shape)] = (45, 55, 65)
        rgb[np.broadcast_to(wheels, shape)] = (22, 22, 24)
        mask = mask | (valid[None, :] & wheels & (v >= 0))
        self.cv.paint(
            y0,
            c0,
            mask,
            np.broadcast_to(zcol[None, :] + 0.01, shape),
            label,
            rgb * self.shade_at(t.d, t.z),
        )

    def draw_car(self, t: Thing, X: float) -> None:
        self._vehicle_side(t, X, CAR)
        half = t.w / 2
        bb = self.bbox(X, t.z, -half, half, 0.0, t.h)
        if bb is None:
            return
        y0, x0, u, v = bb
        belt = t.extra[0] * t.h
        au = np.abs(u)
        lower = (v < belt) & (au < half - 0.04 * (v > belt - 0.15))
        taper = half - 0.12 - 0.25 * (v - belt) / (t.h - belt)
        cabin = (v >= belt) & (au < taper) & ~((v > t.h - 0.1) & (au > taper - 0.1))
        under = (v < 0.2) & (au < half - 0.32)
        mask = (lower | cabin) & ~under
        shape = np.broadcast_shapes(u.shape, v.shape)
        col = np.asarray(t.colour, np.float32)
        rgb = np.broadcast_to(col * (0.95 - 0.1 * (v < 0.45))[..., None], (*shape, 3)).copy()
        glass = cabin & (au < taper - 0.07) & (v > belt + 0.06) & (v < t.h - 0.08)
        rgb[np.broadcast_to(glass, shape)] = (50, 60, 72)
        lights = (v > belt - 0.25) & (v < belt - 0.05) & (au > half - 0.38) & (au < half - 0.06)
        rgb[np.broadcast_to(lights, shape)] = (170, 25, 25) if t.facing > 0 else (225, 225, 210)
        plate = (au < 0.26) & (v > 0.38) & (v < 0.5)
        rgb[np.broadcast_to(plate, shape)] = (225, 225, 225)
        tyres = (v < 0.35) & (au > half - 0.3) & (au < half - 0.04)
        rgb[np.broadcast_to(tyres, shape)] = (22, 22, 24)
        self.cv.paint(y0, x0, np.broadcast_to(mask, shape), t.z, CAR, rgb * self.shade_at(t.d, t.z))

    def draw_truck(self, t: Thing, X: float) -> None:
        self._vehicle_side(t, X, TRUCK)
        half = t.w / 2
        bb = self.bbox(X, t.z, -half, half, 0.0, t.h)
        if bb is None:
            return
        y0, x0, u, v = bb
        au = np.abs(u)
        shape = np.broadcast_shapes(u.shape, v.shape)
        under = (v < 0.45) & (au < half - 0.45)
        mask = np.broadcast_to(~under & (v >= 0), shape)
        col = np.asarray(t.colour if t.facing < 0 else t.extra[0], np.float32)
        rgb = np.broadcast_to(col * 0.92, (*shape, 3)).copy()
        if t.facing < 0:
            glass = (au < half - 0.12) & (v > 0.5 * t.h) & (v < t.h - 0.2)
            rgb[np.broadcast_to(glass, shape)] = (45, 55, 68)
        else:
            seam = (au < 0.03) & (v > 0.9)
            rgb[np.broadcast_to(seam, shape)] = col * 0.6
        bumper = (v > 0.45) & (v < 0.75)
        rgb[np.broadcast_to(bumper, shape)] = (40, 40, 42)
        lights = bumper & (au > half - 0.35)
        rgb[np.broadcast_to(lights, shape)] = (170, 30, 25) if t.facing > 0 else (225, 225, 210)
        tyres = (v < 0.45) & (au >= half - 0.45)
        rgb[np.broadcast_to(tyres, shape)] = (22, 22, 24)
        self.cv.paint(y0, x0, mask, t.z, TRUCK, rgb * self.shade_at(t.d, t.z))

    # -- finishing -----------------------------------------------------------------------------
    def finish(self, noise_rng: np.random.Generator) -> np.ndarray:
        p, cv = self.p, self.cv
        rgb = cv.rgb
        fog_col = {"sun": (200, 210, 220), "overcast": (195, 198, 202), "dusk": (190, 160, 150)}[
            p.lighting
        ]
        a = 1.0 - np.exp(-np.minimum(cv.z, 260.0) / p.fog_dist)
        sky = cv.labels == SKY
        a = np.where(sky, np.minimum(a, 0.25 if p.fog_dist > 300 else 0.9), a)
        rgb = rgb * (1 - a[..., None]) + np.float32(fog_col) * a[..., None]
        tint, gain = _TINT[p.lighting]
        rgb = rgb * (np.float32(tint) * gain * p.exposure)
        # Vignette and sensor noise.
        yy = np.linspace(-1, 1, self.H, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, self.W, dtype=np.float32)[None, :]
        rgb *= (1 - 0.12 * (xx * xx + yy * yy))[..., None]
        rgb += (noise_rng.random((self.H, self.W), dtype=np.float32)[..., None] - 0.5) * 8.0
        out = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        radius = 0.5 * self.W / 1024
        if radius >= 0.3:
            out = np.asarray(Image.fromarray(out).filter(ImageFilter.BoxBlur(radius)))
        return out


_SKY = {
    "sun": ((70, 120, 190), (175, 200, 225), (235, 238, 242)),
    "overcast": ((150, 155, 162), (200, 203, 207), (215, 216, 218)),
    "dusk": ((60, 70, 120), (235, 150, 100), (200, 140, 130)),
}
_TINT = {
    "sun": ((1.04, 1.0, 0.95), 1.0),
    "overcast": ((0.96, 0.98, 1.02), 0.95),
    "dusk": ((1.05, 0.86, 0.74), 0.78),
}


def render_scene(
    params: SceneParams, size: tuple[int, int] = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a scene: (rgb uint8 (H, W, 3), trainId labels uint8 (H, W))."""
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise InputError(f"scene size: expected at least 8x8 pixels, got {h}x{w}")
    r = _Renderer(params, (h, w))
    r.sky()
    r.ground()
    r.skyline()
    p = params
    sun = p.lighting == "sun"
    for side in p.sides:
        edge = p.edge(side.sign)
        lit = 1.0 if not sun else (0.7 if side.sign == p.sun_side else 1.12)
        outer = edge + side.sign * sum(wd for wd, _ in side.bands)
        r.surface(outer, side.pieces, side.sign, lit, building=True)
        r.surface(outer, side.low, side.sign, lit, building=False)
        # The kerb's vertical face (Cityscapes counts kerbs as sidewalk).
        kerb = (Piece(-10.0, 400.0, 0.13, SIDEWALK, (160, 160, 158)),)
        r.surface(edge, kerb, side.sign, lit * 0.85, building=False)
    for t in sorted(p.things, key=lambda t: -t.z):
        r.thing(t)
    noise_rng = np.random.default_rng([p.seed, 0x401, h, w])
    return r.finish(noise_rng), r.cv.labels


def generate_scene(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> Background:
    """The procedural scene ``seed`` at ``size`` (H, W) as a Background (id ``procedural:<seed>``)."""
    rgb, labels = render_scene(scene_params(seed), size)
    return Background(id=f"{SOURCE_PREFIX}:{int(seed)}", rgb=rgb, labels=labels)


class ProceduralScenes:
    """BackgroundSource over procedural scenes ``procedural:<seed>`` for seeds in [start, stop)."""

    name = SOURCE_PREFIX

    def __init__(
        self, start: int = 0, stop: int = 1000, size: tuple[int, int] = DEFAULT_SIZE
    ) -> None:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop))
        if not ok or not 0 <= start < stop <= 2**31:
            raise InputError(
                f"procedural scenes seeds: expected integers 0 <= start < stop <= 2**31, got {start!r}..{stop!r}"
            )
        if (
            not isinstance(size, tuple | list)
            or len(size) != 2
            or not all(isinstance(v, int) and 8 <= v <= 8192 for v in size)
        ):
            raise InputError(
                f"procedural scenes size: expected (height, width) integers in [8, 8192], got {size!r}"
            )
        self.start, self.stop, self.size = start, stop, (int(size[0]), int(size[1]))

    def ids(self) -> list[str]:
        """``procedural:<seed>`` for every seed in the range, in seed order."""
        return [f"{SOURCE_PREFIX}:{s}" for s in range(self.start, self.stop)]

    def load(self, background_id: str) -> Background:
        """The scene with this id at this source's size; InputError if not in the range."""
        seed = parse_scene_id(background_id)
        if not self.start <= seed < self.stop:
            raise InputError(
                f"background {background_id!r} is outside this source's seeds {self.start}..{self.stop - 1}"
            )
        return generate_scene(seed, self.size)


def parse_scene_id(background_id: str) -> int:
    """The seed of a ``procedural:<seed>`` id; InputError naming the id if malformed."""
    prefix = f"{SOURCE_PREFIX}:"
    if isinstance(background_id, str) and background_id.startswith(prefix):
        tail = background_id[len(prefix) :]
        if tail.isdigit() and len(tail) <= 10:
            return int(tail)
    raise InputError(
        f"background id {background_id!r}: expected 'procedural:<seed>' with a non-negative integer seed"
    )


@BACKGROUND_SOURCES.register(SOURCE_PREFIX)
def build_procedural(
    start: int = 0, stop: int = 1000, size: tuple[int, int] = DEFAULT_SIZE
) -> ProceduralScenes:
    """Builder for the ``procedural`` background source (config: start, stop, size)."""
    return ProceduralScenes(start=start, stop=stop, size=tuple(size))
