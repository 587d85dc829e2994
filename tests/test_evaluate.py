"""evaluate() and ``anomseg eval`` on a generated benchmark with a tiny model (no ../shared needed).

Reference values are computed here independently: torchvision preprocessing, plain torch scores,
scikit-learn metrics.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn
from torchvision.transforms import Compose, InterpolationMode, Resize, ToTensor

from anomseg.data import BenchmarkDataset
from anomseg.errors import InputError
from anomseg.evaluate import evaluate
from anomseg.models.registry import MODELS, ModelEntry
from anomseg.predict import Predictor
from workbench.cli import main

SIZE = (24, 40)
RNG = np.random.default_rng(5)


class TinySeg(nn.Module):
    arch = "tiny-eval"
    num_classes = 4
    default_input_size = SIZE

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))
        self.calls = 0

    def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"logits": self.conv(x)}


@pytest.fixture(autouse=True)
def tiny_model_registered(monkeypatch):
    """``--model tiny-eval`` for the CLI, only for the duration of each test."""
    from anomseg.models.registry import _load_builtins

    _load_builtins()  # so that the built-ins do not register later, after our entry is gone
    monkeypatch.setitem(MODELS._entries, "tiny-eval", ModelEntry("tiny-eval", TinySeg))


@pytest.fixture()
def bench(tmp_path):
    root = tmp_path / "gen"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(4):
        im = RNG.integers(0, 256, (36, 60, 3), dtype=np.uint8)
        lab = np.zeros((36, 60), np.uint8)
        if i != 2:  # image 2 has no anomaly pixel
            y, x = RNG.integers(0, 24), RNG.integers(0, 40)
            lab[y : y + 10, x : x + 16] = 1
            # a bright object; noisy so that scores hold no exact ties (float rounding in a
            # different conv path must not reorder tied pixels)
            im[y : y + 10, x : x + 16] = RNG.integers(180, 256, (10, 16, 3))
        lab[:3] = 255
        Image.fromarray(im).save(root / "images" / f"{i}.png")
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
    return root


def reference(root, keep_normal_images: bool = False) -> dict[str, dict[str, float]]:
    """Independent: torchvision preprocessing, torch scores, sklearn metrics."""
    model = TinySeg()
    tf = Compose([Resize(SIZE, InterpolationMode.BILINEAR), ToTensor()])
    tl = Resize(SIZE, InterpolationMode.NEAREST)
    maps: dict[str, list] = {"msp": [], "maxlogit": [], "msp:T=2.0": []}
    labels = []
    for i in range(4):
        lab = np.array(tl(Image.open(root / "labels_masks" / f"{i}.png")))
        if not keep_normal_images and not (lab == 1).any():
            continue
        with torch.no_grad():
            # float32 like the product's maps: MSP near 0 saturates, and ties change AuPRC
            z = model.conv(tf(Image.open(root / "images" / f"{i}.png")).unsqueeze(0))[0].float()
        maps["msp"].append(1 - torch.softmax(z, 0).max(0).values.numpy().ravel())
        maps["msp:T=2.0"].append(1 - torch.softmax(z / 2, 0).max(0).values.numpy().ravel())
        maps["maxlogit"].append(-z.max(0).values.numpy().ravel())
        labels.append(lab.ravel())
    y = np.concatenate(labels)
    v = y != 255
    out = {}
    for m, parts in maps.items():
        s = np.concatenate(parts)[v]
        fpr, tpr, _ = roc_curve(y[v] == 1, s, drop_intermediate=False)
        out[m] = {
            "auprc": average_precision_score(y[v] == 1, s),
            "fpr95": fpr[np.argmax(tpr >= 0.95)],
            "auroc": roc_auc_score(y[v] == 1, s),
        }
    return out


@pytest.mark.parametrize("keep", [False, True])
def test_evaluate_equals_sklearn_with_one_forward_per_image(bench, keep):
    model = TinySeg()
    predictor = Predictor(model, device="cpu", input_size=SIZE)
    methods = ["msp", "maxlogit", "msp:T=2", "msp:T=1.0", "stat_max_prob"]
    rows = evaluate(
        predictor, [BenchmarkDataset(bench)], methods, progress=False, skip_without_anomaly=not keep
    )
    # one forward per image for all five methods; a skipped image (no anomaly) is not run
    assert model.calls == (4 if keep else 3)
    by = {r.method: r for r in rows}
    assert list(by) == ["msp", "maxlogit", "msp:T=2.0", "stat_max_prob"]  # canonical, deduplicated
    ref = reference(bench, keep_normal_images=keep)
    for m in ("msp", "maxlogit", "msp:T=2.0"):
        for k in ("auprc", "fpr95", "auroc"):
            # 1e-5: saturated float32 MSP (1 - max p near 0) holds near-ties, and a conv run in
            # another order (batch, thread count, torch build) may round a few of them apart;
            # 2.14's CPU conv moves AuPRC by 1.5e-6 here (the metric itself is exact: test_metrics)
            assert abs(getattr(by[m], k) - ref[m][k]) < 1e-5, (m, k)
        assert by[m].n_images == (4 if keep else 3) and by[m].n_skipped == (0 if keep else 1)
    # an inverted statistic (high = normal) is flipped: max prob ranks exactly like msp
    assert abs(by["stat_max_prob"].auprc - by["msp"].auprc) < 1e-6
    # rows carry per-image drill-down, in dataset order, NaN-free only where defined
    names = [p["name"] for p in by["msp"].per_image]
    assert names == (["0", "1", "2", "3"] if keep else ["0", "1", "3"])
    # the rows share the dataset's wall time (scoring overlaps the forward, so the parts,
    # forward + scoring, may add up to more than the wall time)
    assert sum(r.seconds for r in rows) == pytest.approx(rows[0].wall_seconds)
    assert all(r.wall_seconds == rows[0].wall_seconds > 0 for r in rows)


def test_evaluate_rejects_bad_methods_before_any_forward(bench):
    model = TinySeg()
    predictor = Predictor(model, device="cpu")
    ds = BenchmarkDataset(bench)
    with pytest.raises(InputError, match="unknown scoring method 'nope'"):
        evaluate(predictor, [ds], ["msp", "nope"], progress=False)
    with pytest.raises(InputError, match="out of range"):
        evaluate(predictor, [ds], ["msp:T=0"], progress=False)
    with pytest.raises(InputError, match="metric mode"):
        evaluate(predictor, [ds], ["msp"], metric_mode="fast", progress=False)
    assert model.calls == 0


def test_cli_eval_writes_json_and_csv_matching_sklearn(bench, tmp_path, capsys):
    ref = reference(bench)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    for out in (out_json, out_csv):
        rc = main(
            ["eval", "--model", "tiny-eval", "--dataset", str(bench), "--methods", "msp,maxlogit",
             "--input-size", "24x40", "--out", str(out), "--no-progress", "--workers", "0"]
        )  # fmt: skip
        assert rc == 0
    table = capsys.readouterr().out
    assert "AuPRC%" in table and f"{100 * ref['maxlogit']['auprc']:6.2f}" in table
    rows = {r["method"]: r for r in json.loads(out_json.read_text())["rows"]}
    with open(out_csv) as f:
        crow = {r["method"]: r for r in csv.DictReader(f)}
    for m in ("msp", "maxlogit"):
        assert abs(rows[m]["auprc"] - ref[m]["auprc"]) < 1e-6
        assert abs(float(crow[m]["fpr95"]) - ref[m]["fpr95"]) < 1e-6
        assert crow[m]["input_size"] == "24x40" and crow[m]["n_images"] == "3"
        # the JSON keeps the per-image drill-down (computed only when a JSON is written)
        per = rows[m]["per_image"]
        assert len(per) == 3 and all(0 < p["auprc"] <= 1 for p in per)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--input-size", "512by1024"], "--input-size '512by1024'"),
        (["--input-size", "0x10"], "expected HxW"),
        (["--methods", "msp,banana"], "unknown scoring method 'banana'"),
        (["--methods", "msp:Q=2"], "unknown parameter 'Q'"),
        (["--out", "results.txt"], "expected a file name ending in .json or .csv"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--remap", "2->1"], "--remap '2->1'"),
        (["--device", "banana"], "device 'banana'"),
    ],
)
def test_cli_bad_values_are_one_clear_error(bench, capsys, args, needle):
    rc = main(["eval", "--model", "tiny-eval", "--dataset", str(bench), "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err


def test_cli_missing_dataset_and_nothing_half_written(bench, tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    out = tmp_path / "r.json"
    rc = main(["eval", "--model", "tiny-eval", "--dataset", str(bench), "--dataset", str(missing),
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 2 and str(missing) in capsys.readouterr().err
    # a bad label discovered mid-run: error names the file, no output file appears
    Image.fromarray(np.full((36, 60), 7, np.uint8)).save(bench / "labels_masks" / "3.png")
    rc = main(["eval", "--model", "tiny-eval", "--dataset", str(bench), "--out", str(out),
               "--no-progress", "--workers", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and str(bench / "labels_masks" / "3.png") in err and "values 7" in err
    assert not out.exists() and list(tmp_path.glob(".r.json*")) == []


def test_evaluate_segmentation_miou_equals_numpy(tmp_path):
    from anomseg.data import SegmentationFolder
    from anomseg.evaluate import evaluate_segmentation

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    model = TinySeg()
    preds, gts = [], []
    for i in range(3):
        im = RNG.integers(0, 256, SIZE + (3,), dtype=np.uint8)
        gt = RNG.choice(np.array([0, 1, 2, 3, 255], np.uint8), size=SIZE)
        Image.fromarray(im).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(gt).save(tmp_path / "labels" / f"{i}.png")
        with torch.no_grad():
            z = model.conv(ToTensor()(Image.fromarray(im)).unsqueeze(0))[0]
        preds.append(z[:4].argmax(0).numpy().ravel())  # the 4 classes, not the extra channel
        gts.append(gt.ravel())
    p, g = np.concatenate(preds), np.concatenate(gts)
    ious = []
    for c in range(4):
        inter = np.sum((p == c) & (g == c))
        union = np.sum(((p == c) | (g == c)) & (g != 255))
        if union:
            ious.append(inter / union)
    res = evaluate_segmentation(
        Predictor(model, device="cpu"), SegmentationFolder(tmp_path), progress=False
    )
    assert res["n_images"] == 3
    assert res["miou"] == pytest.approx(np.mean(ious), abs=1e-9)


@pytest.fixture()
def head_store(tmp_path):
    """A workspace store with the tiny model registered and a stats head v1 trained for it."""
    from anomseg.models.checkpoints import save_checkpoint
    from anomseg.models.heads import create_head, save_head
    from db import catalog
    from db import heads as dbheads
    from db.store import Store

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(TinySeg(), ckpt, {"architecture": "tiny-eval"})
    sha = catalog.sha256_file(ckpt)
    torch.manual_seed(3)
    head = create_head("stats")
    head_path = tmp_path / "ws" / "heads" / "tiny-v1.safetensors"
    digest = save_head(head, head_path, model="tiny", model_sha256=sha, version=1)
    store = Store.open(workspace=tmp_path / "ws")
    with store.session() as s:
        m = catalog.register_model(s, "tiny", "tiny-eval", ckpt)
        hv = dbheads.create_head_version(s, m.id, "stats")
        dbheads.finish_head_version(
            s, hv.id, checkpoint_path=str(head_path), checkpoint_sha256=digest
        )
    store.close()
    return ckpt, head, head_path, tmp_path / "ws"


def _head_reference(root, head) -> dict[str, float]:
    """Independent: torchvision resize, numpy softmax statistics, the head's own MLP, sklearn."""
    model = TinySeg()
    tf = Compose([Resize(SIZE, InterpolationMode.BILINEAR), ToTensor()])
    tl = Resize(SIZE, InterpolationMode.NEAREST)
    scores, labels = [], []
    for i in range(4):
        lab = np.array(tl(Image.open(root / "labels_masks" / f"{i}.png")))
        if not (lab == 1).any():
            continue
        with torch.no_grad():
            z = model.conv(tf(Image.open(root / "images" / f"{i}.png")).unsqueeze(0))[0]
        z = z.double().numpy()
        p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
        ent = -(p * np.log(np.maximum(p, 1e-300))).sum(0)
        stats = np.stack([p.max(0), ent, p.sum(0), 1 - p.max(0)]).astype(np.float32)
        with torch.no_grad():
            s = torch.sigmoid(head.eval().mlp(torch.from_numpy(stats)[None]))[0, 0].numpy()
        scores.append(s.ravel())
        labels.append(lab.ravel())
    y, s = np.concatenate(labels), np.concatenate(scores)
    v = y != 255
    return {"auprc": average_precision_score(y[v] == 1, s[v])}


