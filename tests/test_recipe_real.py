"""``anomseg recipe real`` end to end on a tiny budget (4 samples, 1 epoch, 64x128 input): the
pipeline, not the numbers. Its head files must score through ``anomseg eval --methods
head:FILE`` to exactly the recipe's own rows, and a re-run must skip every finished step."""

from __future__ import annotations

import json

import pytest

from workbench.cli import main

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

TINY = ["--samples", "4", "--epochs", "1", "--oe-epochs", "1", "--input-size", "64x128"]


def test_recipe_real_end_to_end_resumes_and_its_heads_score_in_eval(
    shared, erfnet_checkpoint, road_anomaly21, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(["recipe", "real", "--shared", str(shared), "--out", str(out), *TINY]) == 0
    first = capsys.readouterr()
    doc = json.loads((out / "results.json").read_text())
    learned = ("stats", "features", "oe", "oe-entropy", "oe-maxlogit")  # oe reads energy
    methods = {"msp", "maxlogit", "entropy", "energy", *(f"head:{k}" for k in learned)}
    for ds in ("RoadAnomaly21", "fs_static"):
        rows = {r["method"]: r for r in doc["rows"] if r["dataset"] == ds}
        assert set(rows) == methods
        for r in rows.values():
            assert r["model"] == "erfnet" and 0 < r["auprc"] <= 1 and 0 <= r["fpr95"] <= 1
            assert r["n_images"] == (10 if ds == "RoadAnomaly21" else 20)
    assert doc["trained_on"]["total"] == 4
    assert "[skip]" not in first.out

    # every learned kind's file scores in `anomseg eval` exactly as the recipe scored it
    ra = {r["method"]: r for r in doc["rows"] if r["dataset"] == "RoadAnomaly21"}
    for kind in learned:
        path = out / "heads" / f"{kind}.safetensors"
        rows_file = tmp_path / f"{kind}.json"
        rc = main(
            ["eval", "--model", "erfnet", "--checkpoint", str(erfnet_checkpoint), "--dataset",
             str(road_anomaly21), "--methods", f"head:{path}", "--input-size", "64x128",
             "--out", str(rows_file), "--no-progress", "--workers", "0"]
        )  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        (row,) = json.loads(rows_file.read_text())["rows"]
        assert row["auprc"] == pytest.approx(ra[f"head:{kind}"]["auprc"], abs=1e-9), kind
        assert row["fpr95"] == pytest.approx(ra[f"head:{kind}"]["fpr95"], abs=1e-9), kind

    # resumable: a re-run skips every finished step and trains nothing new
    capsys.readouterr()
    assert main(["recipe", "real", "--shared", str(shared), "--out", str(out), *TINY]) == 0
    again = capsys.readouterr().out
    steps = ("workspace", "eval-images", "samples", "train:stats", "train:features", "train:oe",
             "evaluate")  # fmt: skip
    for step in steps:
        assert f"[skip] {step}" in again
    assert json.loads((out / "results.json").read_text())["rows"] == doc["rows"]
    from sqlalchemy import select

    from db import heads as dbheads
    from db.models import Dataset, EvalResult
    from db.store import Store

    store = Store.open(workspace=out / "workspace")
    with store.read() as s:
        kinds = sorted(h.kind for h in dbheads.list_head_versions(s, 1))
        stored = s.execute(
            select(EvalResult.method, EvalResult.per_image_json, EvalResult.params_json)
            .join(Dataset).where(Dataset.name == "RoadAnomaly21")
        ).all()  # fmt: skip
    store.close()
    assert kinds == ["features", "oe", "stats"]
    # the store's rows carry per-image values (the drill-down) and the protocol card
    assert {m for m, _p, _c in stored} == {"msp", "maxlogit", "entropy", "energy", "head:1",
                                           "head:2", "head:3"}  # fmt: skip
    for _m, per, params in stored:
        assert len(json.loads(per)) == 10
        assert json.loads(params)["protocol"]["input_size"] == "64x128"

    # another budget in the same folder is refused, nothing changes
    rc = main(["recipe", "real", "--shared", str(shared), "--out", str(out),
               *TINY[:-2], "--input-size", "128x256"])  # fmt: skip
    assert rc == 2 and "another budget" in capsys.readouterr().err

    # the store-facing path the Retrain tab and `anomseg train --head oe` take: train_head hands
    # kind "oe" to outlier exposure, a fourth version (from the cached encoder outputs)
    from training.trainer import TrainConfig, train_head
    from workbench.models import frozen_model

    store = Store.open(workspace=out / "workspace")
    try:
        cfg = TrainConfig(head="oe", epochs=1)
        frozen = frozen_model(store, "erfnet", "cpu")
        res = train_head(store, out / "workspace", frozen, cfg, device="cpu", evaluate=False)
        with store.read() as s:
            hv = dbheads.get_head(s, res["head_id"])
            assert (hv.kind, hv.version, hv.status) == ("oe", 4, "ready")
            assert hv.hparams["lr"] == pytest.approx(cfg.lr / 10)
    finally:
        store.close()
    from anomseg.models.heads import load_head

    head, meta = load_head(res["checkpoint"])
    assert head.kind == "oe" and meta["model_sha256"] == doc_sha(out)


def doc_sha(out) -> str:
    from anomseg.hashing import file_sha256

    return file_sha256(json.loads((out / "results.json").read_text())["checkpoint"])
