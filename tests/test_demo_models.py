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


def test_an_outlier_phase_trains_on_pastes_and_needs_a_pasted_pool(tmp_path):
    import dataclasses

    from anomseg.world import train_models as tm

    torch.set_num_threads(1)
    spec = dataclasses.replace(
        DEMO_MODELS["demo-erfnet"],
        phases=(tm.Phase("onecycle", 2, 2e-3), tm.Phase("cosine", 2, 1e-3, outliers=True)),
        batch=2,
    )
    clean = tm.make_pool(range(2), workers=1)
    with pytest.raises(ValueError, match="pasted=True"):
        tm.train_one(spec, None, pool=clean, work_dir=tmp_path / "a")
    pool = tm.make_pool(range(2), workers=1, pasted=True)
    assert len(pool) == 4
    assert torch.equal(pool[0], clean[0]) and torch.equal(pool[1], clean[1])
    rgb, lab, prgb, plab = pool
    ood = plab == tm.OOD
    assert ood.any() and not (lab == tm.OOD).any()
    # pasted pixels show the object, not the street; untouched pixels keep the street's class
    assert (prgb - rgb.int()).abs().sum(1)[ood].float().mean() > 10
    same = (plab != tm.OOD) & (plab != 255)
    assert torch.equal(plab[same], lab[same])
    _, log = tm.train_one(spec, None, pool=pool, work_dir=tmp_path / "b")
    assert [p["outliers"] for p in log["phases"]] == [False, True]


def _pixel_loop_loss(out: np.ndarray, lab: np.ndarray, weight: np.ndarray, ood_label: int, oe):
    """Weighted cross-entropy + outlier exposure, pixel by pixel (the independent reference)."""
    num, den, oe_sum, n_ood = 0.0, 0.0, 0.0, 0
    b, c, h, w = out.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                z = out[i, :, y, x].astype(np.float64)
                t = lab[i, y, x]
                if t == ood_label:
                    z19 = z[:19]  # the void output is no class to be uncertain between
                    logp = z19 - z19.max() - np.log(np.exp(z19 - z19.max()).sum())
                    oe_sum += -logp[weight[:19] > 0].mean()  # uniform over the taught classes
                    n_ood += 1
                elif t != 255:
                    logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
                    num += weight[t] * -logp[t]
                    den += weight[t]
    return num / den + oe * oe_sum / n_ood


def test_training_loss_matches_a_pixel_loop_and_is_lowest_when_pastes_are_uniform():
    from anomseg.world import train_models as tm

    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 20, 4, 6, generator=g) * 3
    lab = torch.randint(0, 19, (2, 4, 6), generator=g)
    lab[0, 1, 2:5] = tm.OOD
    lab[1, 3, 0] = tm.OOD
    lab[1, 0, 0] = 255
    weight = torch.rand(19, generator=g) + 0.2
    weight[[3, 15]] = 0  # classes the data never holds (the world draws no wall, no bus)

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits

    got = tm._loss(Fixed(out), "erfnet", None, lab, weight)
    w20 = np.concatenate([weight.numpy(), [0.0]])
    want = _pixel_loop_loss(out.numpy(), lab.numpy(), w20, tm.OOD, tm.OE_WEIGHT)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # flattening the 19 class logits on pasted pixels lowers the loss; sharpening raises it
    ood = (lab == tm.OOD)[:, None].expand_as(out).clone()
    ood[:, 19:] = False
    flat, sharp = out.clone(), out.clone()
    flat[ood] = 0.0
    sharp[ood] = out[ood] * 3
    assert float(tm._loss(Fixed(flat), "erfnet", None, lab, weight)) < float(got)
    assert float(tm._loss(Fixed(sharp), "erfnet", None, lab, weight)) > float(got)


def test_logit_adjustment_picks_the_best_alpha_and_folds_it_into_the_bias():
    from sklearn.metrics import confusion_matrix

    from anomseg.world import train_models as tm

    class Linear(torch.nn.Module):
        """A 1x1 convolution: its bias is the last layer's bias, as in ERFNet."""

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 20, 1)

        def predict_batch(self, x):
            return {"logits": self.head(x)}

    torch.manual_seed(0)
    model = Linear()
    rgb = torch.randint(0, 256, (10, 3, 8, 12), dtype=torch.uint8)
    with torch.no_grad():
        before = model.predict_batch(rgb.float() / 255)["logits"][:, :19]
    # labels: the model's own argmax after a known tilt, plus noise, so some alpha > 0 helps
    weight = torch.linspace(0.3, 3.0, 19)
    lab = (before - 0.6 * weight.log()[:, None, None]).argmax(1)
    lab[:, ::3] = torch.randint(0, 19, lab[:, ::3].shape)
    lab[0, 0, 0] = 255

    def miou(pred):
        keep = lab != 255
        cm = confusion_matrix(lab[keep].numpy(), pred[keep].numpy(), labels=range(19))
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        return (tp[union > 0] / union[union > 0]).mean()

    log_w = weight.log()[:, None, None]
    brute = {a: miou((before - a * log_w).argmax(1)) for a in tm.ADJUST_GRID}
    res = tm.apply_logit_adjustment(model, "head.bias", rgb, lab, weight)
    best = max(brute.values())
    assert res["alpha"] == min(a for a in tm.ADJUST_GRID if brute[a] == best)
    assert res["alpha"] > 0
    for a in tm.ADJUST_GRID:
        assert res["fit_miou"][str(a)] == pytest.approx(brute[a], abs=1e-4)
    with torch.no_grad():
        after = model.predict_batch(rgb.float() / 255)["logits"]
    assert torch.allclose(after[:, :19], before - res["alpha"] * log_w, atol=1e-5)