def test_cli_eval_scores_a_stored_head_by_version_and_by_file(
    bench, head_store, tmp_path, monkeypatch
):
    ckpt, head, head_path, ws = head_store
    ref = _head_reference(bench, head)
    for method, where in (
        ("head:1", ["--workspace", str(ws)]),
        ("head:1", []),  # found through $ANOMSEG_WORKSPACE, like every other command
        (f"head:{head_path}", []),
    ):
        monkeypatch.setenv("ANOMSEG_WORKSPACE", str(ws))
        out = tmp_path / "h.json"
        rc = main(
            ["eval", "--model", "tiny-eval", "--checkpoint", str(ckpt), "--dataset", str(bench),
             "--methods", f"msp,{method}", "--input-size", "24x40", "--out", str(out),
             "--no-progress", "--workers", "0", *where]
        )  # fmt: skip
        assert rc == 0
        rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
        assert abs(rows[method]["auprc"] - ref["auprc"]) < 1e-5
        assert rows[method]["auprc"] != rows["msp"]["auprc"]


def test_cli_eval_refuses_a_head_of_another_model_or_a_missing_version(
    bench, head_store, tmp_path, capsys
):
    from anomseg.models.checkpoints import save_checkpoint

    ckpt, _head, head_path, ws = head_store
    other = TinySeg()
    with torch.no_grad():
        other.conv.bias.add_(1.0)
    other_ckpt = tmp_path / "other.safetensors"
    save_checkpoint(other, other_ckpt, {"architecture": "tiny-eval"})
    base = ["eval", "--model", "tiny-eval", "--dataset", str(bench), "--no-progress"]
    cases = [
        (["--checkpoint", str(ckpt), "--methods", "head:7", "--workspace", str(ws)],
         "no ready head version 7"),
        (["--checkpoint", str(other_ckpt), "--methods", "head:1", "--workspace", str(ws)],
         "no registered model has a checkpoint"),
        (["--checkpoint", str(other_ckpt), "--methods", f"head:{head_path}"],
         "was trained for the checkpoint"),
        (["--methods", "head:1", "--workspace", str(ws)], "need --checkpoint"),
        (["--checkpoint", str(ckpt), "--methods", "head:latest", "--workspace", str(ws)],
         "expected head:N"),
    ]  # fmt: skip
    for args, needle in cases:
        rc = main([*base, *args])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (args, err)
