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
