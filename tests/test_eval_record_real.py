"""The post-training evaluation on real data: a head version's stored RoadAnomaly21 row (the
shared ERFNet) equals ``anomseg eval head:FILE`` on the same head and scikit-learn on its maps,
and carries per-image values and the protocol card.

The head is a seeded, untrained stats head: what is checked is that every path computes the same
numbers from the same maps, not how good the head is. 128x256 keeps it short on a CPU.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_curve
from sqlalchemy import select

pytestmark = pytest.mark.realdata

SIZE = (128, 256)


def test_head_version_row_on_road_anomaly21_equals_eval_and_sklearn(
    erfnet_checkpoint, road_anomaly21, tmp_path, capsys
):
    from anomseg.imageio import read_image
    from anomseg.models import create_model
    from anomseg.models.heads import create_head, head_scorer, save_head
    from anomseg.predict import Predictor
    from db import Store, catalog
    from db import heads as dbheads
    from db.models import EvalResult
    from training.versions import eval_datasets, evaluate_and_record
    from workbench.cli import main

    store = Store.open(workspace=tmp_path)
    torch.manual_seed(0)
    head = create_head("stats")
    head_file = tmp_path / "v1-stats.safetensors"

    def setup(s):
        m = catalog.register_model(s, "erfnet", "erfnet", erfnet_checkpoint, input_size=SIZE)
        catalog.register_dataset(s, "RoadAnomaly21", "eval", road_anomaly21)
        digest = save_head(head, head_file, model="erfnet", model_sha256=m.checkpoint_sha256,
                           version=1)  # fmt: skip
        hv = dbheads.create_head_version(s, m.id, "stats", hparams={})
        dbheads.finish_head_version(
            s, hv.id, checkpoint_path=str(head_file), checkpoint_sha256=digest
        )
        return m.id, hv.id, m.checkpoint_sha256, eval_datasets(s)

    model_id, head_id, sha, sets = store.transact(setup)
    predictor = Predictor(
        create_model("erfnet", checkpoint=erfnet_checkpoint), device="cpu", input_size=SIZE
    )
    frozen = types.SimpleNamespace(
        name="erfnet", checkpoint_sha256=sha, get_predictor=lambda: predictor
    )
    out = evaluate_and_record(
        store, head, frozen, sets, model_id=model_id, head_id=head_id, version=1, kind="stats",
        train_metrics={}, rule="always", rule_fn=lambda new, old: True,
        report=lambda f, m: None, should_stop=None, snapshot_counts={},
    )  # fmt: skip
    with store.read() as s:
        (res,) = s.scalars(select(EvalResult).where(EvalResult.method == "head:1")).all()
        stored, per, params = res.metrics, res.per_image, res.params
    store.close()
    assert out["metrics"]["eval_mean_auprc"] == stored["auprc"] and out["active"]

    # `anomseg eval head:FILE`: the same numbers
    rows_file = tmp_path / "rows.json"
    rc = main(
        ["eval", "--model", "erfnet", "--checkpoint", str(erfnet_checkpoint), "--dataset",
         str(road_anomaly21), "--methods", f"head:{head_file}", "--input-size", "128x256",
         "--out", str(rows_file), "--no-progress", "--workers", "0"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    (row,) = json.loads(rows_file.read_text())["rows"]
    assert stored["auprc"] == pytest.approx(row["auprc"], abs=1e-9)
    assert stored["fpr95"] == pytest.approx(row["fpr95"], abs=1e-9)
    assert [p["name"] for p in per] == [p["name"] for p in row["per_image"]]
    assert params["protocol"]["input_size"] == "128x256"
    assert params["protocol"]["checkpoint_sha256"] == sha

    # scikit-learn on the head's maps, labels resized nearest (Pillow), 255 left out
    score = head_scorer(head)
    scores, labels, per_ap = [], [], []
    for img in sorted((road_anomaly21 / "images").glob("*.png")):
        amap = score(predictor.predict(read_image(img)))
        lab = Image.open(road_anomaly21 / "labels_masks" / img.name)
        lab = np.asarray(lab.resize((SIZE[1], SIZE[0]), Image.Resampling.NEAREST))
        keep = lab != 255
        scores.append(amap[keep])
        labels.append(lab[keep] == 1)
        per_ap.append(average_precision_score(labels[-1], scores[-1]))
    y, sc = np.concatenate(labels), np.concatenate(scores)
    fpr, tpr, _ = roc_curve(y, sc, drop_intermediate=False)
    assert stored["auprc"] == pytest.approx(average_precision_score(y, sc), abs=1e-6)
    assert stored["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-6)
    assert len(per) == 10
    np.testing.assert_allclose([p["auprc"] for p in per], per_ap, atol=1e-6)
    print(f"RoadAnomaly21 head:1 (seeded stats head, 128x256): AuPRC {100 * stored['auprc']:.2f} "
          f"FPR95 {100 * stored['fpr95']:.2f}")  # fmt: skip
