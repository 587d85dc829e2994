"""Benchmark: evaluation at the pace of the forward.

Baseline, "forward only": the model's forward alone on the same images, already decoded and
resized in memory (``Predictor.forward_arrays``, one image per call, prediction cache off) —
the least any evaluation of these images can cost. Ours: ``anomseg.evaluate.evaluate`` as
``anomseg eval`` runs it (decoding in a DataLoader worker ahead of the forward, every method
scored from the one forward, scoring + metric updates of image i in a background thread while
image i+1 is forwarded, the final metric computation included), with and without the per-image
drill-down values. Printed: eval wall / forward-only wall (goal <= 1.1), also with only the
pixel metrics (without the component metrics that ``METHOD_METRICS`` holds besides them).

Two more named baselines measured in the same run: the same evaluation with the overlap
switched off (``overlap=False``: scoring waits for the forward and vice versa), and the seed's
loop (``evalAnomaly.py`` run once per method: a forward per image *and method*; it checks that
both give the same AuPRC / FPR95). And the sort behind exact metrics: ``np.sort`` of the int32
keys vs ``torch.sort`` (what the metric used before), on one method's normal-pixel scores.

Data: the shared ERFNet on ../shared RoadAnomaly21 at 512x1024. Without ../shared it falls back to
an ERFNet with its initial weights on a generated 1280x720 benchmark (timing only).

    python benchmarks/bench_eval.py                 # 10 images, msp,maxlogit,entropy,energy
    python benchmarks/bench_eval.py --quick         # 3 images, no seed loop
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomseg import evaluate as ev
from anomseg.data import BenchmarkDataset
from anomseg.data.benchmark import PairTensorDataset
from anomseg.evaluate import evaluate, method_scores, parse_methods
from anomseg.imageio import resize_label
from anomseg.metrics import AnomalyMetrics, signed_keys
from anomseg.models.registry import create_model
from anomseg.predict import Predictor
from anomseg.shared import shared_dir


def seed_loop(model, ds, methods, size) -> tuple[dict[str, dict], float]:
    """One full pass over the dataset per method, a forward per image each time."""
    results = {}
    t0 = time.perf_counter()
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
    return results, time.perf_counter() - t0


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


@contextlib.contextmanager
def pixel_metrics_only():
    """Evaluate with the pixel metrics alone (the other METHOD_METRICS entries set aside)."""
    saved = dict(ev.METHOD_METRICS)
    for k in list(ev.METHOD_METRICS):
        if k != "pixel":
            del ev.METHOD_METRICS[k]
    try:
        yield
    finally:
        ev.METHOD_METRICS.clear()
        ev.METHOD_METRICS.update(saved)


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its reaped children (loader workers)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


CPU: dict[str, float] = {}


def best_of(repeat: int, fn, name: str = ""):
    """(result of the fastest run, its wall seconds); its CPU seconds go to ``CPU[name]``."""
    best = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = fn()
        dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
        if best is None or dt < best[1]:
            best = (out, dt)
            CPU[name] = dc
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="msp,maxlogit,entropy,energy")
    ap.add_argument("--quick", action="store_true", help="3 images, no seed loop")
    ap.add_argument("--repeat", type=int, default=1, help="runs per timing, the fastest is kept")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (as anomseg eval)")
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
    load = os.getloadavg()[0]
    print(f"{what}: {len(ds)} images at {size[0]}x{size[1]}, {len(methods)} methods, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at start")  # fmt: skip

    predictor = Predictor(model, device="cpu", input_size=size, cache_bytes=0)
    items = PairTensorDataset(ds, size)
    arrays = [items[i][0] for i in range(len(ds))]
    predictor.forward_arrays(arrays[:1], [{}])  # warm-up (allocator, first-call overheads)

    def forward_only() -> None:
        for a in arrays:
            predictor.forward_arrays([a], [{}])

    _, t_fwd = best_of(args.repeat, forward_only, "fwd")

    def run(per_image: bool, overlap: bool = True):
        return lambda: evaluate(
            predictor, [ds], methods, progress=False, per_image=per_image, overlap=overlap,
            num_workers=args.workers,
        )  # fmt: skip

    rows, t_full = best_of(args.repeat, run(True), "full")
    _, t_lean = best_of(args.repeat, run(False), "lean")
    _, t_serial = best_of(args.repeat, run(True, overlap=False), "serial")
    with pixel_metrics_only():
        _, t_px_full = best_of(args.repeat, run(True), "px_full")
        _, t_px_lean = best_of(args.repeat, run(False), "px_lean")
        _, t_px_serial = best_of(args.repeat, run(True, overlap=False), "px_serial")
    others = [k for k in ev.METHOD_METRICS if k != "pixel"]

    # the exact metric's sort: np.sort vs torch.sort of the same int32 keys
    keys = np.concatenate(
        [signed_keys(method_scores("maxlogit", {}, predictor.forward_arrays([a], [{}])[0]))
         .ravel() for a in arrays]
    )  # fmt: skip
    _, t_np = best_of(3, lambda: np.sort(keys))
    _, t_torch = best_of(3, lambda: torch.sort(torch.from_numpy(keys)))

    others = "+".join(["pixel", *others]) if others else "pixel"
    # on a loaded machine wall time measures the CPU share a run wins (more threads, more
    # share) as much as its speed; CPU seconds (all threads and loader workers) measure the work
    # the baseline again after the evaluations: the load drifts, the mean of both brackets them
    _, t_fwd_end = best_of(args.repeat, forward_only, "fwd_end")
    print(f"forward only: {t_fwd:.2f} s before the evaluations, {t_fwd_end:.2f} s after "
          f"(load average {os.getloadavg()[0]:.2f}); their mean is the baseline")  # fmt: skip
    t_fwd = (t_fwd + t_fwd_end) / 2
    c_fwd = (CPU["fwd"] + CPU["fwd_end"]) / 2
    print(f"\n{'':40s}{others + ' metrics':>36s}{'pixel metrics only':>36s}")
    print(f"{'':40s}{'wall s  x fwd   CPU s  x fwd':>36s}{'wall s  x fwd   CPU s  x fwd':>36s}")
    print(f"{'forward only (decoded images, baseline)':40s}{t_fwd:14.2f}{1.0:7.2f}"
          f"{c_fwd:8.2f}{1.0:7.2f}")  # fmt: skip
    for name, t_all, t_px, k in (
        ("eval, per-image values", t_full, t_px_full, "full"),
        ("eval, no per-image values", t_lean, t_px_lean, "lean"),
        ("eval, per-image, overlap off (baseline)", t_serial, t_px_serial, "serial"),
    ):
        c_all, c_px = CPU[k], CPU["px_" + k]
        print(f"{name:40s}{t_all:14.2f}{t_all / t_fwd:7.2f}{c_all:8.2f}{c_all / c_fwd:7.2f}"
              f"{t_px:14.2f}{t_px / t_fwd:7.2f}{c_px:8.2f}{c_px / c_fwd:7.2f}")  # fmt: skip
    print(
        f"\nratio eval / forward only: {t_full / t_fwd:.2f}x with per-image values, "
        f"{t_lean / t_fwd:.2f}x without (goal <= 1.1); pixel metrics only: "
        f"{t_px_full / t_fwd:.2f}x / {t_px_lean / t_fwd:.2f}x\n"
        f"CPU seconds eval / forward only: {CPU['full'] / c_fwd:.2f}x with per-image values, "
        f"{CPU['lean'] / c_fwd:.2f}x without (pixel metrics only "
        f"{CPU['px_full'] / c_fwd:.2f}x / {CPU['px_lean'] / c_fwd:.2f}x)\n"
        f"overlap: serial / overlapped = {t_serial / t_full:.2f}x "
        f"(pixel metrics only {t_px_serial / t_px_full:.2f}x)\n"
        f"exact-metric sort of {len(keys) / 1e6:.1f} M keys: torch.sort {t_torch:.3f} s, "
        f"np.sort {t_np:.3f} s: {t_torch / t_np:.1f}x"
    )
    if not args.quick:
        base, t_base = seed_loop(model, ds, methods, size)
        for r in rows:
            b = base[r.method]
            assert abs(r.auprc - b["auprc"]) < 1e-9 and abs(r.fpr95 - b["fpr95"]) < 1e-9, r.method
        print(
            f"seed's loop (a forward per image and method, {len(methods) * len(ds)} forwards): "
            f"{t_base:.2f} s = {t_base / t_full:.2f}x ours with per-image values, "
            f"{t_base / t_lean:.2f}x without (same AuPRC / FPR95)"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    for r in rows:
        print(f"  {r.method:10s} AuPRC {100 * r.auprc:6.2f}  FPR95 {100 * r.fpr95:6.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
