"""Noise textures for the procedural world: smooth value noise, tileable tiles, world lookups.

Everything takes a ``numpy.random.Generator`` so that a scene is a pure function of its seed.
Screen-space noise is upsampled with PIL (fast C code); tileable tiles are built once per scene
and then sampled at world coordinates, so that asphalt grain shrinks with distance.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Smooth noise in [0, 1] of ``shape`` with about ``cells`` features across the width."""
    h, w = shape
    gx = max(2, int(round(cells)) + 1)
    gy = max(2, int(round(cells * h / max(w, 1))) + 1)
    grid = rng.random((gy, gx), dtype=np.float32)
    out = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def fractal_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cells: float = 4.0,
    octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers (each twice as fine), normalised to [0, 1]."""
    total = np.zeros(shape, dtype=np.float32)
    amp, norm = 1.0, 0.0
    for i in range(octaves):
        total += amp * value_noise(rng, shape, cells * 2**i)
        norm += amp
        amp *= persistence
    return total / norm


def tile_noise(
    rng: np.random.Generator, size: int = 128, cells: int = 8, octaves: int = 3
) -> np.ndarray:
    """A tileable (wrap-around) fractal noise tile in [0, 1], shape (size, size)."""
    out = np.zeros((size, size), dtype=np.float32)
    amp, norm = 1.0, 0.0
    coords = np.arange(size, dtype=np.float32)
    for i in range(octaves):
        n = cells * 2**i
        grid = rng.random((n, n), dtype=np.float32)
        t = coords * n / size
        i0 = np.floor(t).astype(np.int64)
        f = t - i0
        f = f * f * (3 - 2 * f)  # smoothstep, so the cell grid does not show
        i0 %= n
        i1 = (i0 + 1) % n
        rows = grid[i0] * (1 - f)[:, None] + grid[i1] * f[:, None]
        layer = rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]
        out += amp * layer
        norm += amp
        amp *= 0.5
    return out / norm


def sample_tile(tile: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Nearest-neighbour lookup of a tileable ``tile`` at tile-pixel coordinates (u=x, v=y)."""
    n = tile.shape[0]
    return tile[v.astype(np.int64) % n, u.astype(np.int64) % n]


def jitter(rng: np.random.Generator, base: tuple[float, float, float], amount: float) -> np.ndarray:
    """``base`` RGB with each channel scaled by a random factor in [1-amount, 1+amount]."""
    return np.asarray(base, dtype=np.float32) * rng.uniform(1 - amount, 1 + amount, 3).astype(
        np.float32
    )
