"""Benchmark: evaluating N methods with one forward per image vs one forward per method.

Ours: ``anomseg.evaluate.evaluate`` — every image is run through the model once (the prediction
cache is switched off, so nothing is reused between runs) and all N scorers read that one
``Prediction``; timed with and without the per-image drill-down values (the baseline has none). Baseline, "the seed's loop": the seed's ``evalAnomaly.py`` is run once per method,
so for each method every image is read, resized, run through the model and scored again. The
baseline here uses the same reader, resize, scorers and metrics as ours, so the ratio isolates the
number of forward passes; the script checks that both give the same AuPRC / FPR95.

Data: the shared ERFNet on ../shared RoadAnomaly21 at 512x1024. Without ../shared it falls back to
an ERFNet with its initial weights on a generated 1280x720 benchmark (timing only).

    python benchmarks/bench_eval.py                 # 10 images, msp,maxlogit,entropy,energy
    python benchmarks/bench_eval.py --quick         # 3 images
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomseg.data import BenchmarkDataset
from anomseg.evaluate import evaluate, method_scores, parse_methods
from anomseg.imageio import resize_label
from anomseg.metrics import AnomalyMetrics
from anomseg.models.registry import create_model
from anomseg.predict import Predictor
from anomseg.shared import shared_dir


def seed_loop(model, ds, methods, size) -> tuple[dict[str, dict], float, float]:
    """One full pass over the dataset per method, a forward per image each time."""
    results = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for canon, name, params in parse_methods(methods):
        predictor = Predictor(model, device="cpu", input_size=size, cache_bytes=0)
        metric = AnomalyMetrics("exact")
        for i in range(len(ds)):
            image, label, _ = ds[i]
            pred = predictor.predict(image)
            label = resize_label(label, pred.size)
            if not (label == 1).any():
                continue
            metric.update(method_scores(name, params, pred), label)
        results[canon] = metric.compute()
    return results, time.perf_counter() - t0, time.process_time() - c0


def generated_benchmark(root: Path, n: int) -> Path:
    """A benchmark-layout folder with n random 1280x720 images and blob labels."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        lab = np.zeros((720, 1280), np.uint8)
        y, x = rng.integers(100, 600), rng.integers(100, 1100)
        lab[y : y + 80, x : x + 120] = 1
        lab[:40] = 255
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="msp,maxlogit,entropy,energy")
    ap.add_argument("--quick", action="store_true", help="3 images instead of 10")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    n_images = 3 if args.quick else 10
    size = (512, 1024)
    shared = shared_dir()
    tmp = tempfile.TemporaryDirectory()
    if shared is not None:
        model = create_model("erfnet", checkpoint=shared / "models" / "erfnet_cityscapes.pth")
        root = shared / "data" / "anomaly_val" / "RoadAnomaly21"
        what = "shared ERFNet on RoadAnomaly21"
    else:
        model = create_model("erfnet")
        root = generated_benchmark(Path(tmp.name) / "generated", n_images)
        what = "ERFNet (initial weights) on a generated benchmark (../shared absent)"
    ds = BenchmarkDataset(root)
    ds.samples = ds.samples[:n_images]
    print(f"{what}: {len(ds)} images at {size[0]}x{size[1]}, {len(methods)} methods, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    predictor = Predictor(model, device="cpu", input_size=size, cache_bytes=0)
    predictor.predict(ds[0][0])  # warm-up (allocator, first-call overheads) for both sides
    t0, c0 = time.perf_counter(), time.process_time()
    rows = evaluate(predictor, [ds], methods, progress=False)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    forwards_ours = predictor.forward_calls - 1

    t0, c0 = time.perf_counter(), time.process_time()
    evaluate(predictor, [ds], methods, progress=False, per_image=False)
    t_lean, c_lean = time.perf_counter() - t0, time.process_time() - c0

    base, t_base, c_base = seed_loop(model, ds, methods, size)
    for r in rows:
        b = base[r.method]
        assert abs(r.auprc - b["auprc"]) < 1e-9 and abs(r.fpr95 - b["fpr95"]) < 1e-9, r.method

    n = len(rows)
    print(f"{'':32s}{'wall s':>9}{'CPU s':>9}  forwards")
    print(f"{'baseline (forward per method)':32s}{t_base:9.1f}{c_base:9.1f}  {n * len(ds):8d}")
    print(f"{'ours (one forward per image)':32s}{t_ours:9.1f}{c_ours:9.1f}  {forwards_ours:8d}")
    print(f"{'ours, no per-image drill-down':32s}{t_lean:9.1f}{c_lean:9.1f}  {forwards_ours:8d}")
    print(
        f"ratio baseline / ours: {t_base / t_ours:.2f}x wall, {c_base / c_ours:.2f}x CPU; "
        f"without per-image values {t_base / t_lean:.2f}x wall, {c_base / c_lean:.2f}x CPU\n"
        f"(ideal {n}x for {n} methods; the scorers' own cost, paid once per method by both, "
        f"keeps it below when the forward is as cheap as ERFNet's)"
    )
    for r in rows:
        print(f"  {r.method:10s} AuPRC {100 * r.auprc:6.2f}  FPR95 {100 * r.fpr95:6.2f}  (equal)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
