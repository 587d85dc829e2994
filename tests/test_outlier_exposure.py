"""Outlier exposure (kind "oe") and ``head:FILE`` for every learned kind, on a randomly initialised
ERFNet at a small input size (no ../shared needed).

References are computed here independently: the loss with a per-pixel numpy loop, the maps with
torchvision preprocessing, a separately built ERFNet carrying the tuned weights, numpy scores and
scikit-learn's average precision.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score
from torchvision.transforms import Compose, InterpolationMode, Resize, ToTensor

from anomseg.errors import CheckpointError, InputError
from anomseg.models.erfnet import ERFNet
from anomseg.models.heads import create_head, load_head, read_head_metadata, save_head
from anomseg.models.outlier_exposure import ERFNET_STAGES, OEHead
from training.outlier_exposure import OEConfig, OESet, oe_loss, train_oe
from workbench.cli import main

SIZE = (64, 128)


def test_oe_loss_equals_a_per_pixel_numpy_loop():
    g = torch.Generator().manual_seed(0)
    B, C, H, W = 2, 5, 4, 6
    z = torch.randn(B, C, H, W, generator=g) * 3
    q = torch.randn(B, C, H, W, generator=g) * 3
    t = torch.from_numpy(np.random.default_rng(1).choice([0, 1, 255], (B, H, W)).astype(np.uint8))
    loss, parts = oe_loss(z, q, t, oe_weight=0.7)

    ce, kl = [], []
    zn, qn, tn = z.double().numpy(), q.double().numpy(), t.numpy()
    for b in range(B):
        for y in range(H):
            for x in range(W):
                lp = zn[b, :, y, x] - math.log(np.exp(zn[b, :, y, x]).sum())
                lq = qn[b, :, y, x] - math.log(np.exp(qn[b, :, y, x]).sum())
                if tn[b, y, x] == 1:
                    ce.append(-sum(lp[k] / C for k in range(C)))
                elif tn[b, y, x] == 0:
                    kl.append(sum(math.exp(lq[k]) * (lq[k] - lp[k]) for k in range(C)))
    want = 0.7 * np.mean(ce) + np.mean(kl)
    assert abs(float(loss) - want) < 1e-5
    assert abs(parts["ce_uniform"] - np.mean(ce)) < 1e-5 and abs(parts["kl"] - np.mean(kl)) < 1e-5
    # its minimum: the frozen posterior kept (KL 0) and a flat one on pastes (CE = log C)
    flat = torch.zeros(B, C, H, W)
    assert float(oe_loss(flat, flat, t)[0]) == pytest.approx(math.log(C), abs=1e-6)


def _erfnet(seed: int) -> ERFNet:
    torch.manual_seed(seed)
    m = ERFNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture()
def base(tmp_path):
    """A random ERFNet saved as a checkpoint, and a tiny benchmark in the standard layout."""
    from anomseg.models.checkpoints import save_checkpoint
    from db.catalog import sha256_file

    model = _erfnet(0)
    ckpt = tmp_path / "erf.safetensors"
    save_checkpoint(model, ckpt, {"architecture": "erfnet"})
    root = tmp_path / "bench"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        im = rng.integers(0, 256, (50, 100, 3), dtype=np.uint8)
        lab = np.zeros((50, 100), np.uint8)
        y, x = rng.integers(0, 30), rng.integers(0, 70)
        lab[y : y + 14, x : x + 24] = 1
        im[y : y + 14, x : x + 24] = rng.integers(200, 256, (14, 24, 3))
        lab[:2] = 255
        Image.fromarray(im).save(root / "images" / f"{i}.png")
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
    return model, ckpt, sha256_file(ckpt), root


def _tuned_oe(model: ERFNet, stage: str = "last", score: str = "entropy") -> OEHead:
    head = OEHead(stage=stage, score=score).load_base(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in head.tuned_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return head.eval()


def test_oe_checkpoint_holds_only_the_tuned_layers_and_needs_its_base(base, tmp_path):
    model, ckpt, sha, _ = base
    head = _tuned_oe(model, "last")
    path = tmp_path / "oe.safetensors"
    save_head(head, path, model="erf", model_sha256=sha, base_checkpoint=str(ckpt))
    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert set(saved) == set(head.tuned_names())
    assert all(k.startswith(("decoder.layers.3", "decoder.layers.4", "decoder.layers.5",
                             "decoder.output_conv")) for k in saved)  # fmt: skip
    n_all = sum(p.numel() for p in model.decoder.parameters())
    assert 0 < sum(v.numel() for v in saved.values()) < n_all
    meta = read_head_metadata(path)
    assert meta["kind"] == "oe" and meta["model_sha256"] == sha

    loaded, _ = load_head(path)  # base found through the recorded path
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    other = tmp_path / "other.safetensors"
    from anomseg.models.checkpoints import save_checkpoint

    save_checkpoint(_erfnet(1), other, {"architecture": "erfnet"})
    with pytest.raises(CheckpointError, match="tuned from the checkpoint with sha256"):
        load_head(path, base=other)
    ckpt.rename(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match="base model checkpoint"):
        load_head(path)
    loaded, _ = load_head(path, base=tmp_path / "moved.safetensors")
    assert torch.equal(loaded.decoder.output_conv.weight, head.decoder.output_conv.weight)


def test_oe_training_moves_only_the_tuned_stage_and_flattens_pastes(base):
    model = base[0]
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(6, 128, 8, 16, generator=g).half()
    targets = torch.zeros(6, 64, 128, dtype=torch.uint8)
    targets[:, 16:40, 32:80] = 1
    targets[:, :4] = 255
    oeset = OESet(feats, targets, [f"h{i}" for i in range(6)])
    cfg = OEConfig(stage="last", epochs=3, lr=1e-3, batch_size=3, crop=(64, 128))

    def ce_on_pastes(dec):
        with torch.no_grad():
            logp = torch.log_softmax(dec(feats.float()), 1)
        return float(-logp.mean(1)[targets == 1].mean())

    before = ce_on_pastes(model.decoder)
    head, metrics, history = train_oe(model, oeset, cfg)
    assert ce_on_pastes(head.decoder) < before
    tuned = set(head.tuned_names())
    base_state = model.decoder.state_dict()
    for k, v in head.decoder.state_dict().items():
        same = torch.equal(v, base_state[k])
        assert same != (f"decoder.{k}" in tuned), k  # tuned weights moved, the rest did not
    assert metrics["steps"] == 6 and len(history) == 3


def test_oe_config_refuses_bad_values():
    with pytest.raises(InputError, match="stage"):
        OEConfig(stage="everything")
    with pytest.raises(InputError, match="crop"):
        OEConfig(crop=(60, 128))
    assert set(ERFNET_STAGES) == {"classifier", "last", "decoder"}


def _reference_auprc(root, kind: str, model: ERFNet, head) -> float:
    """Independent: torchvision resize, a fresh ERFNet (tuned weights copied in for oe), numpy
    statistics / entropy, the head's own layers for stats / features, sklearn AP."""
    import torch.nn.functional as F

    tf = Compose([Resize(SIZE, InterpolationMode.BILINEAR), ToTensor()])
    tl = Resize(SIZE, InterpolationMode.NEAREST)
    net = ERFNet().eval()
    net.load_state_dict(model.state_dict())
    if kind == "oe":
        net.load_state_dict({**net.state_dict(), **head.saved_tensors()})
    scores, labels = [], []
    for i in range(3):
        lab = np.array(tl(Image.open(root / "labels_masks" / f"{i}.png")))
        x = tf(Image.open(root / "images" / f"{i}.png")).unsqueeze(0)
        with torch.no_grad():
            f = net.encoder(x)
            z = net.decoder(f)[0].double().numpy()
        p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
        ent = -(p * np.log(np.maximum(p, 1e-300))).sum(0)
        if kind == "oe":
            s = ent / np.log(z.shape[0])
        else:
            stats = torch.from_numpy(np.stack([p.max(0), ent, p.sum(0), 1 - p.max(0)]))[None]
            x_in = stats.float()
            if kind == "features":
                proj = F.relu(head.proj(f))
                proj = F.interpolate(proj, size=SIZE, mode="bilinear", align_corners=False)
                x_in = torch.cat([x_in, proj], 1)
            with torch.no_grad():
                s = torch.sigmoid(head.eval().mlp(x_in))[0, 0].numpy()
        scores.append(np.asarray(s, np.float64).ravel())
        labels.append(lab.ravel())
    y, s = np.concatenate(labels), np.concatenate(scores)
    v = y != 255
    return float(average_precision_score(y[v] == 1, s[v]))


