"""Evaluation on many processes equals evaluation on one; batches equal single forwards.

* ``DatasetEval`` shards merged = one pass over all images (exact and streaming), and both equal
  scikit-learn on the pooled pixels (independent computation);
* ``anomseg eval --nproc 2`` (2 gloo ranks) on the real RoadAnomaly21 with the shared ERFNet
  writes the same JSON as the one-process run, to 1e-12 (exact mode);
* the Leaderboard's evaluate job under a worker started with ``--nproc 2`` stores the same
  results as under a one-process worker;
* the batching code of the GPU path, run on CPU: a batch of N gives the N single forwards.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomseg.evaluate import DatasetEval, parse_methods
from anomseg.prediction import Prediction

METHODS = ["msp", "maxlogit", "energy"]
TIMING_KEYS = {"seconds", "forward_seconds", "method_seconds", "wall_seconds"}


def _predictions(n: int = 6, hw: tuple[int, int] = (24, 40)):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        logits = torch.from_numpy(rng.standard_normal((5, *hw)).astype(np.float32) * 3)
        label = np.zeros(hw, np.uint8)
        y, x = rng.integers(0, hw[0] - 6), rng.integers(0, hw[1] - 8)
        label[y : y + 6, x : x + 8] = 1
        logits[:, y : y + 6, x : x + 8] *= 0.3  # anomalies: flatter logits
        label[:2] = 255
        if i == 3:
            label[label == 1] = 0  # one image without anomaly pixels (skipped)
        out.append((f"im{i}", Prediction(logits=logits, num_classes=4), label))
    return out


def assert_same(a, b, path: str = "") -> None:
    """Equal JSON-like documents: floats to 1e-12, timing fields ignored."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k not in TIMING_KEYS:
                assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-12 or (math.isnan(a) and math.isnan(b)), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_merged_shards_equal_one_pass_and_sklearn(mode):
    specs = parse_methods(METHODS)
    preds = _predictions()
    whole = DatasetEval("toy", specs, mode)
    shards = [DatasetEval("toy", specs, mode) for _ in range(3)]
    for i, (name, pred, label) in enumerate(preds):
        whole.add(i, name, pred, label)
    # ranks get images i % 3 in a different order of arrival: the merge must not care
    for i in reversed(range(len(preds))):
        shards[i % 3].add(i, *preds[i])
    merged = shards[2].merge(shards[0]).merge(shards[1])
    a = [r.to_dict() for r in whole.rows(whole.results())]
    b = [r.to_dict() for r in merged.rows(merged.results())]
    assert_same(a, b)
    assert b[0]["n_images"] == 5 and b[0]["n_skipped"] == 1
    assert [p["name"] for p in b[0]["per_image"]] == ["im0", "im1", "im2", "im4", "im5"]
    # independent: scikit-learn on the pooled valid pixels (maxlogit = -max logit)
    used = [(p, lab) for _, p, lab in preds if (lab == 1).any()]
    s = np.concatenate([-p.logits.max(0).values.numpy().ravel() for p, _ in used])
    y = np.concatenate([lab.ravel() for _, lab in used])
    keep = y != 255
    row = next(r for r in b if r["method"] == "maxlogit")
    tol = 1e-9 if mode == "exact" else 1e-3
    assert abs(row["auprc"] - average_precision_score(y[keep] == 1, s[keep])) < tol
    assert abs(row["auroc"] - roc_auc_score(y[keep] == 1, s[keep])) < tol
    fpr, tpr, _ = roc_curve(y[keep] == 1, s[keep], drop_intermediate=False)
    assert abs(row["fpr95"] - fpr[np.argmax(tpr >= 0.95)]) < (1e-9 if mode == "exact" else 5e-3)


def test_merge_refuses_another_dataset_or_mode():
    from anomseg.errors import InputError

    specs = parse_methods(METHODS)
    with pytest.raises(InputError, match="expected the same dataset, methods and mode"):
        DatasetEval("a", specs, "exact").merge(DatasetEval("a", specs, "streaming"))
    with pytest.raises(InputError, match="expected the same dataset"):
        DatasetEval("a", specs).merge(DatasetEval("b", specs))


