"""Benchmark: the paste renderer vs full-image float compositing, at 2048x1024 and 1024x512.

Ours: ``anomseg.synth.render.render`` (composites each paste inside its bounding box only, the
opaque interior by copying and only the feathered rim in float). Baseline, "straightforward
full-image compositing": per paste, a full-size float32 alpha map and object canvas are built
and ``out = a * obj + (1 - a) * out`` runs over the whole image (ground truth and instance maps
likewise updated with full-size masks). Both use the same object transform (flip / scale /
rotation / feather / photometric matching), so the ratio isolates the compositing strategy; the
script checks that both give the same pixels (within 1 level of rounding).

Workload: a street-like background (road in the lower half, a sidewalk strip, a car), 8 pastes
per image proposed by the placement sampler with its default config (perspective scale law,
flip, photometric matching on half of them), objects are random blobs with 256-px crops (COCO
cut-outs are of this order). One core: numpy / torch threads = 1, and times are the process's
CPU time (``time.process_time``, best of several passes), so a machine shared with other jobs
still gives one-core figures.

    python benchmarks/bench_synth.py            # ~1 minute
    python benchmarks/bench_synth.py --quick
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from anomseg.data.classes import TRAIN_ID  # noqa: E402
from anomseg.synth.color import match_lightness  # noqa: E402
from anomseg.synth.geometry import alpha_of, placed_box, transform_object  # noqa: E402
from anomseg.synth.placement import PlacementConfig, propose  # noqa: E402
from anomseg.synth.render import _context, compositing_order, render  # noqa: E402
from anomseg.synth.sources import Background, SourceObject  # noqa: E402


class Blobs:
    """Random smooth blobs with textured colours, 256-px crops."""

    name = "blobs"

    def __init__(self, n: int = 12, size: int = 256) -> None:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:size, :size] / size - 0.5
        self._objs = {}
        for i in range(n):
            ang = np.arctan2(yy, xx)
            r = 0.42 + 0.06 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.03 * np.cos(5 * ang)
            mask = np.hypot(yy * rng.uniform(0.8, 1.2), xx) < r
            rgb = np.clip(rng.normal(rng.uniform(40, 220, 3), 25, (size, size, 3)), 0, 255)
            ys, xs = np.nonzero(mask)
            sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            self._objs[f"b{i}"] = SourceObject(f"b{i}", rgb.astype(np.uint8)[sl], mask[sl])

    def ids(self) -> list[str]:
        return sorted(self._objs)

    def load(self, object_id: str) -> SourceObject:
        return self._objs[object_id]


def street(w: int, h: int, seed: int) -> Background:
    """A street-like labelled background."""
    rng = np.random.default_rng(seed)
    lab = np.full((h, w), TRAIN_ID["building"], np.uint8)
    lab[: h // 3] = TRAIN_ID["sky"]
    lab[h // 2 :] = TRAIN_ID["road"]
    lab[h // 2 :, : w // 8] = TRAIN_ID["sidewalk"]
    lab[int(h * 0.55) : int(h * 0.7), int(w * 0.6) : int(w * 0.75)] = TRAIN_ID["car"]
    lab[-h // 20 :] = 255
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Background(f"street-{w}x{h}-{seed}", rgb, lab)


def reference_render(bg: Background, records, objects: Blobs, rim: str = "ignore"):
    """Baseline: full-image float compositing per paste."""
    H, W = bg.labels.shape
    out = bg.rgb.astype(np.float32)
    gt = np.where(bg.labels == 255, 255, 0).astype(np.uint8)
    inst = np.zeros((H, W), np.uint16)
    for k, r in enumerate(compositing_order(records), start=1):
        t = transform_object(objects.load(r.object_id), r.scale, r.flip, r.rotation)
        box = placed_box(r.x, r.y, t.height, t.width)
        obj_rgb = t.rgb
        if r.photometric:
            obj_rgb = match_lightness(t.rgb, t.mask, _context(bg.rgb, box, t.mask))
        top, left, bottom, right = box
        a_full = np.zeros((H, W), np.float32)
        o_full = np.zeros((H, W, 3), np.float32)
        m_full = np.zeros((H, W), bool)
        t0, l0 = max(top, 0), max(left, 0)
        b0, r0 = min(bottom, H), min(right, W)
        a = alpha_of(t.mask, r.feather)
        a_full[t0:b0, l0:r0] = a[t0 - top : b0 - top, l0 - left : r0 - left]
        o_full[t0:b0, l0:r0] = obj_rgb[t0 - top : b0 - top, l0 - left : r0 - left]
        m_full[t0:b0, l0:r0] = t.mask[t0 - top : b0 - top, l0 - left : r0 - left]
        out = np.rint(a_full[..., None] * o_full + (1.0 - a_full[..., None]) * out)
        gt = np.where(a_full >= 1.0, np.uint8(1), gt)
        if rim == "ignore":
            gt = np.where(m_full & (a_full < 1.0), np.uint8(255), gt)
        inst = np.where(m_full, np.uint16(k), inst)
    return out.astype(np.uint8), gt, inst


def bench(w: int, h: int, images: int, repeats: int, objects: Blobs) -> tuple[float, float, int]:
    """(ours pastes/s, reference pastes/s, pastes per pass)."""
    scenes = []
    for i in range(images):
        bg = street(w, h, i)
        recs, _ = propose(bg, objects, 8, PlacementConfig(), seed=i)
        scenes.append((bg, recs))
    n = sum(len(r) for _, r in scenes)
    for bg, recs in scenes:  # same pixels, so the comparison is fair
        a = render(bg, recs, {"blobs": objects})
        rgb, gt, inst = reference_render(bg, recs, objects)
        assert np.abs(a.rgb.astype(int) - rgb).max() <= 1
        assert (a.gt == gt).all() and (a.instances == inst).all()

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            for bg, recs in scenes:
                fn(bg, recs)
            times.append(time.process_time() - t0)
        return min(times)

    ours = best(lambda bg, recs: render(bg, recs, {"blobs": objects}))
    ref = best(lambda bg, recs: reference_render(bg, recs, objects))
    return n / ours, n / ref, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    args = parser.parse_args()
    try:  # torch is not used here, but pin it too if present so nothing else spins threads
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    objects = Blobs()
    images, repeats = (2, 2) if args.quick else (6, 3)
    print(f"{'size':>10} {'pastes':>6} {'ours p/s':>9} {'full-image p/s':>15} {'ratio':>6}")
    for w, h in ((2048, 1024), (1024, 512)):
        ours, ref, n = bench(w, h, images, repeats, objects)
        print(f"{w}x{h:<5} {n:>6} {ours:>9.1f} {ref:>15.1f} {ours / ref:>5.1f}x")


if __name__ == "__main__":
    main()
