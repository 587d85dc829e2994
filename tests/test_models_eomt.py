"""EoMT: official key/shape schema, sliding-window inference, masked-attention annealing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomseg.models import create_model, get_model_entry, load_checkpoint

# schema entry -> registered name whose defaults must reproduce it
SCHEMA_NAMES = {
    "cityscapes_semantic_eomt_large_1024": "eomt_vit_large_1024",
    "coco_panoptic_eomt_small_640_2x": "eomt_vit_small_640",
    "cityscapes_semantic_eomt_base_640": "eomt_vit_base_640",
}


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("eomt_tiny", **kw)


def unit_layerscale(model):
    # DINOv2 initialises LayerScale at 1e-5: a random model would hide every effect we test
    for blk in model.encoder.backbone.blocks:
        blk.ls1.gamma.data.fill_(1.0)
        blk.ls2.gamma.data.fill_(1.0)
    return model


@pytest.mark.realdata
@pytest.mark.parametrize("entry", sorted(SCHEMA_NAMES))
def test_official_state_dict_schema(shared, entry):
    spec = json.loads((shared / "schemas" / "eomt_official_state_dicts.json").read_text())[entry]
    name = SCHEMA_NAMES[entry]
    d = get_model_entry(name).defaults
    assert d["backbone"] == spec["backbone"] and list(d["img_size"]) == spec["img_size"]
    assert (d["num_classes"], d["num_q"]) == (spec["num_classes"], spec["num_q"])
    assert spec["patch_size"] == 16 and spec["num_blocks"] == 4
    with torch.device("meta"):
        model = create_model(name)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k.removeprefix("network."): list(s) for k, s in spec["state_dict"].items()}
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want


def test_official_format_checkpoint_loads_strictly(tmp_path):
    src = tiny(img_size=(32, 64))
    path = tmp_path / "pytorch_model.bin"
    torch.save({f"network.{k}": v for k, v in src.state_dict().items()}, path)
    torch.manual_seed(1)
    dst = create_model("eomt_tiny", img_size=(32, 64), checkpoint=path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_non_square_image_gives_outputs_of_its_size():
    model = tiny()
    x = torch.rand(1, 3, 200, 420)
    out = model.predict_batch(x)
    assert out["logits"].shape == (1, 19, 200, 420)
    assert out["pixel_class_logits"].shape == (1, 19, 200, 420)
    # 200x420 scaled by 256/200 -> 256x538: two 256x512 windows, features on the 16x34 grid
    assert out["features"].shape == (1, 192, 16, 34)
    assert "mask_logits" not in out and "class_logits" not in out
    # class scores are sums of sigmoid x softmax over 50 queries: in [0, 50]
    assert out["logits"].min() >= 0 and out["logits"].sum(1).max() <= 50


def test_single_window_scores_match_brute_force():
    model = tiny(img_size=(32, 64), num_q=6)
    x = torch.rand(2, 3, 32, 64)
    out = model.predict_batch(x)
    ml, cl = out["mask_logits"], out["class_logits"]
    assert ml.shape == (2, 6, 8, 16) and cl.shape == (2, 6, 20)
    m = torch.sigmoid(F.interpolate(ml, (32, 64), mode="bilinear")).numpy().astype(np.float64)
    c = cl.numpy().astype(np.float64)
    p = np.exp(c - c.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want_scores = np.zeros((2, 19, 32, 64))
    want_raw = np.zeros((2, 19, 32, 64))
    for b in range(2):
        for k in range(19):
            for q in range(6):
                want_scores[b, k] += m[b, q] * p[b, q, k]
                want_raw[b, k] += m[b, q] * c[b, q, k]
    np.testing.assert_allclose(out["logits"].numpy(), want_scores, atol=1e-5)
    np.testing.assert_allclose(out["pixel_class_logits"].numpy(), want_raw, atol=1e-4)


def test_sliding_windows_are_averaged_over_overlap():
    model = tiny(img_size=(32, 64), num_q=6)
    x = torch.rand(1, 3, 32, 100)  # no resize needed; windows at columns 0 and 36
    out = model.predict_batch(x)
    left = model.predict_batch(x[..., :64])
    right = model.predict_batch(x[..., 36:])
    for key in ("logits", "pixel_class_logits"):
        full, a, b = out[key], left[key], right[key]
        torch.testing.assert_close(full[..., :36], a[..., :36], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full[..., 64:], b[..., 28:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            full[..., 36:64], (a[..., 36:] + b[..., :28]) / 2, atol=1e-5, rtol=1e-5
        )


def _masked_setup(prob: float):
    model = unit_layerscale(tiny(img_size=(32, 64), num_q=4))
    vit = model.encoder.backbone
    n_pre, q = vit.num_prefix_tokens, model.num_q
    n = q + n_pre + 8  # 2x4 patch grid
    mask_logits = torch.full((1, q, 8, 16), -5.0)
    mask_logits[0, 0, :, :8] = 5.0  # query 0 predicts the left half: patch columns 0 and 1
    mask_logits[0, 2] = 5.0  # query 2 predicts everything
    mask = model._attn_mask(mask_logits, n, prob)
    patch = [q + n_pre + r * 4 + col for r in range(2) for col in range(4)]
    outside = [t for i, t in enumerate(patch) if i % 4 >= 2]
    return model, vit.blocks[-1], n, mask, patch, outside


@torch.no_grad()
def test_masked_attention_at_probability_one_blocks_patches_outside_the_mask():
    model, block, n, mask, patch, outside = _masked_setup(1.0)
    torch.manual_seed(2)
    x = torch.randn(1, n, 192)
    x_out = x.clone()
    x_out[0, outside] += 3 * torch.randn(len(outside), 192)
    x_all = x.clone()
    x_all[0, patch] += 3 * torch.randn(len(patch), 192)
    y, y_out, y_all = (model._block(block, t, mask) for t in (x, x_out, x_all))
    torch.testing.assert_close(y_out[0, 0], y[0, 0])  # query 0 never sees its right half
    torch.testing.assert_close(y_all[0, 1], y[0, 1])  # query 1 (empty mask) sees no patch
    assert not torch.allclose(y_all[0, 0], y[0, 0], atol=1e-3)  # but it does see its own half
    assert not torch.allclose(y_out[0, 2], y[0, 2], atol=1e-3)  # query 2's mask is everywhere
    assert not torch.allclose(y_out[0, patch[0]], y[0, patch[0]], atol=1e-3)  # patches: global


@torch.no_grad()
def test_masked_attention_at_probability_zero_is_not_applied():
    model, block, n, mask, patch, outside = _masked_setup(0.0)
    assert mask.all()
    torch.manual_seed(2)
    x = torch.randn(1, n, 192)
    x_out = x.clone()
    x_out[0, outside] += 3 * torch.randn(len(outside), 192)
    y, y_out = model._block(block, x, mask), model._block(block, x_out, mask)
    assert not torch.allclose(y_out[0, 0], y[0, 0], atol=1e-3)
    # an all-True mask is the same as no mask (forward skips the mask at probability 0)
    torch.testing.assert_close(model._block(block, x, None), y)


def test_intermediate_probability_drops_the_mask_for_that_share_of_queries():
    model = tiny(img_size=(32, 64), num_q=50)
    n = 50 + model.encoder.backbone.num_prefix_tokens + 8
    torch.manual_seed(3)
    mask = model._attn_mask(torch.full((100, 50, 8, 16), -1.0), n, 0.3)
    dropped = mask[:, :50, -8:].all(-1).float().mean().item()  # rows that attend everywhere
    assert abs(dropped - 0.7) < 0.03


@torch.no_grad()
def test_forward_reads_the_annealing_buffer_and_matches_timm_blocks_without_mask():
    model = unit_layerscale(tiny(img_size=(32, 64), num_q=6))
    x = torch.rand(2, 3, 32, 64)
    model.attn_mask_probs.fill_(1.0)
    masked = model(x)
    model.attn_mask_probs.fill_(0.0)
    plain = model(x)
    assert not torch.allclose(masked[1], plain[1], atol=1e-3)

    # reference: timm's own Block.forward, queries entering before the last 4 blocks
    vit = model.encoder.backbone
    t = (x - model.encoder.pixel_mean) / model.encoder.pixel_std
    t = vit._pos_embed(vit.patch_embed(t))
    for i, blk in enumerate(vit.blocks):
        if i == len(vit.blocks) - 4:
            t = torch.cat([model.q.weight[None].expand(2, -1, -1), t], 1)
        t = blk(t)
    t = vit.norm(t)
    torch.testing.assert_close(plain[1], model.class_head(t[:, :6]), atol=1e-4, rtol=1e-4)
    feats = t[:, 6 + vit.num_prefix_tokens :].transpose(1, 2).reshape(2, 192, 2, 4)
    torch.testing.assert_close(plain[2], feats, atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip_keeps_annealing_buffer(tmp_path):
    from anomseg.models import save_checkpoint

    src = tiny(img_size=(32, 64), num_q=6)
    src.attn_mask_probs.copy_(torch.tensor([0.0, 0.1, 0.5, 1.0]))
    path = save_checkpoint(src, tmp_path / "tiny.safetensors", {"arch": "eomt_tiny"})
    dst = create_model("eomt_tiny", img_size=(32, 64), num_q=6)
    assert load_checkpoint(dst, path) == {"arch": "eomt_tiny"}
    assert dst.attn_mask_probs.tolist() == pytest.approx([0.0, 0.1, 0.5, 1.0])
