"""What the seed's head recipe and geometry change, measured (a quality measurement, not a speed one).

Trains one head per (recipe, kind) on a model registered in a workspace (``anomseg demo build
--workspace W`` registers demo-eomt with its training pastes), with the same epochs and seed,
then scores every head under both geometries on an eval benchmark at each input size asked for,
and prints AuPRC, FPR95 and calibration: the mean predicted anomaly probability on anomalous and
on normal pixels.

    python benchmarks/head_recipe_geometry.py --workspace W --model demo-eomt \\
        --dataset W/demo/demo-anomalies --sizes model,native

Geometry only matters where EoMT's windows are not the image: ``model`` (the model's own input
size, one window for the demo) must give identical figures for both; ``native`` (512x1024 demo
images, rescaled into the 128x256 window) shows the difference the resize order makes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(head, predictor, dataset) -> dict[str, float]:
    """AuPRC, FPR95 (anomseg.metrics) and mean probabilities on anomaly / normal pixels."""
    from anomseg.imageio import resize_label
    from anomseg.metrics import AnomalyMetrics
    from anomseg.models.heads import head_scorer

    score = head_scorer(head)
    metrics = AnomalyMetrics(mode="exact")
    sums = {0: 0.0, 1: 0.0}
    counts = {0: 0, 1: 0}
    for _name, pred, label in predictor.predict_dataset(dataset):
        lab = label if label.shape == pred.size else resize_label(label, pred.size)
        if not (lab == 1).any():
            continue  # the seed's protocol: images without anomaly pixels are skipped
        amap = score(pred)
        metrics.update(amap, lab)
        for c in (0, 1):
            sums[c] += float(amap[lab == c].astype(np.float64).sum())
            counts[c] += int((lab == c).sum())
    res = metrics.compute()
    return {
        "auprc": float(res["auprc"]),
        "fpr95": float(res["fpr95"]),
        "mean_p_anomaly": sums[1] / max(counts[1], 1),
        "mean_p_normal": sums[0] / max(counts[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("--model", default="demo-eomt")
    p.add_argument(
        "--dataset",
        action="append",
        required=True,
        help="eval benchmark(s) (images/ + labels_masks/)",
    )
    p.add_argument("--recipes", default="default,seed")
    p.add_argument("--kinds", default="stats,features")
    p.add_argument("--sizes", default="model,native", help="model, native or HxW, comma-separated")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", help="write the rows as JSON")
    args = p.parse_args(argv)

    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.models.heads import load_head
    from anomseg.predict import Predictor
    from db import Store
    from training.trainer import TrainConfig, train_head
    from workbench.models import frozen_model

    ws = Path(args.workspace).resolve()
    store = Store.open(workspace=ws)
    benches = [BenchmarkDataset(d) for d in args.dataset]
    heads = {}
    try:
        frozen = frozen_model(store, args.model, "cpu")
        for recipe in args.recipes.split(","):
            for kind in args.kinds.split(","):
                cfg = TrainConfig(head=kind, recipe=recipe, epochs=args.epochs, seed=0)
                out = train_head(store, ws, frozen, cfg, evaluate=False, device="cpu")
                heads[(recipe, kind)] = load_head(out["checkpoint"])[0]
                print(f"trained {recipe}/{kind}: head:{out['version']}", file=sys.stderr)
        model = frozen.get_predictor().model
    finally:
        store.close()

    rows = []
    for size in args.sizes.split(","):
        if size == "model":
            input_size = None
        elif size == "native":
            input_size = "native"
        else:
            input_size = tuple(int(v) for v in size.split("x"))
        predictor = Predictor(model, device="cpu", input_size=input_size)
        for bench, (recipe, kind), geometry in (
            (b, rk, g) for b in benches for rk in heads for g in ("stitched", "window")
        ):
            h = copy.deepcopy(heads[(recipe, kind)])
            h.geometry = geometry
            r = {"dataset": bench.name, "size": size, "recipe": recipe, "kind": kind}
            r.update(geometry=geometry, **measure(h, predictor, bench))
            rows.append(r)
            print(
                f"{bench.name:>14} {size:>7} {recipe:>7} {kind:>8} {geometry:>8}"
                f"  AuPRC {100 * r['auprc']:6.2f}"
                f"  FPR95 {100 * r['fpr95']:6.2f}  mean p anomaly {r['mean_p_anomaly']:.3f}"
                f"  normal {r['mean_p_normal']:.3f}",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
