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
    "cityscapes_semantic_eomt_base_seed_1024": "eomt_vit_base_seed_1024",
}
SETTINGS = ("backbone", "num_classes", "num_q", "num_blocks", "patch_size")


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
    assert spec["patch_size"] == 16 and d["num_blocks"] == spec["num_blocks"]
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


def _schema(shared) -> dict:
    data = json.loads((shared / "schemas" / "eomt_official_state_dicts.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _lightning(network_state: dict, empty_weight: torch.Tensor) -> dict:
    """What EoMT's Lightning module saves: everything under state_dict, the criterion beside."""
    state = {f"network.{k.removeprefix('network.')}": v for k, v in network_state.items()}
    state["criterion.empty_weight"] = empty_weight
    return {"state_dict": state, "epoch": 3, "global_step": 1200, "lr_schedulers": []}


@pytest.mark.realdata
def test_registry_names_cover_the_schema(shared):
    assert sorted(SCHEMA_NAMES) == sorted(_schema(shared))


@pytest.mark.realdata
@pytest.mark.parametrize("entry", sorted(SCHEMA_NAMES))
@pytest.mark.parametrize("layout", ["ckpt", "bin"])
def test_every_schema_entry_loads_strictly_with_its_variant_read_off_the_file(
    shared, tmp_path, entry, layout
):
    """A file with exactly the schema's keys and shapes (meta tensors: no weights to download,
    nothing to allocate) loads strictly as ``eomt`` and as its shortcut, in both Lightning layouts
    (``.ckpt`` with a state_dict wrapper, ``.bin`` of the module), criterion buffer dropped."""
    spec = _schema(shared)[entry]
    net = {k: torch.empty(shape, device="meta") for k, shape in spec["state_dict"].items()}
    empty_weight = torch.empty(spec["num_classes"] + 1, device="meta")
    path = tmp_path / f"{entry}.{layout}"
    ckpt = _lightning(net, empty_weight)
    torch.save(ckpt if layout == "ckpt" else ckpt["state_dict"], path)
    for name in ("eomt", SCHEMA_NAMES[entry]):
        with torch.device("meta"):
            model = create_model(name, checkpoint=path)
        assert model.img_size == tuple(spec["img_size"]) and model.num_blocks == spec["num_blocks"]
        assert (model.num_q, model.num_classes) == (spec["num_q"], spec["num_classes"])
        got = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert got == {k.removeprefix("network."): list(s) for k, s in spec["state_dict"].items()}
        assert not any(k.startswith("criterion") for k in got)
    # the shortcut's input size is the one the variant read off the file gets
    assert model.default_input_size == get_model_entry(SCHEMA_NAMES[entry]).defaults["input_size"]


@pytest.mark.realdata
def test_a_checkpoint_of_another_variant_names_the_mismatching_shapes(shared, tmp_path):
    from anomseg.errors import CheckpointError

    spec = _schema(shared)["cityscapes_semantic_eomt_base_seed_1024"]
    net = {k: torch.empty(shape, device="meta") for k, shape in spec["state_dict"].items()}
    path = tmp_path / "seed.ckpt"
    torch.save(_lightning(net, torch.empty(20, device="meta")), path)
    with torch.device("meta"):
        model = create_model("eomt_vit_large_1024")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    msg = str(err.value)
    assert "'eomt_vit_large_1024'" in msg and "nothing was loaded" in msg
    assert "attn_mask_probs (3,) vs model (4,)" in msg
    per_block = sum(k.startswith("network.encoder.backbone.blocks.0.") for k in spec["state_dict"])
    # ViT-B has 12 of ViT-L's 24 blocks
    assert f"missing keys ({12 * per_block}): encoder.backbone.blocks.12." in msg
    assert "criterion" not in msg  # the training module's buffers are not the model's


@pytest.mark.parametrize("name", ["eomt_vit_large_1024", "eomt_vit_base_seed_1024",
                                  "eomt_vit_small_640", "eomt_tiny"])  # fmt: skip
def test_lightning_ckpt_of_each_registered_variant_predicts_like_the_plain_state_dict(
    tmp_path, name
):
    """Each variant's queries, classes and query blocks at a width of 64 and 32x64 windows
    (real widths would cost minutes of CPU): the Lightning .ckpt and the official plain
    ``pytorch_model.bin`` give bit-identical predictions, as the shortcut and as ``eomt``."""
    d = get_model_entry(name).defaults
    small = {"img_size": (32, 64), "input_size": (32, 64), "embed_dim": 64, "num_heads": 1,
             "depth": d.get("num_blocks", 4) + 1}  # fmt: skip
    torch.manual_seed(3)
    src = unit_layerscale(create_model(name, **small))
    src.attn_mask_probs.fill_(1.0)
    plain, ckpt = tmp_path / "pytorch_model.bin", tmp_path / "last.ckpt"
    torch.save({f"network.{k}": v for k, v in src.state_dict().items()}, plain)
    torch.save(_lightning(src.state_dict(), torch.ones(d["num_classes"] + 1)), ckpt)
    x = torch.rand(1, 3, 40, 100)  # rescaled to 32x80: two windows
    want = create_model(name, checkpoint=plain, **small).predict_batch(x)
    for model in (
        create_model(name, checkpoint=ckpt, **small),
        create_model("eomt", checkpoint=ckpt),
    ):
        assert (model.num_q, model.num_classes, model.num_blocks) == (
            src.num_q,
            src.num_classes,
            src.num_blocks,
        )
        got = model.predict_batch(x)
        for key in ("logits", "features"):
            assert torch.equal(got[key], want[key]), key


def test_non_eomt_file_as_eomt_is_one_clear_error(tmp_path):
    from anomseg.errors import CheckpointError

    torch.manual_seed(0)
    path = tmp_path / "erfnet.pth"
    torch.save(create_model("erfnet").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"not an EoMT checkpoint \(no 'q.weight'"):
        create_model("eomt", checkpoint=path)


def test_window_starts_truncate_like_the_official_inference():
    model = tiny(img_size=(32, 64), num_q=4)
    for width in (100, 151, 200, 317, 64):
        (hs, ws), origins = model.windows(32, width)
        n = -(-width // 64)
        overlap = n * 64 - width
        per = overlap / (n - 1) if overlap > 0 else 0
        assert [o[1] for o in origins] == [int(j * (64 - per)) for j in range(n)]
    assert [o[1] for o in model.windows(32, 151)[1]] == [0, 43, 87]  # round() would give 44


@pytest.mark.parametrize("src,dst", [((256, 512), (160, 320)), ((90, 120), (128, 171)),
                                     ((180, 320), (83, 148))])  # fmt: skip
def test_rescale_is_within_one_grey_level_of_pil(src, dst):
    from PIL import Image

    from anomseg.models.eomt import EoMT

    im = np.random.default_rng(1).integers(0, 256, (*src, 3), dtype=np.uint8)
    x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
    pil = np.asarray(Image.fromarray(im).resize(dst[::-1], Image.BILINEAR)).astype(np.float64)
    ours = EoMT.rescale(x, dst)[0].permute(1, 2, 0).double().numpy() * 255
    assert np.abs(ours - pil).max() <= 1.0 + 1e-4
    if dst[0] < src[0]:  # plain bilinear aliases when shrinking: the test tells them apart
        plain = F.interpolate(x, dst, mode="bilinear")[0].permute(1, 2, 0).double().numpy() * 255
        assert np.abs(plain - pil).max() > 10


@pytest.mark.realdata
@pytest.mark.parametrize("which", ["fs_static", "road_anomaly21"])
def test_rescale_of_real_images_is_within_one_grey_level_of_pil(request, which):
    """Fishyscapes 2048x1024 -> 1280x640 and RoadAnomaly21 1280x720 -> 512x288, every image."""
    from PIL import Image

    from anomseg.imageio import read_image
    from anomseg.models.eomt import EoMT

    root = request.getfixturevalue(which)
    paths = sorted(p for p in (root / "images").iterdir() if p.suffix in (".jpg", ".png"))
    assert len(paths) >= 10
    for path in paths:
        im = np.array(read_image(path))
        size = (640, 1280) if im.shape[0] == 1024 else (288, 512)
        x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
        pil = np.asarray(Image.fromarray(im).resize(size[::-1], Image.BILINEAR)).astype(float)
        ours = EoMT.rescale(x, size)[0].permute(1, 2, 0).double().numpy() * 255
        assert np.abs(ours - pil).max() <= 1.0 + 1e-4, path.name
        plain = F.interpolate(x, size, mode="bilinear")[0].permute(1, 2, 0).double().numpy()
        assert np.abs(plain * 255 - pil).max() > 10, path.name  # what plain bilinear was off by
