"""Dashboard side of the component metrics: Leaderboard columns and protocol cards, worst images
by sIoU, 'these rows differ in protocol', and Compare's threshold view (checked against
``anomseg.components`` on the same map)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image
from test_dashboard_services import MiniWorkspace, svc, ws  # noqa: F401  (module fixtures)


@pytest.fixture(scope="module")
def two_results(ws):  # noqa: F811
    from anomseg.protocol import card
    from db import catalog
    from db import results as dbresults

    base = dict(score_size="input", skip_empty=True, label_remap=None, metric_mode="exact",
                track="anomaly", checkpoint_sha256="c" * 64, dataset_sha256="d" * 64)  # fmt: skip
    ours = card(input_size=(64, 128), **base)
    theirs = card(input_size="native", **{**base, "skip_empty": False})
    per = [{"name": f"img{i}", "auprc": a, "siou": s}
           for i, (a, s) in enumerate(((0.5, 0.7), (0.1, 0.9), (0.9, 0.05)))]  # fmt: skip

    def add(s):
        m = catalog.get_model(s, "tiny-erfnet")
        a = dbresults.add_eval_result(
            s, m.id, "entropy", ws.eval_id,
            {"auprc": 0.3, "fpr95": 0.5, "auroc": 0.7, "siou": 0.25, "ppv": 0.4, "f1_mean": 0.1},
            3, per_image=per, params={"protocol": ours},
        )  # fmt: skip
        b = dbresults.add_eval_result(
            s, m.id, "energy", ws.eval_id, {"auprc": 0.2, "siou": 0.5}, 3,
            params={"protocol": theirs},
        )  # fmt: skip
        return a.id, b.id

    return ws.store.transact(add)


def test_leaderboard_has_component_columns_and_protocol(svc, two_results):  # noqa: F811
    df = svc.leaderboard.leaderboard_frame()
    for col in ("sIoU", "PPV", "F1", "protocol"):
        assert col in df.columns
    row = df[df["method id"] == "entropy"].iloc[0]
    assert (row["sIoU"], row["PPV"], row["F1"]) == (25.0, 40.0, 10.0)
    assert row["protocol"].startswith("64x128 · score@input · skip-empty")
    assert df[df["method id"] == "msp"].iloc[0]["protocol"] == ""  # stored without a card


def test_worst_images_by_siou(svc, ws, two_results):  # noqa: F811
    a, _b = two_results
    assert [n for _i, n, _v in svc.leaderboard.worst_images(a, k=3, key="siou")] == ["img2", "img0", "img1"]
    assert [n for _i, n, _v in svc.leaderboard.worst_images(a, k=3)] == ["img1", "img0", "img2"]


def test_rows_that_differ_in_protocol_are_named(svc, two_results):  # noqa: F811
    a, b = two_results
    (line,) = svc.leaderboard.protocol_differences(a, [a, b])
    assert line.startswith("tiny-erfnet · energy: input_size: 64x128 vs native")
    assert "skip_empty: True vs False" in line and "checkpoint" not in line


def test_another_models_weights_are_not_a_protocol_difference(svc, ws, two_results):  # noqa: F811
    """Two models evaluated the same way: their checkpoints differ by nature, not by protocol
    (the demo leaderboard listed every demo-eomt row as 'differs' for its own weights)."""
    from anomseg.protocol import card
    from db import catalog
    from db import results as dbresults

    a, _b = two_results
    base = dict(score_size="input", skip_empty=True, label_remap=None, metric_mode="exact",
                track="anomaly", dataset_sha256="d" * 64)  # fmt: skip

    def add(s):
        tiny = catalog.get_model(s, "tiny-erfnet")
        other = catalog.register_model(
            s, "other-weights", "erfnet", tiny.checkpoint_path, input_size=(64, 128)
        )
        same = card(input_size=(64, 128), checkpoint_sha256="e" * 64, **base)
        bigger = card(input_size=(128, 256), checkpoint_sha256="e" * 64, **base)
        metrics = {"auprc": 0.2, "fpr95": 0.5, "auroc": 0.7}
        ids = [
            dbresults.add_eval_result(
                s, other.id, "entropy", ws.eval_id, metrics, 3, params={"protocol": c}
            ).id
            for c in (same, bigger)
        ]
        mine_again = dbresults.add_eval_result(
            s, tiny.id, "msp", ws.eval_id, metrics, 3,
            params={"protocol": card(input_size=(64, 128), checkpoint_sha256="f" * 64, **base)},
        ).id  # fmt: skip
        return ids, mine_again

    (same_id, bigger_id), mine_again = ws.store.transact(add)
    lines = svc.leaderboard.protocol_differences(a, [same_id, bigger_id, mine_again])
    # the same protocol under other weights: no line; another input size: named, weights not
    assert [ln.split(":")[0] for ln in lines] == ["other-weights · entropy", "tiny-erfnet · msp"]
    assert "input_size: 64x128 vs 128x256" in lines[0] and "checkpoint" not in lines[0]
    # the same model under other weights still says so
    assert "checkpoint_sha256: cccccccccccc… vs ffffffffffff…" in lines[1]


def test_compare_component_view_matches_the_metric(svc, ws):  # noqa: F811
    from anomseg.components import image_components

    image_id = svc.catalog.image_names(ws.eval_id)[0][1]
    rgb, rows, md = svc.components.component_view("tiny-erfnet", image_id, "msp", quantile=0.9)
    view = svc.scores.load_view("tiny-erfnet", image_id)
    assert rgb.shape == view.rgb.shape and rgb.dtype == np.uint8
    _spec, amap = svc.scores.score_maps("tiny-erfnet", view, ["msp"])["msp"]
    thr = float(np.quantile(amap, 0.9))
    scale = amap.size / float(view.full_size[0] * view.full_size[1])
    comp = image_components(amap, view.gt_score, thr, 500 * scale, 100 * scale)
    assert len([r for r in rows if r["component"].startswith("GT")]) == len(comp.siou_gt)
    assert len([r for r in rows if r["component"].startswith("pred")]) == len(comp.pred_ids)
    found = sum(r["counts as"] == "found" for r in rows)
    assert found == int((comp.siou_gt >= 0.5).sum())
    assert f"{found} of {len(comp.siou_gt)} ground-truth components found" in md


def test_compare_component_view_of_recorded_external_maps(svc, ws, tmp_path):  # noqa: F811
    from pathlib import Path

    from anomseg.components import image_components
    from anomseg.scoremaps import FORMATS
    from db import catalog
    from db import results as dbresults

    # maps of an external method for every image of the eval set, recorded like eval --scores
    with ws.store.read() as s:
        ds = catalog.get_dataset(s, "mini-eval")
        root = Path(ds.root)
    rng = np.random.default_rng(0)
    for p in sorted((root / "images").glob("*.png")):
        lab = np.asarray(Image.open(root / "labels_masks" / p.name))
        FORMATS.get("npy").write(
            tmp_path / f"{p.stem}.npy",
            ((lab == 1) + 0.2 * rng.random(lab.shape)).astype(np.float32),
        )

    def add(s):
        m = catalog.register_model(s, "external", "external")
        dbresults.add_eval_result(
            s,
            m.id,
            "theirs",
            ws.eval_id,
            {"auprc": 0.9},
            3,
            params={"scores_dir": str(tmp_path), "external": True},
        )

    ws.store.transact(add)
    assert "external:theirs" in svc.components.external_methods()
    assert "external" not in svc.catalog.model_names()  # no model to run in Compare
    name, image_id = svc.catalog.image_names(ws.eval_id)[0]
    rgb, rows, _md = svc.components.component_view("tiny-erfnet", image_id, "external:theirs", quantile=0.9)
    amap = np.load(tmp_path / f"{Path(name).stem}.npy")
    lab = np.asarray(Image.open(root / "labels_masks" / name))
    comp = image_components(amap, lab, float(np.quantile(amap, 0.9)), 500, 100)
    assert sum(r["component"].startswith("GT") for r in rows) == len(comp.siou_gt)
    assert sum(r["component"].startswith("pred") for r in rows) == len(comp.pred_ids)


def test_evaluate_job_stores_component_metrics_and_the_protocol_card(svc, ws):  # noqa: F811
    from test_dashboard_services import _drain_queue, _run_one_job

    from anomseg.protocol import FIELDS
    from db.jobs import enqueue_job
    from db.models import EvalResult

    _drain_queue(ws)
    job = ws.store.transact(
        lambda s: enqueue_job(s, "evaluate", {"model": "tiny-erfnet", "methods": ["msp"]}).id
    )
    assert _run_one_job(ws) == job
    df = svc.leaderboard.leaderboard_frame(datasets=["mini-eval"])
    rid = int(df[(df["model"] == "tiny-erfnet") & (df["method id"] == "msp")]["result"].max())
    with ws.store.read() as s:
        res = s.get(EvalResult, rid)
        metrics, params, per = res.metrics, res.params, res.per_image
    for key in ("siou", "ppv", "f1_mean", "f1_50", "n_gt", "n_pred", "component_threshold"):
        assert key in metrics
    assert set(params["protocol"]) == set(FIELDS)
    assert params["protocol"]["input_size"] == "64x128" and params["protocol"]["source"] == "model"
    assert all("siou" in p for p in per)


def test_trainer_head_evaluation_reports_component_metrics(ws):  # noqa: F811
    from anomseg.components import ComponentMetrics
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.metrics import AnomalyMetrics
    from anomseg.models.heads import head_scorer, load_head
    from db import catalog
    from training.versions import evaluate_version

    head, _meta = load_head(ws.heads_dir / "v1.safetensors")
    with ws.store.read() as s:
        d = catalog.get_dataset(s, "mini-eval")
        row = {"id": d.id, "name": d.name, "root": d.root, "remap": None}
    ds = BenchmarkDataset(row["root"])
    predictor = ws.predictor("tiny-erfnet")
    frozen = types.SimpleNamespace(get_predictor=lambda: predictor, checkpoint_sha256="")
    out = evaluate_version(head, frozen, row, "head:1")[0]["metrics"]
    # the same numbers from the metric objects directly
    score, pix, pairs = head_scorer(head), AnomalyMetrics(), []
    for _n, pred, label in predictor.predict_dataset(ds):
        s = score(pred)
        pix.update(s, label)
        pairs.append((s, label))
    comp = ComponentMetrics(pix.best_f1_threshold())
    for s, label in pairs:
        comp.update(s, label)
    ref = comp.compute()
    np.testing.assert_equal({k: out[k] for k in ref}, ref)  # NaN where no component
    assert out["auprc"] == pix.compute()["auprc"] and out["n_gt"] > 0
