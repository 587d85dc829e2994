"""Benchmark: Compare's "95% TPR on dataset" thresholds for several methods.

Baseline, "one pass per method" (how the app did it before): ``Services.compare.dataset_threshold`` once
per method, each looping over the dataset; once the dataset's predictions outgrow the
predictor's cache (1 GiB: ~24 ERFNet predictions at 512x1024), every method re-runs the model on
every image. Ours: ``Services.compare.dataset_thresholds``, one loop over the dataset, each image
forwarded once and scored by every method. Both start from empty caches; the thresholds must be
identical. Printed: wall seconds, forwards, ratio.

Data: the shared ERFNet on ../shared fs_static (30 images, 20 with anomaly pixels, 2048x1024
scored at 512x1024). Without ../shared: the demo ERFNet on the built-in demo-anomalies benchmark
(timing only). ``--cache-mib`` sizes the prediction cache of both sides (default 256: about 6
ERFNet predictions, a dataset larger than the cache as in the issue; the app's default 1024
holds all 20 of fs_static, and then both sides forward each image once).

    python benchmarks/bench_tpr_thresholds.py [--methods msp,maxlogit,entropy,energy]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from anomseg.shared import shared_dir


def build_workspace(root: Path):
    """A workspace with one model and one eval dataset; returns (workspace, model, dataset id)."""
    from workbench.bootstrap import register_demo_models
    from workbench.workspace import Workspace

    ws = Workspace.open(root / "ws")
    shared = shared_dir()
    if shared is not None and (shared / "data/anomaly_val/fs_static").is_dir():
        ws.register_checkpoint(
            "erfnet-cs", "erfnet", shared / "models/erfnet_cityscapes.pth", input_size=(512, 1024)
        )
        ds = ws.register_benchmark("fs_static", shared / "data/anomaly_val/fs_static", role="eval")
        return ws, "erfnet-cs", int(ds)
    from anomseg.world.demo_data import build_demo

    build_demo(root / "demo", n_train=0, n_heldout=0, n_obstacles=0, n_anomalies=25)
    register_demo_models(ws)
    ds = ws.register_benchmark("demo-anomalies", root / "demo" / "demo-anomalies", role="eval")
    return ws, "demo-erfnet", int(ds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="msp,maxlogit,entropy,energy")
    ap.add_argument("--cache-mib", type=int, default=256, help="prediction cache (MiB)")
    args = ap.parse_args()
    names = args.methods.split(",")

    from anomseg.predict import PredictionCache
    from dashboard.services import Services

    with tempfile.TemporaryDirectory(prefix="anomseg-bench-tpr-") as tmp:
        ws, model, ds = build_workspace(Path(tmp))
        try:
            runs = {}
            for label in ("one pass per method (baseline)", "one pass for all (ours)"):
                ws._predictors.clear()  # a cold predictor cache for each side
                svc = Services(ws)
                pred = ws.predictor(model)
                pred.cache = PredictionCache(args.cache_mib << 20)
                f0, t0 = pred.forward_calls, time.perf_counter()
                if label.startswith("one pass per"):
                    thr = {n: svc.compare.dataset_threshold(model, n, None, ds) for n in names}
                else:
                    svc.compare.dataset_thresholds(model, names, None, ds)
                    thr = {n: svc.compare.dataset_threshold(model, n, None, ds) for n in names}  # hits
                runs[label] = (time.perf_counter() - t0, pred.forward_calls - f0, thr)
                print(f"{label:32s} {runs[label][0]:7.1f} s  {runs[label][1]:4d} forwards")
            (tb, fb, thr_b), (to, fo, thr_o) = runs.values()
            assert thr_b == thr_o, (thr_b, thr_o)
            print(f"same thresholds: {thr_o}")
            print(f"ratio (baseline / ours): {tb / to:.2f}x wall, {fb / max(fo, 1):.2f}x forwards")
        finally:
            ws.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
