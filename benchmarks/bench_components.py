"""Benchmark: what SegmentMeIfYouCan's component metrics add to ``anomseg eval`` on RoadAnomaly21.

Baseline: ``anomseg.evaluate.evaluate`` with the pixel metrics only (the ``components`` entry
taken out of ``METHOD_METRICS`` for that call). Ours: the same call with component metrics (maps
held per method, then connected components and sIoU / PPV / F1 at the best-F1 threshold). Both
with the shared ERFNet, the eval command's default methods (msp, maxlogit, entropy), exact mode,
a fresh prediction cache every run (so each run pays its forwards, as ``anomseg eval`` does),
alternated ``--repeat`` times in one process; wall and CPU time (this process) per run. Target:
components add <= 25 % to the wall time.

    python benchmarks/bench_components.py [--repeat 3] [--shared ../shared] [--score-size label]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", default="msp,maxlogit,entropy")
    ap.add_argument("--score-size", default="input", choices=("input", "label"))
    args = ap.parse_args()

    import torch

    from anomseg import evaluate as ev
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor

    shared = Path(args.shared)
    ds = BenchmarkDataset(shared / "data/anomaly_val/RoadAnomaly21")
    model = create_model("erfnet", checkpoint=shared / "models/erfnet_cityscapes.pth")
    methods = args.methods.split(",")
    components = ev.METHOD_METRICS["components"]

    def run(with_components: bool) -> tuple[float, float, list]:
        if not with_components:
            del ev.METHOD_METRICS["components"]
        try:
            predictor = Predictor(model, device="cpu")  # fresh cache: every run forwards
            t0, c0 = time.perf_counter(), time.process_time()
            rows = ev.evaluate(
                predictor,
                [ds],
                methods,
                progress=False,
                score_size=args.score_size,
                per_image=False,
            )
            return time.perf_counter() - t0, time.process_time() - c0, rows
        finally:
            ev.METHOD_METRICS["components"] = components

    print(f"RoadAnomaly21: {len(ds)} images, methods {methods}, torch threads "
          f"{torch.get_num_threads()}, score size {args.score_size}")  # fmt: skip
    run(True)  # warm-up: imports, allocator, first forward
    base_w, base_c, ours_w, ours_c = [], [], [], []
    for i in range(args.repeat):
        w, c, _ = run(False)
        base_w.append(w)
        base_c.append(c)
        w, c, rows = run(True)
        ours_w.append(w)
        ours_c.append(c)
        print(f"run {i + 1}: pixel only {base_w[-1]:.2f} s wall / {base_c[-1]:.2f} s CPU; "
              f"with components {ours_w[-1]:.2f} s / {ours_c[-1]:.2f} s")  # fmt: skip
    bw, ow = statistics.median(base_w), statistics.median(ours_w)
    bc, oc = statistics.median(base_c), statistics.median(ours_c)
    print(f"\nbaseline (pixel metrics only): {bw:.2f} s wall, {bc:.2f} s CPU (median)")
    print(f"with component metrics:         {ow:.2f} s wall, {oc:.2f} s CPU (median)")
    print(f"ratio: wall {ow / bw:.3f}x (+{100 * (ow / bw - 1):.1f} %), "
          f"CPU {oc / bc:.3f}x (+{100 * (oc / bc - 1):.1f} %); target <= 1.25x")  # fmt: skip
    for r in rows:
        c = r.components
        print(f"  {r.method}: sIoU {100 * c['siou']:.2f}  PPV {100 * c['ppv']:.2f}  "
              f"mean F1 {100 * c['f1_mean']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
