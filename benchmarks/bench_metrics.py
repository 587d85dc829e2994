"""Benchmark: anomseg.metrics (exact and streaming) vs scikit-learn on >= 50 M pixels.

Baseline (the seed's evaluation): concatenate every valid pixel, then
``sklearn.metrics.average_precision_score`` + ``sklearn.metrics.roc_curve`` (FPR at the first
threshold with TPR >= 0.95) + AUROC by trapezoids on that curve. Ours: ``AnomalyMetrics.update``
once per 512x1024 image, then ``compute()``; all timed in the same run on the same data.

Data: real-like MSP maps. Per pixel a logit margin z ~ N(4.5, 2) (normal) or N(1.5, 2) (anomaly,
1-3 % of each image), the score is ``1 - sigmoid(z)`` computed in float32 as a softmax would be,
so confident pixels collapse onto few float values (many exact ties, exact zeros) like real maps;
5 % of pixels are ignored (label 255).

Also measures the peak memory (tracemalloc) of feeding N pixels to a streaming metric at two
pixel counts: it stays flat, while exact mode grows 4 bytes per pixel.

    python benchmarks/bench_metrics.py            # 50 M pixels
    python benchmarks/bench_metrics.py --quick    # 5 M pixels, a few seconds
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np

from anomseg.metrics import AnomalyMetrics

H, W = 512, 1024


def make_image(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One real-like (scores float32 (H, W), labels uint8 (H, W)) pair, deterministic."""
    rng = np.random.default_rng([seed, index])
    rate = rng.uniform(0.01, 0.03)
    y = (rng.random((H, W), dtype=np.float32) < rate).astype(np.uint8)
    z = rng.standard_normal((H, W), dtype=np.float32) * 2 + np.where(y == 1, 1.5, 4.5)
    p = np.float32(1) / (np.float32(1) + np.exp(-z, dtype=np.float32))
    s = np.float32(1) - p  # float32 rounding near p = 1 gives the ties of real MSP maps
    y[rng.random((H, W), dtype=np.float32) < 0.05] = 255
    return s, y


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The baseline: scikit-learn on the concatenated valid pixels."""
    from sklearn.metrics import auc, average_precision_score, roc_curve

    v = labels != 255
    s, y = scores[v], labels[v]
    ap = average_precision_score(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    return {"auprc": ap, "fpr95": float(fpr[np.argmax(tpr >= 0.95)]), "auroc": auc(fpr, tpr)}


def ours(mode: str, images: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Our metric fed one image at a time."""
    m = AnomalyMetrics(mode)
    for s, y in images:
        m.update(s, y)
    return m.compute()


def timed(fn, *args) -> tuple[dict[str, float], float, float]:
    """(result, wall seconds, CPU seconds of this process summed over its threads)."""
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def peak_memory(mode: str, n_images: int, seed: int) -> float:
    """Peak traced MiB while feeding n_images generated on the fly (input not retained)."""
    gc.collect()
    tracemalloc.start()
    m = AnomalyMetrics(mode)
    for i in range(n_images):
        m.update(*make_image(seed, i))
    m.compute()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", type=float, default=50e6, help="pixel count (default 50e6)")
    ap.add_argument("--quick", action="store_true", help="5e6 pixels: a smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; best of each kept")
    ap.add_argument("--skip-memory", action="store_true", help="skip the memory measurement")
    args = ap.parse_args()
    pixels = 5e6 if args.quick else args.pixels
    n_images = max(1, round(pixels / (H * W)))

    t0 = time.perf_counter()
    images = [make_image(args.seed, i) for i in range(n_images)]
    scores = np.concatenate([s.ravel() for s, _ in images])
    labels = np.concatenate([y.ravel() for _, y in images])
    n_valid = int((labels != 255).sum())
    print(
        f"data: {n_images} images of {H}x{W} = {scores.size / 1e6:.1f} M pixels "
        f"({n_valid / 1e6:.1f} M valid, {(labels == 1).mean() * 100:.2f} % anomaly, "
        f"{np.unique(scores).size / 1e6:.2f} M distinct scores), made in "
        f"{time.perf_counter() - t0:.1f} s"
    )

    # rounds interleave the baseline and ours so that load from other jobs hits all alike
    runs = [
        ("sklearn AP + roc_curve (baseline)", sklearn_metrics, (scores, labels)),
        ("anomseg exact", ours, ("exact", images)),
        ("anomseg streaming", ours, ("streaming", images)),
    ]
    best: dict[str, tuple[dict[str, float], float, float]] = {}
    for _ in range(max(1, args.repeat)):
        for name, fn, fn_args in runs:
            res, wall, cpu = timed(fn, *fn_args)
            if name in best:
                wall, cpu = min(wall, best[name][1]), min(cpu, best[name][2])
            best[name] = (res, wall, cpu)
    ref, t_ref, c_ref = best["sklearn AP + roc_curve (baseline)"]
    print(
        f"\n{'method':<36}{'wall s':>8}{'speed-up':>10}{'CPU s':>8}{'CPU ratio':>11}"
        f"{'|dAuPRC|':>10}{'|dFPR95|':>10}{'|dAUROC|':>10}"
    )
    for name, (res, t, c) in best.items():
        d = [abs(res[k] - ref[k]) for k in ("auprc", "fpr95", "auroc")]
        print(
            f"{name:<36}{t:>8.2f}{t_ref / t:>9.1f}x{c:>8.2f}{c_ref / c:>10.1f}x"
            f"{d[0]:>10.1e}{d[1]:>10.1e}{d[2]:>10.1e}"
        )
    print(
        f"(reference: AuPRC {ref['auprc']:.4f}, FPR95 {ref['fpr95']:.4f}, "
        f"AUROC {ref['auroc']:.4f}; CPU s = this process's CPU time over all threads)"
    )

    if args.skip_memory:
        return
    del images, scores, labels, runs
    small = max(1, n_images // 5)
    print("\npeak traced memory while feeding N pixels (tracemalloc, MiB):")
    print(f"{'mode':<12}{small * H * W / 1e6:>9.1f} M px{n_images * H * W / 1e6:>9.1f} M px")
    for mode in ("streaming", "exact"):
        a, b = peak_memory(mode, small, args.seed), peak_memory(mode, n_images, args.seed)
        print(f"{mode:<12}{a:>14.1f}{b:>14.1f}")


if __name__ == "__main__":
    main()
