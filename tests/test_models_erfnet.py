"""ERFNet on the shared checkpoint, the model registry and ``anomseg models``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomseg.errors import InputError
from anomseg.models import create_model, list_models, load_checkpoint
from workbench.cli import main as cli_main


@pytest.fixture(scope="module")
def erfnet(erfnet_checkpoint):
    return create_model("erfnet", checkpoint=erfnet_checkpoint)


@pytest.mark.realdata
def test_loads_shared_checkpoint_with_and_without_prefix(erfnet_checkpoint, erfnet, tmp_path):
    raw = torch.load(erfnet_checkpoint, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    # every tensor of the file landed in the parameter / buffer of the same name
    own = erfnet.state_dict()
    assert set(own) == {k.removeprefix("module.") for k in raw}
    for k, v in raw.items():
        assert torch.equal(own[k.removeprefix("module.")], v), k

    bare = tmp_path / "bare.pth"
    torch.save({k.removeprefix("module."): v for k, v in raw.items()}, bare)
    other = create_model("erfnet")
    assert not torch.equal(other.decoder.output_conv.weight, own["decoder.output_conv.weight"])
    load_checkpoint(other, bare)
    for k, v in other.state_dict().items():
        assert torch.equal(v, own[k]), k


@pytest.mark.realdata
def test_road_in_bottom_centre_of_real_image(erfnet, road_anomaly21):
    # RoadAnomaly21 0.png: an empty asphalt road fills the bottom centre (turkeys cross higher up)
    img = Image.open(road_anomaly21 / "images" / "0.png").convert("RGB")
    img = img.resize((1024, 512), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0
    out = erfnet.predict_batch(x)
    assert out.keys() == {"logits", "features"}
    assert out["logits"].shape == (1, 20, 512, 1024)
    # the encoder's output, from which the decoder alone reproduces the logits
    assert out["features"].shape == (1, 128, 64, 128)
    with torch.no_grad():
        assert torch.equal(erfnet.decoder(out["features"]), out["logits"])
    pred = out["logits"][0, : erfnet.num_classes].argmax(0)
    region = pred[400:512, 384:640]
    assert (region == 0).float().mean().item() > 0.9  # trainId 0 = road


def test_predict_batch_is_raw_unnormalised_forward_and_keeps_size():
    torch.manual_seed(0)
    model = create_model("erfnet")
    x = torch.rand(2, 3, 64, 96)
    # published protocol: the network sees RGB in [0, 1] as is, outputs are not post-processed
    assert torch.allclose(model.predict_batch(x)["logits"], model(x), atol=1e-6)
    odd = model.predict_batch(torch.rand(1, 3, 61, 93))["logits"]
    assert odd.shape == (1, 20, 61, 93)
    assert torch.isfinite(odd).all()


def test_predict_batch_rejects_wrong_input():
    model = create_model("erfnet")
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model.predict_batch(torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="float"):
        model.predict_batch(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_registry_names_attributes_and_errors():
    names = list_models()
    for name in ("erfnet", "eomt", "eomt_vit_large_1024", "eomt_vit_base_seed_1024", "eomt_vit_small_640"):
        assert name in names
    assert "eomt_tiny" in names
    model = create_model("erfnet")
    assert model.arch == "erfnet" and not model.training
    assert model.num_classes == 19 and model.default_input_size == (512, 1024)
    assert model.decoder.output_conv.out_channels == 20
    with pytest.raises(InputError, match="erfnet"):  # the message lists the known names
        create_model("erfnett")
    with pytest.raises(InputError, match="bogus"):
        create_model("erfnet", bogus=1)


def test_models_command_lists_parameter_counts(capsys):
    assert cli_main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)  # {"architectures": [...], "registered": [...]}
    rows = {r["name"]: r for r in listed["architectures"]}
    assert set(rows) == set(list_models())
    for name in ("erfnet", "eomt_tiny"):  # counted on meta there, on real tensors here
        real = sum(p.numel() for p in create_model(name).parameters())
        assert rows[name]["params"] == real
    assert rows["erfnet"]["input_size"] == "512x1024" and rows["erfnet"]["classes"] == 19
    assert rows["eomt_vit_small_640"]["classes"] == 133
    assert cli_main(["models"]) == 0
    assert "eomt_vit_large_1024" in capsys.readouterr().out