@pytest.mark.parametrize("kind", ["stats", "features", "oe"])
def test_cli_eval_scores_each_learned_kind_as_head_file(base, tmp_path, kind, capsys):
    model, ckpt, sha, root = base
    torch.manual_seed(11)
    if kind == "oe":
        head = _tuned_oe(model, "decoder")
    elif kind == "features":
        head = create_head("features", feat_dim=128)
    else:
        head = create_head("stats")
    path = tmp_path / f"{kind}.safetensors"
    save_head(head, path, model="erf", model_sha256=sha, base_checkpoint=str(ckpt))
    out = tmp_path / "rows.json"
    rc = main(
        ["eval", "--model", "erfnet", "--checkpoint", str(ckpt), "--dataset", str(root),
         "--methods", f"entropy,head:{path}", "--input-size", "64x128", "--out", str(out),
         "--no-progress", "--workers", "0"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    got = rows[f"head:{path}"]["auprc"]
    assert abs(got - _reference_auprc(root, kind, model, head)) < 1e-5
    assert got != rows["entropy"]["auprc"]


def test_cli_eval_refuses_an_oe_file_with_another_base(base, tmp_path, capsys):
    model, ckpt, sha, root = base
    path = tmp_path / "oe.safetensors"
    save_head(_tuned_oe(model), path, model="erf", model_sha256=sha, base_checkpoint=str(ckpt))
    from anomseg.models.checkpoints import save_checkpoint

    other = tmp_path / "other.safetensors"
    save_checkpoint(_erfnet(3), other, {"architecture": "erfnet"})
    rc = main(
        ["eval", "--model", "erfnet", "--checkpoint", str(other), "--dataset", str(root),
         "--methods", f"head:{path}", "--input-size", "64x128", "--no-progress"]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "sha256" in err and err.count("\n") == 1


def test_oe_scores_read_one_decoder_run_and_equal_their_definitions(base):
    from anomseg.prediction import Prediction

    model = base[0]
    head = _tuned_oe(model, "last")
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        feats = model.encoder(x)[0]
        z = head.decoder(feats[None])[0].double().numpy()
    pred = Prediction(logits=torch.zeros(20, 64, 128), features=feats)
    calls = []
    hook = head.decoder.register_forward_hook(lambda *a: calls.append(1))
    got = {s: head.scorer(s)(pred) for s in ("entropy", "maxlogit", "energy")}
    hook.remove()
    assert len(calls) == 1  # three scores, one run of the tuned decoder
    lse = z.max(0) + np.log(np.exp(z - z.max(0)).sum(0))
    p = np.exp(z - lse)
    want = {
        "entropy": -(p * np.log(p)).sum(0) / np.log(20),
        "maxlogit": -z.max(0),
        "energy": -lse,
    }
    for s, w in want.items():
        assert np.allclose(got[s], w, atol=1e-4), s
    other = Prediction(logits=torch.zeros(20, 64, 128), features=feats.clone() + 1)
    assert not np.allclose(head.scorer("maxlogit")(other), got["maxlogit"])  # no stale memo
    with pytest.raises(CheckpointError, match="score"):
        head.anomaly_map(pred, "msp")
