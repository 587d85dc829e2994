"""The product's loop on a small synthetic world: train v1, flag its false positives, retrain v2.

World (built here, in a temporary workspace + SQLite store):

* a frozen "colour model" (registered architecture ``test_colour_net``): each pixel's logits
  are a soft nearest-anchor blend of anchor logit vectors, so its uncertainty is known by
  construction: the 5 class colours give confident one-hot logits, the anomaly colour gives
  uniform logits (high entropy), the "confuser" colour (a normal object, e.g. a painted road
  marking) gives a two-class tie (medium entropy);
* a synthetic dataset of accepted samples (GT: pastes = anomaly), some of which contain
  confusers labelled normal; an eval benchmark (images/ + labels_masks/) with both.

Loop: train head v1 from the store (stats head); flag as false positive the normal pixels where
v1 fires (score > 0.5) on some training images; retrain v2 (via the job worker). Checks: v2's
mean score inside the flagged regions falls by at least half; its AuPRC on the eval set (read
back from the EvalResult rows and recomputed with sklearn) falls by no more than 2 points; the
retrain reused the feature cache (no backbone call); eval images never trained.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sklearn.metrics import average_precision_score
from torch import nn

H, W = 32, 64
CLASS_COLOURS = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180]], np.float32
)
ANOMALY_COLOUR = np.array([250, 200, 20], np.float32)
CONFUSER_COLOUR = np.array([200, 200, 255], np.float32)


class ColourNet(nn.Module):
    """Pixel model: logits = softmax-weighted blend of anchor logit vectors (nearest colour)."""

    def __init__(self, sigma: float = 18.0) -> None:
        super().__init__()
        anchors = np.concatenate([CLASS_COLOURS, [ANOMALY_COLOUR, CONFUSER_COLOUR]])
        logits = np.zeros((7, 5), np.float32)
        logits[np.arange(5), np.arange(5)] = 6.0
        logits[6, :4] = 4.0  # confuser: a 4-class tie; the anomaly row stays 0: uniform
        self.register_buffer("anchors", torch.from_numpy(anchors) / 255)
        self.register_buffer("anchor_logits", torch.from_numpy(logits))
        self.sigma = sigma / 255
        self.num_classes = 5
        self.default_input_size = (H, W)

    def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        d2 = ((x.unsqueeze(1) - self.anchors[None, :, :, None, None]) ** 2).sum(2)  # (B, 7, H, W)
        w = torch.softmax(-d2 / (2 * self.sigma**2), dim=1)
        return {"logits": torch.einsum("bjhw,jc->bchw", w, self.anchor_logits)}


def _register_arch() -> None:
    from anomseg.models.registry import MODELS, register_model

    if "test_colour_net" not in MODELS:
        register_model("test_colour_net", "colour-prototype test model")(lambda: ColourNet())


def make_scene(rng: np.random.Generator, n_anomalies: int, n_confusers: int):
    """RGB (H, W, 3) uint8, GT 0/1 and the confuser mask: class bands, pasted boxes."""
    cls = np.zeros((H, W), np.int64)
    cls[: H // 4] = 4
    cls[H // 4 : H // 2] = rng.choice([2, 3])
    cls[H // 2 : 5 * H // 8] = 1
    rgb = CLASS_COLOURS[cls].copy()
    gt = np.zeros((H, W), np.uint8)
    conf = np.zeros((H, W), bool)
    for colour, n, label in ((ANOMALY_COLOUR, n_anomalies, 1), (CONFUSER_COLOUR, n_confusers, 0)):
        for _ in range(n):
            h, w = rng.integers(4, 9), rng.integers(4, 12)
            y, x = rng.integers(H // 2, H - h), rng.integers(0, W - w)
            # each object leans a little towards some class colour: its statistics vary
            tint = CLASS_COLOURS[rng.integers(0, 5)]
            rgb[y : y + h, x : x + w] = colour + rng.uniform(0, 0.3) * (tint - colour)
            gt[y : y + h, x : x + w] = label
            conf[y : y + h, x : x + w] = label == 0
    conf &= gt == 0
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), gt, conf


def build_world(ws, n_train: int = 16, n_eval: int = 6):
    """Store + files: model, synthetic samples (accepted) with render cache, eval benchmark."""
    from db import Store, catalog, pastes

    _register_arch()
    rng = np.random.default_rng(0)
    syn_root, eval_root = ws / "synthetic", ws / "bench"
    for d in (
        syn_root / "images",
        syn_root / "gt",
        eval_root / "images",
        eval_root / "labels_masks",
    ):
        d.mkdir(parents=True)
    store = Store.open(workspace=ws)
    train_imgs = []
    with store.session() as s:
        model = catalog.register_model(s, "colour", "test_colour_net", input_size=(H, W))
        syn = catalog.register_dataset(s, "syn", "synthetic", syn_root)
        bench = catalog.register_dataset(s, "bench", "eval", eval_root)
        for i in range(n_train):
            rgb, gt, _ = make_scene(rng, 2, 1 if i % 4 == 0 else 0)
            PILImage.fromarray(rgb).save(syn_root / "images" / f"s{i}.png")
            PILImage.fromarray(gt).save(syn_root / "gt" / f"s{i}.png")
            img = catalog.register_images(s, syn, [syn_root / "images" / f"s{i}.png"])[0]
            sample = pastes.create_sample(
                s, syn.id, f"bg{i}", {"p0": {"object_id": f"o{i}", "x": 1}}, status="accepted"
            )
            pastes.set_render_cache(
                s,
                sample.id,
                {"image": f"images/s{i}.png", "gt": f"gt/s{i}.png", "image_id": img.id},
            )
            train_imgs.append((img.id, rgb, gt))
        for i in range(n_eval):
            rgb, gt, _ = make_scene(rng, 2, 2)
            PILImage.fromarray(rgb).save(eval_root / "images" / f"e{i}.png")
            PILImage.fromarray(gt).save(eval_root / "labels_masks" / f"e{i}.png")
        eval_img = catalog.register_images(s, bench, [eval_root / "images" / "e0.png"])[0]
        ids = {"model": model.id, "bench": bench.id, "eval_image": eval_img.id}
    return store, train_imgs, ids


def head_map(checkpoint: str, rgb: np.ndarray) -> np.ndarray:
    """The head's anomaly map of an image, computed outside the trainer (model + scorer)."""
    from anomseg.models.heads import head_scorer, load_head
    from anomseg.predict import Predictor

    head, _ = load_head(checkpoint)
    return head_scorer(head)(Predictor(ColourNet(), device="cpu").predict(rgb))


