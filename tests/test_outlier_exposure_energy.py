"""Outlier exposure's energy-margin term (``OEConfig.energy_weight``) and the real recipe's
outlier-exposure setting (``training.real_recipe.OE_RECIPE``), without ../shared.

The loss is checked against a per-pixel numpy loop written from the definition in
``training.outlier_exposure``'s docstring; training against what the term is for (pasted pixels'
logsumexp goes down, normal pixels' does not)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomseg.errors import InputError
from anomseg.models.erfnet import ERFNet
from training.outlier_exposure import OEConfig, OESet, oe_loss, train_oe


def _lse(v: np.ndarray) -> float:
    m = float(v.max())
    return m + math.log(float(np.exp(v - m).sum()))


@pytest.mark.parametrize("classes", [None, 4])
def test_energy_term_equals_a_per_pixel_numpy_loop(classes):
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 5, 4, 6
    z = torch.randn(B, C, H, W, generator=g) * 3
    q = torch.randn(B, C, H, W, generator=g) * 3
    t = torch.from_numpy(np.random.default_rng(5).choice([0, 1, 255], (B, H, W)).astype(np.uint8))
    margin, w = 1.5, 0.4
    base, base_parts = oe_loss(z, q, t, oe_weight=0.7)
    loss, parts = oe_loss(z, q, t, 0.7, energy_weight=w, energy_margin=margin, classes=classes)

    k = C if classes is None else classes
    zn, qn, tn = z.double().numpy(), q.double().numpy(), t.numpy()
    pasted, normal = [], []
    for b in range(B):
        for y in range(H):
            for x in range(W):
                lz, lq = _lse(zn[b, :k, y, x]), _lse(qn[b, :k, y, x])
                if tn[b, y, x] == 1:
                    pasted.append(max(lz - margin, 0.0) ** 2)
                elif tn[b, y, x] == 0:
                    normal.append(max(lq - lz, 0.0) ** 2)
    term = np.mean(pasted) + np.mean(normal)
    assert term > 0.1  # both hinges are active somewhere: the check below is not vacuous
    assert abs(float(loss) - (float(base) + w * term)) < 1e-4
    assert abs(parts["energy"] - term) < 1e-4
    assert parts["ce_uniform"] == base_parts["ce_uniform"] and parts["kl"] == base_parts["kl"]
    # weight 0 is Meta-OoD's loss alone
    assert base_parts["energy"] == 0.0
    assert float(oe_loss(z, q, t, 0.7, energy_weight=0.0, classes=classes)[0]) == float(base)
    # already below the margin on pastes and at the frozen logsumexp elsewhere: the term is 0
    low = torch.full((B, C, H, W), -10.0)
    assert oe_loss(low, low, t, energy_weight=w, energy_margin=margin)[1]["energy"] == 0.0


def _erfnet() -> ERFNet:
    torch.manual_seed(0)
    m = ERFNet()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def test_energy_term_lowers_pasted_logsumexp_and_keeps_normal_pixels():
    model = _erfnet()
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(6, 128, 8, 16, generator=g)
    feats[:, :, 2:5, 4:10] += 3  # the pastes' encoder output differs, as a real object's does
    feats = feats.half()
    targets = torch.zeros(6, 64, 128, dtype=torch.uint8)
    targets[:, 16:40, 32:80] = 1
    oeset = OESet(feats, targets, [f"h{i}" for i in range(6)])

    def lse(decoder, label):
        with torch.no_grad():
            z = decoder(feats.float())[:, : model.num_classes]
        return float(torch.logsumexp(z, 1)[targets == label].mean())

    margin = lse(model.decoder, 1) - 1.0  # the pastes start above it
    runs = {}
    for w in (0.0, 1.0):
        cfg = OEConfig(stage="decoder", epochs=3, lr=1e-2, batch_size=3, crop=(64, 128),
                       energy_weight=w, energy_margin=margin)  # fmt: skip
        head, metrics, _ = train_oe(model, oeset, cfg)
        runs[w] = (lse(head.decoder, 1), lse(head.decoder, 0), metrics)
    before = (lse(model.decoder, 1), lse(model.decoder, 0))
    assert runs[1.0][0] < runs[0.0][0] - 0.5 and runs[1.0][0] < before[0] - 0.5
    assert runs[1.0][1] > before[1] - 0.4  # normal pixels keep (most of) their logsumexp
    # so energy (-logsumexp) now separates pastes from the rest; without the term it does not
    assert runs[1.0][1] - runs[1.0][0] > 0.3 > abs(runs[0.0][1] - runs[0.0][0])
    assert runs[1.0][2]["mean_energy"] > 0 and runs[0.0][2]["mean_energy"] == 0


def test_recipe_budget_runs_the_oe_recipe_and_refuses_bad_options_before_writing(tmp_path, capsys):
    from training.real_recipe import OE_RECIPE, PASTES, Budget
    from workbench.cli import main

    b = Budget()
    assert b.placement == PASTES["large"]
    assert b.to_dict()["oe"] == OE_RECIPE
    cfg = OEConfig(**Budget(oe={"epochs": 2}).oe)
    assert (cfg.stage, cfg.crop, cfg.epochs, cfg.score) == ("decoder", (128, 256), 2, "energy")
    assert cfg.energy_weight == OE_RECIPE["energy_weight"] > 0
    with pytest.raises(InputError, match="energy_weight"):
        Budget(oe={"energy_weight": -1.0})
    out = tmp_path / "run"
    rc = main(["recipe", "real", "--shared", str(tmp_path), "--out", str(out),
               "--oe-energy-weight", "-1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "energy_weight" in err and err.count("\n") == 1
    assert not out.exists()


def test_oe_defaults_are_the_recipe_setting_so_retrain_trains_what_won():
    """The Retrain tab and ``anomseg train --head oe`` build OEConfig from its defaults (plus the
    head's epochs / lr); the recipe records its setting in OE_RECIPE: the two must not drift."""
    from dataclasses import fields

    from training.config import TrainConfig
    from training.real_recipe import OE_RECIPE

    default = OEConfig()
    for key, value in OE_RECIPE.items():
        got = getattr(default, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert set(OE_RECIPE) <= {f.name for f in fields(OEConfig)}
    retrain = OEConfig.from_train_config(TrainConfig(head="oe"))
    assert (retrain.stage, retrain.crop, retrain.score) == ("decoder", (128, 256), "energy")
    assert retrain.energy_weight == OE_RECIPE["energy_weight"]
