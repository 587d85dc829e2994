"""Benchmark: the scoring memo (``Prediction.memo``) against scoring without it.

Every post-hoc method starts from a channel reduction of the same logits (max logit, logsumexp at
a temperature); the memo computes each once per prediction and keeps it on the prediction, where
the prediction cache counts it. Baseline, "no memo": each scorer recomputes its reductions. Both
score, on one fresh prediction per repeat, (a) the four default methods (msp, maxlogit, entropy,
energy: only lse(T=1) is shared) and (b) those plus the four head statistics (``stat_*``, shown
in Compare; a learned head reads the same statistics); the maps must be identical. Printed:
best-of-N wall and CPU seconds for each side and the ratio.

Data: the shared ERFNet's logits for the first RoadAnomaly21 image at 512x1024 (../shared);
without ../shared, random logits of the same shape (20 x 512 x 1024).

    python benchmarks/bench_scoring_memo.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomseg import scoring
from anomseg.prediction import Prediction
from anomseg.shared import shared_dir

METHODS = ("msp", "maxlogit", "entropy", "energy")
STATS = ("stat_max_prob", "stat_entropy", "stat_sum_prob", "stat_one_minus_max")


def logits() -> tuple[torch.Tensor, str]:
    shared = shared_dir()
    if shared is None:
        return torch.randn(20, 512, 1024, generator=torch.Generator().manual_seed(0)) * 4, "random"
    from anomseg.models import create_model
    from anomseg.predict import Predictor

    model = create_model("erfnet", checkpoint=shared / "models" / "erfnet_cityscapes.pth")
    image = sorted((shared / "data" / "anomaly_val" / "RoadAnomaly21" / "images").iterdir())[0]
    pred = Predictor(model, device="cpu", input_size=(512, 1024)).predict(image)
    return pred.logits, f"ERFNet on {image.name}"


def run(
    z: torch.Tensor, memo: bool, methods: tuple[str, ...]
) -> tuple[float, float, dict[str, np.ndarray]]:
    """(wall s, CPU s of this process, maps) of scoring the methods on a fresh prediction."""
    p = Prediction(logits=z)
    if not memo:
        p.memo = lambda key, compute: compute()  # every scorer computes its own reductions
    t, c = time.perf_counter(), time.process_time()
    maps = {m: scoring.score(m, p) for m in methods}
    return time.perf_counter() - t, time.process_time() - c, maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    z, what = logits()
    print(f"data: {what}, logits {tuple(z.shape)}")
    for title, methods in (("default four", METHODS), ("+ head statistics", METHODS + STATS)):
        wall: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        ref = None
        for _ in range(args.repeats):
            for memo in (False, True):  # interleaved: both sides see the same machine load
                w, c, maps = run(z, memo, methods)
                wall[memo].append(w)
                cpu[memo].append(c)
                ref = ref or maps
                for m in methods:
                    assert np.array_equal(maps[m], ref[m]), m
        for label, t in (("wall", wall), ("CPU", cpu)):
            base, ours = min(t[False]), min(t[True])
            print(f"{title} ({len(methods)} methods), {label}: no memo (baseline) {base:.3f} s"
                  f"   memo {ours:.3f} s   ratio {base / ours:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
