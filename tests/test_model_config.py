"""The frozen model config create_model attaches (timm's pretrained_cfg habit), on every
registered architecture; the kind is checked against what the model's forward really returns."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from anomseg.models import (
    MODEL_KINDS,
    ModelConfig,
    create_model,
    get_model_entry,
    list_models,
    model_config,
    model_kind,
    register_model,
)
from anomseg.predict import Predictor
from anomseg.scoring import is_mask_model


@pytest.mark.parametrize("name", list_models())
def test_every_architecture_carries_its_config(name):
    entry = get_model_entry(name)
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = create_model(name)
    cfg = model.model_cfg
    assert isinstance(cfg, ModelConfig) and model_config(model) is cfg
    assert cfg.architecture == name == model.arch
    assert cfg.kind in MODEL_KINDS and cfg.kind == entry.kind == model_kind(name)
    assert cfg.input_size == tuple(entry.defaults["input_size"]) == model.default_input_size
    assert cfg.num_classes == entry.defaults["num_classes"] == model.num_classes
    # a mask model has a class head over num_classes + "no object"; a pixel model has none
    heads = [m for n, m in model.named_modules() if n == "class_head"]
    assert (cfg.kind == "mask") == bool(heads)
    if heads:
        assert heads[0].out_features == cfg.num_classes + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.kind = "pixel"


def test_options_given_to_create_model_reach_the_config():
    with torch.device("meta"):
        model = create_model("erfnet", input_size=(64, 128), num_classes=7, num_outputs=8)
    assert model.model_cfg == ModelConfig("erfnet", "pixel", (64, 128), 7)


@pytest.mark.parametrize(
    "name, options",
    [("erfnet", {"input_size": (32, 64)}), ("eomt_tiny", {"depth": 4, "img_size": (32, 64),
                                                          "input_size": (32, 64)})],
)  # fmt: skip
def test_kind_matches_what_the_forward_returns(name, options):
    torch.manual_seed(0)
    model = create_model(name, **options)
    pred = Predictor(model, device="cpu").predict(torch.rand(32, 64, 3).numpy())
    assert is_mask_model(pred) == model.model_cfg.is_mask
    assert (pred.pixel_class_logits is not None) == (model.model_cfg.kind == "mask")


def test_models_built_elsewhere_and_bad_kinds():
    class Double(torch.nn.Module):  # a test double following the SegModel contract only
        arch, num_classes, default_input_size = "double", 3, (8, 16)

    assert model_config(Double()) == ModelConfig("double", "pixel", (8, 16), 3)
    with pytest.raises(ValueError, match="kind"):
        register_model("never_registered", kind="panoptic")
    assert "never_registered" not in list_models()
    assert get_model_entry("erfnet").accepts("input_size")
    assert not get_model_entry("erfnet").accepts("num_q")
