"""The application layer: a store row becomes a model once (workbench.models), jobs are queued
through workbench.jobs and refused before queueing, and the worker runs without the UI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomseg.errors import InputError
from anomseg.models import create_model
from anomseg.predict import Predictor
from db import jobs as dbjobs
from workbench.bootstrap import DEMO_MODEL_DIR
from workbench.jobs import enqueue_evaluate, enqueue_synth_generate
from workbench.models import PredictorPool, build_model, build_predictor, frozen_model, read_spec
from workbench.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
CKPT = DEMO_MODEL_DIR / "demo-erfnet.safetensors"
SIZE = (64, 128)  # not the file's own 128x256: the stored input size must reach the builder

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason="no demo weights")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace.open(tmp_path_factory.mktemp("ws"))
    w.register_checkpoint("a", "erfnet", CKPT, input_size=SIZE)
    w.register_checkpoint("b", "erfnet", CKPT, input_size=SIZE)
    yield w
    w.close()


def test_a_row_builds_the_network_create_model_builds(ws):
    spec = read_spec(ws.store, "a")
    assert (spec.name, spec.architecture, spec.input_size) == ("a", "erfnet", SIZE)
    assert read_spec(ws.store, spec.id) == spec
    net = build_model(spec)
    ref = create_model("erfnet", checkpoint=CKPT, input_size=SIZE)
    got, want = net.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    rgb = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    pred = build_predictor(spec, "cpu").predict(rgb)
    ref_pred = Predictor(ref, device="cpu", input_size=SIZE).predict(rgb)
    assert pred.logits.shape[-2:] == SIZE
    np.testing.assert_array_equal(pred.logits, ref_pred.logits)
    with pytest.raises(InputError, match="'nope'"):
        read_spec(ws.store, "nope")


def test_predictor_pool_builds_once_per_checkpoint_and_evicts_the_oldest(ws):
    pool = PredictorPool(ws.store, max_models=1)
    a = pool.get("a")
    assert pool.get("a") is a and pool.get(read_spec(ws.store, "a").id) is a
    b = pool.get("b")
    assert b is not a and pool.get("b") is b
    assert pool.get("a") is not a  # evicted by b, rebuilt
    assert ws.predictor("a") is ws.predictor("a")  # the workspace's own pool


def test_frozen_model_is_built_only_when_a_forward_is_needed(ws):
    frozen = frozen_model(ws.store, "a", "cpu")
    spec = read_spec(ws.store, "a")
    # what a warm feature cache needs: the key and the size, without building the network
    assert frozen.cache_key == spec.checkpoint_sha256 and frozen.size == SIZE
    assert frozen.predictor is None and frozen.model_id == spec.id
    pred = frozen.predict(np.zeros((32, 64, 3), np.uint8))
    assert pred.logits.shape[-2:] == SIZE and frozen.get_predictor() is frozen.predictor
    given = Predictor(create_model("erfnet", checkpoint=CKPT), device="cpu")
    assert frozen_model(ws.store, "a", "cpu", predictor=given).get_predictor() is given


def test_jobs_are_refused_before_anything_is_queued(ws):
    with pytest.raises(InputError, match="'ghost'"):
        enqueue_evaluate(ws.store, "ghost")
    with pytest.raises(InputError, match="no evaluation dataset is registered"):
        enqueue_evaluate(ws.store, "a")
    for n in (0, 501, 2.5, True, "3"):
        with pytest.raises(InputError, match="expected 1..500"):
            enqueue_synth_generate(ws.store, n)
    with pytest.raises(InputError, match="no synthetic dataset is registered") as e:
        enqueue_synth_generate(ws.store, 3)
    assert str(e.value).endswith("to add generated samples to")
    with pytest.raises(InputError, match=r"samples to\. Register some first\.$"):
        enqueue_synth_generate(ws.store, 3, hint="Register some first.")
    with pytest.raises(InputError, match="dataset 'a' is not registered"):
        enqueue_synth_generate(ws.store, 3, {"dataset": "a"})  # a model's name, not a dataset
    with ws.store.read() as s:
        assert dbjobs.list_jobs(s) == []


def test_the_headless_worker_never_imports_the_ui(tmp_path):
    code = (
        "import sys\n"
        "from workbench.cli import main\n"
        f"rc = main(['worker', '--workspace', {str(tmp_path / 'w')!r}, '--once'])\n"
        "ui = sorted(m for m in sys.modules if m.split('.')[0] in ('dashboard', 'gradio'))\n"
        "print('UI', ui, rc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "UI [] 0" in out.stdout, out.stdout[-2000:]
    assert "kinds: evaluate, synth_generate, train_head" in out.stdout


@pytest.mark.realdata
@pytest.mark.slow
def test_evaluate_job_on_the_shared_erfnet_equals_a_directly_built_model(
    tmp_path, erfnet_checkpoint, road_anomaly21
):
    """The worker's evaluate job (model built from its store row) stores exactly what
    ``anomseg.evaluate`` computes with ``create_model`` called by hand, per image too."""
    from sqlalchemy import select

    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import evaluate
    from db.models import EvalResult, Job
    from workbench.worker import Worker

    size = (256, 512)
    w = Workspace.open(tmp_path / "ws")
    try:
        w.register_checkpoint("erfnet", "erfnet", erfnet_checkpoint, input_size=size)
        w.register_benchmark("RoadAnomaly21", road_anomaly21)
        job_id = enqueue_evaluate(w.store, "erfnet")
        assert Worker(w.store, w.root).run_once() == job_id
        with w.store.read() as s:
            assert s.get(Job, job_id).status == "done"
            stored = {
                r.method: (r.metrics, r.n_images, r.per_image)
                for r in s.scalars(select(EvalResult))
            }
        net = create_model("erfnet", checkpoint=erfnet_checkpoint, input_size=size)
        methods = ["msp", "maxlogit", "entropy", "energy"]
        ref = evaluate(
            Predictor(net, device="cpu", input_size=size), [BenchmarkDataset(road_anomaly21)],
            methods, progress=False,
        )  # fmt: skip
        assert sorted(stored) == sorted(methods)  # rba needs a mask model: left out
        for row in ref:
            metrics, n_images, per_image = stored[row.method]
            assert (metrics["auprc"], metrics["fpr95"], metrics["auroc"]) == (
                row.auprc, row.fpr95, row.auroc,
            )  # fmt: skip
            assert n_images == row.n_images == len(per_image) == 10
            assert [p["auprc"] for p in per_image] == [p["auprc"] for p in row.per_image]
    finally:
        w.close()