def test_flag_and_retrain_loop(tmp_path):
    from db import flags, heads
    from training.trainer import TrainConfig, train_head
    from workbench.jobs import enqueue_training
    from workbench.models import frozen_model
    from workbench.worker import Worker

    store, train_imgs, ids = build_world(tmp_path)
    # defaults except the size of an epoch (tiny world) and one CPU thread (busy test machines)
    cfg = TrainConfig(head="stats", epochs=5, batch_pixels=512, steps_per_epoch=60, threads=1)
    v1 = train_head(store, tmp_path, frozen_model(store, "colour"), cfg, activate=True)
    assert v1["version"] == 1 and v1["active"]
    assert v1["snapshot_counts"]["images"] == len(train_imgs)

    # the user flags false positives on the training images that show confusers: normal pixels
    # where v1 fires
    flagged: dict[int, np.ndarray] = {}
    with store.session() as s:
        for img_id, rgb, gt in train_imgs[::4]:
            fp = (head_map(v1["checkpoint"], rgb) > 0.5) & (gt == 0)
            if fp.sum() >= 4:
                flags.add_flag(s, img_id, ids["model"], "head:1", "false_positive", fp)
                flagged[img_id] = fp
        # a flag on an eval image is kept as an annotation but must never train
        flags.add_flag(
            s, ids["eval_image"], ids["model"], "head:1", "false_positive", np.ones((H, W), bool)
        )
    assert len(flagged) == 4, "v1 should fire on the confusers of the flagged images"

    job_id = enqueue_training(
        store, {"model": "colour", **cfg.to_dict(), "activate": "auprc_improves"}
    )
    assert Worker(store, tmp_path, heartbeat_s=0.5).run_once() == job_id
    with store.read() as s:
        from db.jobs import get_job

        job = get_job(s, job_id)
        assert job.status == "done", (job.error, job.log_tail)
        v2 = job.result
        hv2 = heads.get_head(s, v2["head_id"])
        assert hv2.parent_id == v1["head_id"] and hv2.status == "ready"
        snap = hv2.snapshot
    # retraining reused every cached statistic; the eval image's flag is not in the snapshot
    assert snap["cache"] == {"hits": len(train_imgs), "computed": 0}
    assert snap["flag_ids"] == [1, 2, 3, 4]  # flag 5 (on the eval image) never trains
    assert all("sample:" in i["key"] for i in snap["images"])

    # 1) inside the flagged regions v2's mean score falls by at least half
    s1 = np.concatenate(
        [head_map(v1["checkpoint"], rgb)[flagged[i]] for i, rgb, _ in train_imgs if i in flagged]
    )
    s2 = np.concatenate(
        [head_map(v2["checkpoint"], rgb)[flagged[i]] for i, rgb, _ in train_imgs if i in flagged]
    )
    assert s2.mean() <= 0.5 * s1.mean(), (s1.mean(), s2.mean())

    # 2) AuPRC on the eval set: stored rows agree with sklearn; v2 loses at most 2 points
    def auprc(ckpt: str) -> float:
        scores, labels = [], []
        for i in range(6):
            rgb = np.asarray(PILImage.open(tmp_path / "bench/images" / f"e{i}.png"))
            gt = np.asarray(PILImage.open(tmp_path / "bench/labels_masks" / f"e{i}.png"))
            scores.append(head_map(ckpt, rgb).ravel())
            labels.append(gt.ravel())
        return 100 * average_precision_score(np.concatenate(labels), np.concatenate(scores))

    a1, a2 = auprc(v1["checkpoint"]), auprc(v2["checkpoint"])
    assert a2 >= a1 - 2.0, (a1, a2)
    stored = {
        v: v_["metrics"]["eval"]["bench"]["metrics"]["auprc"] * 100 for v, v_ in ((1, v1), (2, v2))
    }
    assert stored[1] == pytest.approx(a1, abs=1e-3) and stored[2] == pytest.approx(a2, abs=1e-3)
    with store.read() as s:
        from sqlalchemy import select

        from db.models import EvalResult

        methods = sorted(r.method for r in s.scalars(select(EvalResult)))
        active = heads.active_head(s, ids["model"]).version
    assert methods == ["head:1", "head:2"]
    # the rule ("auprc_improves") activates v2 only if its mean AuPRC beats v1's
    better = v2["metrics"]["eval_mean_auprc"] > v1["metrics"]["eval_mean_auprc"]
    assert active == (2 if better else 1) and v2["active"] == better


