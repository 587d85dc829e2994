"""Benchmark: real backgrounds for synthetic pastes (CamVid through its class map x real COCO).

Prints, for every CamVid frame in ``../shared/data/camvid``:

* how many frames have enough road / sidewalk for the placement engine (default
  ``PlacementConfig``: 80 % of the footprint on road or sidewalk, none on a person or vehicle)
  to place 1 object, and how many take all 3 of 3 objects;
* propose + render time per sample on CamVid x COCO (``mini_a`` train objects) against the
  built-in world's procedural scene x bank (the baseline the dashboard used so far), measured in
  the same run at the same sample size (360 x 480), and the ratio.

    python benchmarks/bench_real_backgrounds.py [--shared ../shared] [--frames 367]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--frames", type=int, default=367)
    args = ap.parse_args()

    import numpy as np

    from anomseg.synth.coco import CocoObjects
    from anomseg.synth.labelled import LabelledBackgrounds
    from anomseg.synth.placement import PlacementConfig, propose
    from anomseg.synth.render import render
    from anomseg.world.demo_data import SPECS
    from anomseg.world.objects import ObjectBank
    from anomseg.world.scenes import generate_scene

    data = Path(args.shared) / "data"
    coco = data / "coco_subsets" / "mini_a"
    objs = CocoObjects(coco / "annotations" / "instances_train2017.json", coco / "train2017")
    bgs = LabelledBackgrounds(data / "camvid")
    cfg = PlacementConfig()
    ids = bgs.ids()[: args.frames]
    one = three = 0
    road = []
    real_s = []
    for i, bid in enumerate(ids):
        bg = bgs.load(bid)
        road.append(float(np.isin(bg.labels, (0, 1)).mean()))
        t = time.perf_counter()
        recs, _ = propose(bg, objs, 3, cfg, seed=i)
        render(bg, recs, {"coco": objs})
        real_s.append(time.perf_counter() - t)
        one += bool(recs)
        three += len(recs) == 3

    bank = ObjectBank(SPECS["train"].categories, *SPECS["train"].objects)
    base_s = []
    for i in range(min(len(ids), 60)):
        bg = generate_scene(10_000_000 + i, (360, 480))
        t = time.perf_counter()
        recs, _ = propose(bg, bank, 3, cfg, seed=i)
        render(bg, recs, {"bank": bank})
        base_s.append(time.perf_counter() - t)

    n = len(ids)
    print(f"CamVid frames: {n}; road+sidewalk share median {statistics.median(road):.1%}")
    print(
        f"frames taking >= 1 object: {one} ({one / n:.1%}); all 3 of 3: {three} ({three / n:.1%})"
    )
    real, base = statistics.median(real_s), statistics.median(base_s)
    print(f"propose+render per sample, median: CamVid x COCO {1e3 * real:.1f} ms; "
          f"baseline procedural x bank {1e3 * base:.1f} ms; ratio {real / base:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
