"""Acceptance on real data: the shared ERFNet at 512x1024 on RoadAnomaly21 (and fs_static, slow).

``anomseg eval`` must equal an independent computation: labels read and resized here with PIL /
torchvision, scores recomputed here with plain torch (not ``anomseg.scoring``), metrics from
scikit-learn (``average_precision_score``; FPR95 = FPR at the first ``roc_curve`` threshold whose
TPR >= 0.95). Streaming metrics must stay within 1e-3 of exact, and the method ordering must
match the seed report's Table 1 (maxlogit clearly best).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_curve
from torchvision.transforms import Compose, InterpolationMode, Resize, ToTensor

pytestmark = pytest.mark.realdata

METHODS = ("msp", "maxlogit", "entropy")
SEED_NAMES = {"msp": "MSP", "maxlogit": "MaxLogit", "entropy": "MaxEntropy"}
SIZE = (512, 1024)
TOL_POINTS = 0.01  # 0.01 percentage points


def independent_scores(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """MSP / MaxLogit / entropy from raw logits (C, H, W), written from the definitions."""
    z = logits.double()
    p = torch.softmax(z, dim=0)
    return {
        "msp": (1.0 - p.max(dim=0).values).numpy(),
        "maxlogit": (-z.max(dim=0).values).numpy(),
        "entropy": (-(p * torch.log(p.clamp_min(1e-300))).sum(dim=0)).numpy(),
    }


def read_label_resized(path: Path) -> np.ndarray:
    return np.array(Resize(SIZE, InterpolationMode.NEAREST)(Image.open(path)))


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    valid = labels != 255
    y, s = labels[valid] == 1, scores[valid]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auprc": float(average_precision_score(y, s)),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
        "fpr95_interp": float(np.interp(0.95, tpr, fpr)),  # the seed scripts' variant, printed
    }


def seed_table(shared: Path, dataset: str) -> dict[str, tuple[float, float]]:
    with open(shared / "reference" / "report_tables.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["table"] == "T1" and r["dataset"] == dataset]
    by_name = {r["method"]: (float(r["auprc"]), float(r["fpr95"])) for r in rows}
    return {m: by_name[SEED_NAMES[m]] for m in METHODS}


def run_cli(*args: str) -> int:
    from workbench.cli import main

    return main(list(args))


@pytest.fixture(scope="module")
def erfnet(erfnet_checkpoint):
    from anomseg.models.registry import create_model

    return create_model("erfnet", checkpoint=erfnet_checkpoint)


@pytest.fixture(scope="module")
def ra21_run(erfnet, road_anomaly21):
    """One forward per image through a Predictor (kept in its cache) + the independent maps."""
    from anomseg.data import BenchmarkDataset
    from anomseg.predict import Predictor

    predictor = Predictor(erfnet, device="cpu", input_size=SIZE, cache_bytes=800 << 20)
    ds = BenchmarkDataset(road_anomaly21)
    maps: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    labels, names = [], []
    for name, pred, _ in predictor.predict_dataset(ds, batch_size=2):
        lab = read_label_resized(road_anomaly21 / "labels_masks" / f"{name}.png")
        assert (lab == 1).any()  # every RoadAnomaly21 image holds an anomaly: none skipped
        for m, s in independent_scores(pred.logits).items():
            maps[m].append(s)
        labels.append(lab)
        names.append(name)
    assert predictor.forward_calls == 5 and len(predictor.cache) == 10
    y = np.concatenate([lab.ravel() for lab in labels])
    reference = {
        m: sklearn_metrics(np.concatenate([s.ravel() for s in maps[m]]), y) for m in METHODS
    }
    return {
        "predictor": predictor,
        "dataset": ds,
        "reference": reference,
        "maps": maps,
        "labels": labels,
        "names": names,
    }


def test_predictor_input_matches_seed_preprocessing(erfnet, road_anomaly21, ra21_run):
    """The cached forward equals the seed's own pipeline (torchvision Resize + ToTensor)."""
    path = road_anomaly21 / "images" / "3.png"
    tf = Compose([Resize(SIZE, InterpolationMode.BILINEAR), ToTensor()])
    with torch.inference_mode():
        ref = erfnet(tf(Image.open(path).convert("RGB")).unsqueeze(0))[0]
    calls = ra21_run["predictor"].forward_calls
    pred = ra21_run["predictor"].predict(path)
    assert ra21_run["predictor"].forward_calls == calls  # served from the cache
    torch.testing.assert_close(pred.logits, ref.float(), rtol=1e-4, atol=1e-4)


