"""The committed demo models: strict load, and predictions that mean something on the world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomseg.data.classes import TRAIN_ID
from anomseg.models import create_model
from anomseg.models.checkpoints import read_checkpoint
from anomseg.predict import Predictor
from anomseg.world.scenes import generate_scene
from anomseg.world.train_models import ASSET_DIR, DEMO_MODELS, HELDOUT_SEEDS

NAMES = sorted(DEMO_MODELS)


@pytest.fixture(scope="module")
def scene():
    # a held-out scene: never in the demo models' training pool
    return generate_scene(HELDOUT_SEEDS[3])


@pytest.mark.parametrize("name", NAMES)
def test_weights_and_metadata_are_committed_and_load_strictly(name):
    ckpt = ASSET_DIR / f"{name}.safetensors"
    meta = json.loads((ASSET_DIR / f"{name}.json").read_text())
    spec = DEMO_MODELS[name]
    assert meta["architecture"] == spec.arch and meta["classes"] == 19
    assert tuple(meta["input_size"]) == tuple(spec.options["input_size"])
    model = create_model(spec.arch, checkpoint=ckpt)  # options come from the sidecar JSON
    state, _ = read_checkpoint(ckpt)
    own = model.state_dict()
    assert set(state) == set(own)
    for k, v in state.items():
        assert torch.equal(own[k].to(v.dtype), v), k


def test_demo_weights_fit_the_repository_budget():
    total = sum(p.stat().st_size for p in ASSET_DIR.glob("*.safetensors"))
    assert 0 < total <= 15 * 2**20


@pytest.mark.parametrize("name", NAMES)
def test_road_is_predicted_as_road_on_a_heldout_scene(name, scene):
    spec = DEMO_MODELS[name]
    model = create_model(spec.arch, checkpoint=ASSET_DIR / f"{name}.safetensors")
    pred = Predictor(model, device="cpu").predict(scene.rgb)
    sem = pred.semantic().numpy()
    h, w = sem.shape
    from anomseg.imageio import resize_label

    labels = resize_label(scene.labels, (h, w))
    road = labels == TRAIN_ID["road"]
    sky = labels == TRAIN_ID["sky"]
    assert road.sum() > 0.1 * road.size
    assert (sem[road] == TRAIN_ID["road"]).mean() > 0.9
    # a model that said "road" everywhere would fail here
    assert (sem[sky] == TRAIN_ID["road"]).mean() < 0.05
    assert len(np.unique(sem)) >= 5


def test_training_is_reproducible_and_resumes_only_its_own_phases(tmp_path):
    """The re-train script's promise, on a tiny budget: same seed -> bit-identical weights;
    a phase file is reused only when this recipe wrote it."""
    import dataclasses

    from anomseg.world import train_models as tm

    torch.set_num_threads(1)
    pool = tm.make_pool(range(4), workers=1)
    spec = dataclasses.replace(
        DEMO_MODELS["demo-erfnet"],
        phases=(tm.Phase("onecycle", 2, 2e-3), tm.Phase("cosine", 2, 1e-3)),
        batch=2,
    )

    def run(work, s=spec):
        model, log = tm.train_one(s, None, seed=0, pool=pool, work_dir=tmp_path / work)
        return {k: v.clone() for k, v in model.state_dict().items()}, log

    a, log_a = run("a")
    b, _ = run("b")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p["final_loss"] > 0 for p in log_a["phases"])
    # a re-run in the same folder resumes both phases and ends with the same weights
    c, log_c = run("a")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [p.get("resumed", False) for p in log_a["phases"]] == [False, False]
    assert [p.get("resumed", False) for p in log_c["phases"]] == [True, True]
    # another recipe (phase 2 at another learning rate) must not pick up phase 2's file
    other = dataclasses.replace(spec, phases=(spec.phases[0], tm.Phase("cosine", 2, 5e-4)))
    d, log_d = run("a", other)
    assert [p.get("resumed", False) for p in log_d["phases"]] == [True, False]
    assert any(not torch.equal(a[k], d[k]) for k in a if a[k].is_floating_point())
