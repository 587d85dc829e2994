"""One evaluate-and-record path: a head version's results are computed by ``anomseg.evaluate``
and stored by ``db.results.record_eval_rows`` with their per-image values and protocol card.

The world is test_loop's colour model (its uncertainty known by construction); the reference
figures are recomputed here from the head's maps with scikit-learn.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image as PILImage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sqlalchemy import select
from test_loop import ColourNet, build_world, head_map

from anomseg.errors import InputError

N_EVAL = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from training.trainer import TrainConfig, train_head
    from workbench.models import frozen_model

    root = tmp_path_factory.mktemp("record")
    store, _train, ids = build_world(root, n_train=8, n_eval=N_EVAL)
    cfg = TrainConfig(head="stats", epochs=1, batch_pixels=512, steps_per_epoch=20, threads=1)
    out = train_head(
        store, root, frozen_model(store, "colour"), cfg, activate="auprc_and_fpr95_improve"
    )
    yield root, store, ids, out
    store.close()


def _bench(root):
    from anomseg.data.benchmark import BenchmarkDataset

    return BenchmarkDataset(root / "bench", name="bench")


def test_trainer_stores_what_evaluate_computes_and_sklearn_agrees(trained):
    from anomseg.evaluate import evaluate
    from anomseg.models.heads import head_spec, load_head
    from anomseg.predict import Predictor
    from anomseg.protocol import FIELDS
    from db.models import EvalResult

    root, store, _ids, out = trained
    with store.read() as s:
        (res,) = s.scalars(select(EvalResult).where(EvalResult.method == "head:1")).all()
        stored, per, params, n = res.metrics, res.per_image, res.params, res.n_images

    # the library's evaluation of the same head file, outside the trainer
    head, _meta = load_head(out["checkpoint"])
    (row,) = evaluate(
        Predictor(ColourNet(), device="cpu"), [_bench(root)], ["head:1"], progress=False,
        extra={"head:1": head_spec("head:1", head)},
    )  # fmt: skip
    assert (stored["auprc"], stored["fpr95"], stored["auroc"]) == (row.auprc, row.fpr95, row.auroc)
    assert n == row.n_images == N_EVAL
    # the summary the activation rule judges holds the same numbers
    assert out["metrics"]["eval_mean_auprc"] == stored["auprc"]
    assert out["metrics"]["eval_mean_fpr95"] == stored["fpr95"]
    assert out["active"]  # first version, the rule has nothing to beat

    # scikit-learn on the head's maps, computed from the image files
    maps, labels = [], []
    for i in range(N_EVAL):
        rgb = np.asarray(PILImage.open(root / "bench/images" / f"e{i}.png"))
        maps.append(head_map(out["checkpoint"], rgb))
        labels.append(np.asarray(PILImage.open(root / "bench/labels_masks" / f"e{i}.png")) == 1)
    y, sc = np.concatenate([g.ravel() for g in labels]), np.concatenate([m.ravel() for m in maps])
    fpr, tpr, _ = roc_curve(y, sc, drop_intermediate=False)
    assert stored["auprc"] == pytest.approx(average_precision_score(y, sc), abs=1e-7)
    assert stored["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-7)
    assert stored["auroc"] == pytest.approx(roc_auc_score(y, sc), abs=1e-7)

    # per-image values (the drill-down's worst images), one per image, each its own AP
    assert [p["name"] for p in per] == [f"e{i}" for i in range(N_EVAL)]
    for p, m, g in zip(per, maps, labels, strict=True):
        assert p["auprc"] == pytest.approx(average_precision_score(g.ravel(), m.ravel()), abs=1e-7)
        assert p["n_anomaly"] == int(g.sum()) and "siou" in p
    # the protocol card and the version's identity beside them
    assert set(params["protocol"]) == set(FIELDS)
    assert params["protocol"]["input_size"] == "32x64" and params["protocol"]["skip_empty"]
    assert (params["kind"], params["head_id"]) == ("stats", out["head_id"])
    assert out["metrics"]["eval"]["bench"]["protocol"] == params["protocol"]


def test_head_evaluation_cancels_and_reports_unreadable_sets(trained):
    from anomseg.models.heads import load_head
    from anomseg.predict import Predictor
    from training.fit import Cancelled
    from training.versions import evaluate_version

    root, _store, ids, out = trained
    head, _meta = load_head(out["checkpoint"])
    frozen = types.SimpleNamespace(
        get_predictor=lambda: Predictor(ColourNet(), device="cpu"), checkpoint_sha256=None
    )
    ds = {"id": ids["bench"], "name": "bench", "root": str(root / "bench"), "remap": None}
    seen = []

    def stop(_name, done, _n):
        seen.append(done)
        if done == 2:
            raise Cancelled("training cancelled")

    # a cancel mid-evaluation ends the run; it is not mistaken for an unreadable dataset
    with pytest.raises(Cancelled):
        evaluate_version(head, frozen, ds, "head:1", stop)
    assert seen == [1, 2]
    entry, row = evaluate_version(head, frozen, {**ds, "root": str(root / "nowhere")}, "head:1")
    assert row is None and entry["metrics"] == {} and "nowhere" in entry["error"]


def _row(dataset, method, n, per=(), protocol=None):
    from anomseg.evaluate import EvalRow

    return EvalRow(
        dataset=dataset, method=method, auprc=0.25, fpr95=0.5, auroc=0.75, n_images=n,
        seconds=1.5, per_image=list(per), protocol=protocol or {}, components={"siou": 0.1},
    )  # fmt: skip


def test_record_eval_rows_stores_figures_per_image_and_card(trained):
    from db.models import EvalResult
    from db.results import record_eval_rows

    _root, store, ids, _out = trained
    per = [{"name": "e0", "auprc": 0.2}, {"name": "e1", "auprc": 0.3}]
    rows = [
        _row("bench", "msp", 2, per, {"metric_mode": "exact"}),
        _row("bench", "energy", 0),  # no image used: nothing to store
        _row("bench", "maxlogit", 2),
    ]
    stored = store.transact(
        lambda s: [
            (r.id, r.method, r.metrics, r.per_image, r.params, r.n_images, r.seconds)
            for r in record_eval_rows(
                s, ids["model"], rows, {"bench": ids["bench"]}, params={"recipe": "t"}
            )
        ]
    )
    assert [m for _i, m, *_ in stored] == ["msp", "maxlogit"]
    _id, _m, metrics, got_per, params, n, secs = stored[0]
    assert metrics == {"auprc": 0.25, "fpr95": 0.5, "auroc": 0.75, "siou": 0.1}
    assert got_per == per and (n, secs) == (2, 1.5)
    assert params == {"recipe": "t", "protocol": {"metric_mode": "exact"}}
    assert stored[1][3] is None and stored[1][4] == {"recipe": "t"}  # no per-image, no card

    # a row whose dataset has no id is refused by name, before any row of the call is stored
    with store.read() as s:
        before = len(s.scalars(select(EvalResult)).all())
    with pytest.raises(InputError, match="'other'.*expected one of: 'bench'"):
        store.transact(
            lambda s: record_eval_rows(
                s, ids["model"], [_row("bench", "rba", 1), _row("other", "rba", 1)],
                {"bench": ids["bench"]},
            )  # fmt: skip
        )
    with store.read() as s:
        assert len(s.scalars(select(EvalResult)).all()) == before


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_eval_records_its_rows_under_a_registered_model(trained, tmp_path, capsys):
    import hashlib
    import json

    from anomseg.models import save_checkpoint
    from db import catalog
    from db.models import EvalResult
    from workbench.cli import main

    root, store, ids, _out = trained
    ckpt = save_checkpoint(ColourNet(), root / "colour.safetensors")
    tuned = ColourNet()
    tuned.anchor_logits.mul_(2)
    other = save_checkpoint(tuned, root / "other.safetensors")
    store.transact(
        lambda s: catalog.register_model(s, "colour-ck", "test_colour_net", ckpt, input_size=(32, 64))
    )
    base = ["eval", "--model", "test_colour_net", "--dataset", str(root / "bench"),
            "--methods", "msp,entropy", "--workspace", str(root), "--no-progress",
            "--workers", "0"]  # fmt: skip

    def count() -> int:
        with store.read() as s:
            return len(s.scalars(select(EvalResult)).all())

    before = count()
    # refused before any forward, each by name: unknown model, other weights, no weights
    for extra, said in (
        (["--checkpoint", str(ckpt), "--record", "nobody"], "'nobody' is not registered"),
        (["--checkpoint", str(other), "--record", "colour-ck"], "other weights"),
        (["--record", "colour-ck"], "needs --checkpoint"),
        (["--checkpoint", str(ckpt), "--record", "colour-ck", "--methods", "msp,head:1"],
         "stores post-hoc methods; got head:1"),  # fmt: skip
    ):
        assert main([*base, *extra]) == 2
        assert said in capsys.readouterr().err
    assert count() == before

    out = tmp_path / "rows.json"
    args = [*base, "--checkpoint", str(ckpt), "--out", str(out), "--record", "colour-ck"]
    assert main(args) == 0
    assert "recorded 2 result(s) as colour-ck" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    with store.read() as s:
        mid = catalog.get_model(s, "colour-ck").id
        got = {
            r.method: (r.dataset_id, r.metrics, r.per_image, r.params, r.n_images)
            for r in s.scalars(select(EvalResult).where(EvalResult.model_id == mid))
        }
    assert set(got) == {"msp", "entropy"}
    # the store holds what the command printed and wrote, per image included
    for row in doc["rows"]:
        ds_id, metrics, per, params, n = got[row["method"]]
        assert ds_id == ids["bench"]  # found by its root, not registered twice
        assert (metrics["auprc"], metrics["fpr95"], n) == (row["auprc"], row["fpr95"], N_EVAL)
        assert per == row["per_image"] and len(per) == N_EVAL
        assert params["protocol"] == row["protocol"]
    # the card names the weights and the files, recomputed here from the files
    card = got["msp"][3]["protocol"]
    assert card["checkpoint_sha256"] == _sha(ckpt)
    h = hashlib.sha256()
    for i in range(N_EVAL):
        h.update(f"e{i}".encode())
        h.update(bytes.fromhex(_sha(root / "bench/images" / f"e{i}.png")))
        h.update(bytes.fromhex(_sha(root / "bench/labels_masks" / f"e{i}.png")))
    assert card["dataset_sha256"] == h.hexdigest()
    assert (card["input_size"], card["metric_mode"], card["skip_empty"]) == ("32x64", "exact", True)


def test_eval_dataset_for_finds_by_root_registers_relative_paths_and_refuses_other_roles(
    trained, tmp_path, monkeypatch
):
    import shutil

    from anomseg.data.benchmark import BenchmarkDataset
    from db import catalog
    from db.results import eval_dataset_for

    root, store, ids, _out = trained
    for sub in ("images", "labels_masks"):
        (tmp_path / "b2" / sub).mkdir(parents=True)
        shutil.copy(root / "bench" / sub / "e0.png", tmp_path / "b2" / sub / "e0.png")
    monkeypatch.chdir(tmp_path)  # the benchmark given as a relative path, as on a command line
    bench = BenchmarkDataset("b2")
    first = store.transact(
        lambda s: (eval_dataset_for(s, bench).id, len(catalog.list_images(s, "b2")))
    )
    again = store.transact(lambda s: eval_dataset_for(s, BenchmarkDataset(tmp_path / "b2")).id)
    assert first == (again, 1)  # registered once, with its image, then found by its root
    assert store.transact(lambda s: eval_dataset_for(s, _bench(root)).id) == ids["bench"]
    syn = BenchmarkDataset(root / "bench")
    syn.root = root / "synthetic"  # the store's synthetic dataset lives there
    with pytest.raises(InputError, match="role 'synthetic'; results are recorded on eval"):
        store.transact(lambda s: eval_dataset_for(s, syn))