def test_cli_train_queue_and_worker(tmp_path, capsys):
    from workbench.cli import main

    build_world(tmp_path, n_train=4, n_eval=2)
    base = [
        "--model",
        "colour",
        "--workspace",
        str(tmp_path),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "5",
        "--batch-pixels",
        "256",
        "--device",
        "cpu",
    ]
    assert main(["train", *base, "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "head:1 (stats) of model colour" in out and "active: no" in out
    assert main(["train", *base, "--head", "stats", "--queue", "--activate"]) == 0
    assert "queued train_head job 1" in capsys.readouterr().out
    assert main(["worker", "--workspace", str(tmp_path), "--once"]) == 0
    assert "job 1 finished" in capsys.readouterr().out
    from db import Store, heads
    from db.jobs import get_job

    with Store.open(workspace=tmp_path) as store, store.read() as s:
        assert get_job(s, 1).status == "done"
        assert heads.active_head(s, 1).version == 2
        assert s.get(type(heads.active_head(s, 1)), 2).metrics["eval"]["bench"]["n_images"] == 2
    assert main(["train", "--model", "nope", "--workspace", str(tmp_path)]) == 2
    assert "model 'nope' is not registered; known: colour" in capsys.readouterr().err
    assert main(["train", *base, "--head", "features"]) == 2
    assert "patch features" in capsys.readouterr().err
