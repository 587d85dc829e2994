"""Benchmark: the Flag tab's save as the number of flags on the image grows (issue 15 §8).

One save does what the tab's handler does: store the painted flag (``Services.flags.save_flag``),
redraw the stored-flags overlay and the flag table, and hand the editor a fresh canvas (the map
with the stored flags over it). Timed on a real Fishyscapes Static frame (2048x1024, from
../shared) with 0 and with 200 flags already on the image, for

* **baseline** ``per-flag full frame``: the previous drawing (every flag decoded to a full
  2048x1024 mask, resized and blended over the image one flag at a time, twice per save);
* **current** ``kind layers``: each flag's crop sampled into the display frame, one layer per kind,
  one blend per kind (``dashboard.flag_layers``).

Prints the median seconds per save, the growth (200 flags / 0 flags) of each, the current
path's growth from 20 to 200 flags (0 flags skips drawing altogether), and baseline / current at
200 flags.

    python benchmarks/bench_flag_save.py [--flags 200] [--saves 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def legacy_overlay(svc, image_id: int, rgb_small: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The drawing before issue 15: full-frame decode + per-flag resize and blend."""
    from dashboard import render
    from dashboard.services.flags import FLAG_KIND_SHORT
    from db import flags as dbflags

    with svc.store.read() as s:
        masks = [
            (FLAG_KIND_SHORT[f.kind], f.decoded_mask())
            for f in dbflags.list_flags(s, image_id=image_id)
        ]
    return render.flag_overlay(rgb_small, masks, alpha=alpha)


def save_once(svc, legacy: bool, model: str, image_id: int, layer: np.ndarray) -> float:
    """One save as the Flag tab's handler does it; returns seconds."""
    from anomseg.imageio import read_image
    from dashboard import render
    from dashboard.services.flags import PAINT_MAX_SIDE

    value = {"background": None, "layers": [layer], "composite": None}
    t0 = time.perf_counter()
    svc.flags.save_flag(model, image_id, "msp", None, "false positive", value)
    if legacy:
        _img, _ds, path = svc.catalog.image_paths(image_id)
        rgb = read_image(path)
        (h, w), _ = render.fit_size(rgb.shape[:2], PAINT_MAX_SIDE)
        legacy_overlay(svc, image_id, render.resize_rgb(rgb, (h, w)))
        svc.flags.flags_frame(image_id)
        canvas = svc.flags.flag_canvas(model, image_id, "msp")  # then redrawn the old way:
        legacy_overlay(svc, image_id, canvas["background"], alpha=0.25)
    else:
        svc.flags.flags_overlay(image_id)
        svc.flags.flags_frame(image_id)
        svc.flags.flag_canvas(model, image_id, "msp")
    return time.perf_counter() - t0


def add_flags(svc, image_id: int, model_id: int, n: int, hw: tuple[int, int]) -> None:
    from db import flags as dbflags

    rng = np.random.default_rng(0)
    h, w = hw
    with svc.store.session() as s:
        for i in range(n):
            m = np.zeros(hw, bool)
            y0, x0 = int(rng.integers(0, h - 200)), int(rng.integers(0, w - 200))
            m[y0 : y0 + int(rng.integers(20, 200)), x0 : x0 + int(rng.integers(20, 200))] = True
            kind = ("false_positive", "false_negative", "ignore")[i % 3]
            dbflags.add_flag(s, image_id, model_id, "msp", kind, m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flags", type=int, default=200)
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--baseline-saves", type=int, default=2, help="the baseline is slow")
    args = ap.parse_args()

    import torch

    from anomseg.shared import shared_dir
    from dashboard import render
    from dashboard.services import Services
    from dashboard.services.flags import PAINT_MAX_SIDE
    from db import catalog
    from workbench.bootstrap import register_demo_models
    from workbench.workspace import Workspace

    torch.set_num_threads(1)
    shared = shared_dir()
    if shared is None:
        raise SystemExit("../shared is required (Fishyscapes Static frames)")
    root = shared / "data" / "anomaly_val" / "fs_static"
    tmp = Path(tempfile.mkdtemp(prefix="bench-flag-save-"))
    ws = Workspace.open(tmp / "ws")
    ws.register_benchmark("fs_static", root)
    register_demo_models(ws)
    svc = Services(ws)
    model = "demo-erfnet"
    with ws.store.read() as s:
        imgs = catalog.list_images(s, "fs_static")[:5]
        model_id = catalog.get_model(s, model).id
        ids = [(i.id, (i.height, i.width)) for i in imgs]
    results: dict[tuple[str, int], float] = {}
    cells = [("baseline", True, 0), ("baseline", True, args.flags)]
    cells += [("current", False, n) for n in (0, 20, args.flags)]
    for k, (label, legacy, n) in enumerate(cells):
        image_id, hw = ids[k]  # a fresh image per cell: its flags are its own
        frame, _ = render.fit_size(hw, PAINT_MAX_SIDE)
        layer = np.zeros((*frame, 4), np.uint8)
        layer[100:180, 300:420] = (255, 45, 85, 255)
        add_flags(svc, image_id, model_id, n, hw)
        svc.flags.flag_canvas(model, image_id, "msp")  # the forward and map are cached, as in use
        saves = args.baseline_saves if legacy else args.saves
        times = [save_once(svc, legacy, model, image_id, layer) for _ in range(saves)]
        results[(label, n)] = statistics.median(times)
        print(f"{label:9s} {n:4d} flags on the image: {results[(label, n)]:.3f} s per save")
    n = args.flags
    for label in ("baseline", "current"):
        grow = results[(label, n)] / results[(label, 0)]
        print(f"{label:9s} growth {n} flags / 0 flags: {grow:.2f}x")
    grow = results[("current", n)] / results[("current", 20)]
    print(f"current   growth {n} flags / 20 flags: {grow:.2f}x")
    print(
        f"baseline / current at {n} flags: {results[('baseline', n)] / results[('current', n)]:.1f}x"
    )
    ws.close()


if __name__ == "__main__":
    main()
