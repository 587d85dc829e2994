"""sRGB <-> CIE Lab (D65) in numpy, and lightness matching of a pasted object to its surroundings."""

from __future__ import annotations

import numpy as np

_M_RGB2XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)  # fmt: skip
_M_XYZ2RGB = np.linalg.inv(_M_RGB2XYZ.astype(np.float64)).astype(np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
_EPS = np.float32(216 / 24389)
_KAPPA = np.float32(24389 / 27)

# How far lightness statistics may be pulled: keeps a white object from turning road-grey.
STD_RATIO_RANGE = (0.7, 1.3)


def _srgb_to_linear_lut() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


_LINEAR = _srgb_to_linear_lut()  # uint8 sRGB -> linear, exact per level and cheap
_LUT_STEPS = 65535


def _linear_to_srgb8_lut() -> np.ndarray:
    lin = np.arange(_LUT_STEPS + 1, dtype=np.float64) / _LUT_STEPS
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


_SRGB8 = _linear_to_srgb8_lut()  # linear quantised to 16 bits -> uint8 sRGB


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _EPS, np.cbrt(t), (_KAPPA * t + 16) / 116)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float32 Lab."""
    lin = _LINEAR[rgb]
    xyz = lin @ _M_RGB2XYZ.T / _WHITE
    f = _f(xyz)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) float32 Lab -> (..., 3) uint8 sRGB (clipped, rounded)."""
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = np.stack([fx, fy, fz], axis=-1).astype(np.float32)
    f3 = f**3
    xyz = np.where(f3 > _EPS, f3, (116 * f - 16) / _KAPPA) * _WHITE
    lin = np.clip(xyz @ _M_XYZ2RGB.T, 0.0, 1.0)
    return _SRGB8[np.rint(lin * _LUT_STEPS).astype(np.int32)]


def lightness(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (...) float32 Lab L* (only luminance Y is needed)."""
    y = _LINEAR[rgb] @ _M_RGB2XYZ[1]
    return 116 * _f(y) - 16


def match_lightness(
    obj_rgb: np.ndarray, obj_mask: np.ndarray, context_rgb: np.ndarray
) -> np.ndarray:
    """Shift/scale the object's Lab lightness towards the context pixels' mean / std.

    Chroma (a, b) is kept: an anomaly should keep its colour, only its exposure adapts to the
    scene. Pixels outside ``obj_mask`` are returned unchanged.
    """
    if context_rgb.size == 0 or not obj_mask.any():
        return obj_rgb
    lab = rgb_to_lab(obj_rgb[obj_mask])  # (n, 3): only the object's pixels
    ctx_l = lightness(context_rgb.reshape(-1, 3))
    inside = lab[:, 0]
    mu_o, sd_o = float(inside.mean()), float(inside.std())
    mu_c, sd_c = float(ctx_l.mean()), float(ctx_l.std())
    ratio = float(np.clip(sd_c / sd_o, *STD_RATIO_RANGE)) if sd_o > 1e-3 else 1.0
    lab[:, 0] = np.clip((inside - mu_o) * ratio + mu_c, 0.0, 100.0)
    out = obj_rgb.copy()
    out[obj_mask] = lab_to_rgb(lab)
    return out
