"""RbA is the original definition (Nayal et al. 2023): ``-sum_k tanh(s_k)`` over the per-pixel class
scores ``s = sum_q sigmoid(mask_q) * softmax(class_q)[:-1]``, end to end through ``anomseg eval``.

The reference is computed here independently: the network's raw forward (mask and class logits
per window), numpy float64 for the masks x softmax products, the tanh sum and the averaging of
overlapping windows, scikit-learn for the metrics. Stored results of the old definition (RbA on
raw class logits) never reach a leaderboard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, roc_curve

from anomseg import scoring
from anomseg.models import create_model, save_checkpoint
from anomseg.predict import Predictor
from workbench.cli import main

DEMO = Path(__file__).resolve().parents[1] / "anomseg" / "assets" / "demo_models"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_rba(model, image: np.ndarray) -> np.ndarray:
    """Original RbA of one uint8 image whose height is the model's window height (no resize)."""
    wh, ww = model.img_size
    h, w = image.shape[:2]
    assert h == wh and w >= ww
    n = int(np.ceil(w / ww))
    starts = [0] if n == 1 else [int(j * (ww - (n * ww - w) / (n - 1))) for j in range(n)]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    total = np.zeros((model.num_classes, h, w))
    count = np.zeros((1, h, w))
    for s in starts:
        with torch.no_grad():
            mask_logits, class_logits, _ = model(x[..., s : s + ww])
            m = F.interpolate(mask_logits, (wh, ww), mode="bilinear")[0].double().numpy()
        c = class_logits[0].double().numpy()
        p = _softmax(c)[:, :-1]  # softmax over every class and "no object", then drop the latter
        total[:, :, s : s + ww] += np.einsum("qhw,qk->khw", 1 / (1 + np.exp(-m)), p)
        count[:, :, s : s + ww] += 1
    scores = total / count
    return -np.tanh(scores).sum(0)


def _bench(root: Path, h: int, w: int, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    images = []
    for i in range(n):
        im = (rng.random((h, w, 3)) * 120 + 60).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - h // 3), rng.integers(0, w - w // 4)
        lab[y : y + h // 3, x : x + w // 4] = 1
        im[y : y + h // 3, x : x + w // 4] = rng.integers(200, 256, (h // 3, w // 4, 3))
        Image.fromarray(im).save(root / "images" / f"{i}.png")
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
        images.append((im, lab))
    return images


def _random_eomt(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(4)
    opts = {"img_size": [32, 64], "input_size": [32, 64], "num_q": 8}
    model = create_model("eomt_tiny", **{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in opts.items()})  # fmt: skip
    with torch.no_grad():  # LayerScale 1e-5 and small heads would make every score alike
        for blk in model.encoder.backbone.blocks:
            blk.ls1.gamma.fill_(1.0)
            blk.ls2.gamma.fill_(1.0)
        model.class_head.weight.mul_(40)
        model.mask_head[4].weight.mul_(10)
    path = save_checkpoint(
        model, tmp_path / "random-eomt.safetensors", {"architecture": "eomt_tiny", "options": opts}
    )
    return model.eval(), path


@pytest.mark.parametrize("which", ["demo", "random"])
def test_rba_map_and_eval_equal_the_original_definition(which, tmp_path, capsys):
    if which == "demo":
        ckpt = DEMO / "demo-eomt.safetensors"
        model = create_model("eomt_tiny", checkpoint=ckpt)
        h, w = model.img_size  # one window
    else:
        model, ckpt = _random_eomt(tmp_path)
        h, w = 32, 100  # two overlapping windows, starts 0 and 36
    items = _bench(tmp_path / "bench", h, w)
    predictor = Predictor(model, device="cpu", input_size="native")
    maps, labels = [], []
    for im, lab in items:
        want = reference_rba(model, im)
        got = scoring.score("rba", predictor.predict(im))
        np.testing.assert_allclose(got, want, atol=1e-5)
        maps.append(want.astype(np.float32).ravel())
        labels.append(lab.ravel())
    out = tmp_path / "r.json"
    rc = main(
        ["eval", "--model", "eomt_tiny", "--checkpoint", str(ckpt), "--dataset",
         str(tmp_path / "bench"), "--methods", "rba", "--input-size", "native", "--out", str(out),
         "--no-progress", "--workers", "0", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    row = json.loads(out.read_text())["rows"][0]
    y, s = np.concatenate(labels) == 1, np.concatenate(maps)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert abs(row["auprc"] - average_precision_score(y, s)) < 1e-5
    assert abs(row["fpr95"] - fpr[np.argmax(tpr >= 0.95)]) < 1e-5


def test_random_eomt_old_and_original_rba_differ():
    """Guard that the reference above can fail: raw-logit RbA is another map altogether."""
    torch.manual_seed(4)
    model = create_model("eomt_tiny", img_size=(32, 64), num_q=8)
    with torch.no_grad():
        model.class_head.weight.mul_(40)
    im = (np.random.default_rng(0).random((32, 64, 3)) * 255).astype(np.uint8)
    pred = Predictor(model, device="cpu", input_size="native").predict(im)
    old = -np.tanh(pred.pixel_class_logits.double().numpy()).sum(0)
    new = scoring.score("rba", pred)
    np.testing.assert_allclose(new, reference_rba(model, im), atol=1e-5)
    assert np.abs(new - old).max() > 0.1


def test_leaderboard_hides_rba_results_of_the_old_definition(tmp_path):
    from db import Store, catalog, results
    from db.models import EvalResult

    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"weights")
    (tmp_path / "ev").mkdir()
    store = Store.open(workspace=tmp_path / "ws")
    try:
        with store.session() as s:
            m = catalog.register_model(s, "eo", "eomt_tiny", ckpt, input_size=(32, 64))
            ds = catalog.register_dataset(s, "ev", "eval", tmp_path / "ev")
            # rows written before RbA's fix: no revision stamp (what every old store holds)
            for method, auprc in (("rba", 0.014), ("msp", 0.187)):
                row = EvalResult(model_id=m.id, method=method, dataset_id=ds.id, n_images=3)
                row.metrics = {"auprc": auprc}
                s.add(row)
            s.flush()
            mid, dsid = m.id, ds.id
        with store.read() as s:
            board = {r["method"]: r["auprc"] for r in results.leaderboard(s)}
            assert board == {"msp": 0.187}  # the old RbA is not shown, the others are
            assert results.result_history(s, mid, "rba", dsid) == []
        with store.session() as s:
            new = results.add_eval_result(s, mid, "rba", dsid, {"auprc": 0.039}, 3)
            assert (
                new.params
                == {"scorer_revision": scoring.get_scorer("rba").revision}
                == {"scorer_revision": 2}
            )
            plain = results.add_eval_result(s, mid, "msp", dsid, {"auprc": 0.2}, 3)
            assert plain.params is None  # unchanged definitions carry no stamp
        with store.read() as s:
            board = {r["method"]: r["auprc"] for r in results.leaderboard(s)}
            assert board == {"msp": 0.2, "rba": 0.039}
            assert [r.metrics["auprc"] for r in results.result_history(s, mid, "rba", dsid)] == [
                0.039
            ]
    finally:
        store.close()