def test_cli_eval_equals_sklearn_on_road_anomaly21(
    tmp_path, erfnet_checkpoint, road_anomaly21, shared, ra21_run
):
    out = tmp_path / "ra21.json"
    rc = run_cli(
        "eval", "--model", "erfnet", "--checkpoint", str(erfnet_checkpoint),
        "--dataset", str(road_anomaly21), "--methods", ",".join(METHODS),
        "--input-size", "512x1024", "--out", str(out), "--no-progress", "--batch-size", "2",
    )  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["units"] == "fraction" and doc["input_size"] == [512, 1024]
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == set(METHODS)
    ref = ra21_run["reference"]
    seed = seed_table(shared, "RoadAnomaly21")
    print("\nRoadAnomaly21, ERFNet 512x1024   ours (anomseg eval) | sklearn | seed Table 1")
    for m in METHODS:
        r = rows[m]
        print(
            f"  {m:9s} AuPRC {100 * r['auprc']:6.2f} | {100 * ref[m]['auprc']:6.2f} | "
            f"{seed[m][0]:6.2f}   FPR95 {100 * r['fpr95']:6.2f} | {100 * ref[m]['fpr95']:6.2f} "
            f"(interp {100 * ref[m]['fpr95_interp']:6.2f}) | {seed[m][1]:6.2f}"
        )
        assert r["n_images"] == 10 and r["n_skipped"] == 0
        assert abs(100 * r["auprc"] - 100 * ref[m]["auprc"]) <= TOL_POINTS, m
        assert abs(100 * r["fpr95"] - 100 * ref[m]["fpr95"]) <= TOL_POINTS, m
    # seed Table 1: maxlogit clearly best in AuPRC, then entropy, then msp
    ours = {m: 100 * rows[m]["auprc"] for m in METHODS}
    assert ours["maxlogit"] > max(ours["msp"], ours["entropy"]) + 5.0
    assert sorted(METHODS, key=ours.get) == sorted(METHODS, key=lambda m: seed[m][0])
    # the shared weights are a reconstruction: same range as the published numbers, not digits
    for m in METHODS:
        assert abs(ours[m] - seed[m][0]) < 3.0, m
        assert abs(100 * rows[m]["fpr95"] - seed[m][1]) < 8.0, m


def test_library_evaluate_exact_streaming_and_per_image(ra21_run):
    from anomseg.evaluate import evaluate

    predictor, ds, ref = ra21_run["predictor"], ra21_run["dataset"], ra21_run["reference"]
    calls = predictor.forward_calls
    exact = {r.method: r for r in evaluate(predictor, [ds], list(METHODS), "exact", progress=False)}
    stream_rows = evaluate(
        predictor, [ds], list(METHODS), "streaming", progress=False, per_image=False
    )
    stream = {r.method: r for r in stream_rows}
    assert predictor.forward_calls == calls  # both runs from the cache: one forward per image
    for m in METHODS:
        assert abs(exact[m].auprc - ref[m]["auprc"]) <= TOL_POINTS / 100, m
        assert abs(exact[m].fpr95 - ref[m]["fpr95"]) <= TOL_POINTS / 100, m
        assert abs(stream[m].auprc - exact[m].auprc) <= 1e-3, m
        assert abs(stream[m].fpr95 - exact[m].fpr95) <= 1e-3, m
        assert abs(stream[m].auroc - exact[m].auroc) <= 1e-3, m
    # drill-down: per-image AuPRC of the image with the fewest anomaly pixels, against sklearn
    rows = exact["maxlogit"].per_image
    assert [r["name"] for r in rows] == ra21_run["names"]
    i = int(np.argmin([r["n_anomaly"] for r in rows]))
    lab = ra21_run["labels"][i]
    one = sklearn_metrics(ra21_run["maps"]["maxlogit"][i].ravel(), lab.ravel())
    assert rows[i]["n_anomaly"] == int((lab == 1).sum())
    assert abs(rows[i]["auprc"] - one["auprc"]) <= 1e-6
    assert abs(rows[i]["fpr95"] - one["fpr95"]) <= 1e-6
    worst = exact["maxlogit"].worst_images(3)
    assert [w["auprc"] for w in worst] == sorted(r["auprc"] for r in rows)[:3]


@pytest.mark.slow
def test_fs_static_equals_sklearn(tmp_path, erfnet, erfnet_checkpoint, fs_static, shared):
    """Fishyscapes Static (30 images 2048x1024; the seed skips the 10 without anomaly pixels)."""
    tf = Compose([Resize(SIZE, InterpolationMode.BILINEAR), ToTensor()])
    maps: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    labels = []
    for img in sorted((fs_static / "images").glob("*.jpg")):
        lab = read_label_resized(fs_static / "labels_masks" / f"{img.stem}.png")
        if not (lab == 1).any():
            continue
        with torch.inference_mode():
            z = erfnet(tf(Image.open(img).convert("RGB")).unsqueeze(0))[0]
        for m, s in independent_scores(z).items():
            maps[m].append(s.astype(np.float32).ravel())
        labels.append(lab.ravel())
    y = np.concatenate(labels)
    ref = {m: sklearn_metrics(np.concatenate(maps[m]), y) for m in METHODS}
    out = tmp_path / "fs.json"
    rc = run_cli(
        "eval", "--model", "erfnet", "--checkpoint", str(erfnet_checkpoint),
        "--dataset", str(fs_static), "--methods", ",".join(METHODS), "--input-size", "512x1024",
        "--out", str(out), "--no-progress", "--batch-size", "2",
    )  # fmt: skip
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    seed = seed_table(shared, "FS_Static")
    print("\nfs_static, ERFNet 512x1024   ours | sklearn | seed Table 1")
    for m in METHODS:
        r = rows[m]
        print(
            f"  {m:9s} AuPRC {100 * r['auprc']:6.2f} | {100 * ref[m]['auprc']:6.2f} | "
            f"{seed[m][0]:6.2f}   FPR95 {100 * r['fpr95']:6.2f} | {100 * ref[m]['fpr95']:6.2f} | "
            f"{seed[m][1]:6.2f}   {r['seconds']:.1f}s"
        )
        assert r["n_images"] == len(labels) == 20 and r["n_skipped"] == 10
        assert abs(100 * r["auprc"] - 100 * ref[m]["auprc"]) <= TOL_POINTS, m
        assert abs(100 * r["fpr95"] - 100 * ref[m]["fpr95"]) <= TOL_POINTS, m