def test_batch_of_n_equals_n_single_forwards():
    """The one forward path (pinned copies and streams on CUDA) on CPU: batching changes no
    value beyond float32 rounding (oneDNN blocks a batch differently), and each image's
    tensors own their storage."""
    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor

    torch.manual_seed(0)
    p = Predictor(create_model("erfnet"), device="cpu", input_size=(64, 128), cache_bytes=0)
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (64, 128, 3), dtype=np.uint8) for _ in range(3)]
    batch = p.forward_arrays(ims, [{"i": i} for i in range(3)])
    single = [p.forward_arrays([im], [{"i": i}])[0] for i, im in enumerate(ims)]
    assert p.forward_calls == 4
    for b, s in zip(batch, single, strict=True):
        assert b.meta == s.meta and b.logits.shape == (20, 64, 128)
        torch.testing.assert_close(b.logits, s.logits, rtol=1e-5, atol=1e-6)
        assert b.logits.untyped_storage().nbytes() == b.logits.numel() * 4
    assert p.auto_batch_size() == 1  # CPU: no speed from batching, the per-image path


@pytest.mark.realdata
def test_eval_nproc2_equals_one_process_json(road_anomaly21, erfnet_checkpoint, tmp_path):
    from workbench.cli import main

    common = [
        "eval", "--model", "erfnet", "--checkpoint", str(erfnet_checkpoint),
        "--dataset", str(road_anomaly21), "--methods", ",".join(METHODS), "--no-progress",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--nproc", "2", "--out", str(tmp_path / "two.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert_same(one, two)
    assert one["metric_mode"] == "exact" and len(one["rows"]) == len(METHODS)
    assert all(r["n_images"] == 10 and len(r["per_image"]) == 10 for r in two["rows"])
    # the shared ERFNet's known figure (README): MaxLogit AuPRC on RoadAnomaly21
    assert next(r for r in two["rows"] if r["method"] == "maxlogit")["auprc"] > 0.3


@pytest.mark.realdata
@pytest.mark.slow
def test_worker_nproc_evaluate_job_equals_one_process(road_anomaly21, erfnet_checkpoint, tmp_path):
    from sqlalchemy import func, select

    from db import catalog
    from db.jobs import enqueue_job, get_job
    from db.models import EvalResult
    from workbench.worker import Worker
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    try:

        def setup(s):
            # half the protocol's size: this test is about the job's plumbing, the CLI test
            # above checks the full-size numbers
            catalog.register_model(s, "erf", "erfnet", erfnet_checkpoint, input_size=(256, 512))
            catalog.register_dataset(s, "ra21", "eval", road_anomaly21)

        ws.store.transact(setup)
        found = {}
        for nproc in (2, 1):
            with ws.store.read() as s:
                before = s.scalar(select(func.max(EvalResult.id))) or 0
            params = {"model": "erf", "methods": ["maxlogit", "energy"]}
            job = ws.store.transact(lambda s, p=params: enqueue_job(s, "evaluate", p).id)
            assert Worker(ws.store, ws.root, nproc=nproc).run_once() == job
            with ws.store.read() as s:
                assert get_job(s, job).status == "done", get_job(s, job).error
                rows = s.scalars(select(EvalResult).where(EvalResult.id > before))
                found[nproc] = {
                    r.method: {"metrics": r.metrics, "n": r.n_images, "per_image": r.per_image}
                    for r in rows
                }
        assert set(found[1]) == {"maxlogit", "energy"}
        assert found[1]["maxlogit"]["n"] == 10
        assert_same(found[1], found[2])
    finally:
        ws.close()


def test_prefetch_thread_hands_over_the_readers_error_and_stops_early():
    import threading

    from anomseg.errors import InputError
    from anomseg.predict import prefetched

    def reader():
        yield 1
        yield 2
        raise InputError("image x.png: not a PNG; expected an image file")

    it = prefetched(reader())
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(InputError, match="x.png"):
        next(it)
    # a consumer that stops early (an error in scoring, a cancelled job) leaves no thread behind
    before = threading.active_count()
    it = prefetched(iter(range(10_000)), depth=2)
    assert next(it) == 0
    it.close()
    assert threading.active_count() == before
