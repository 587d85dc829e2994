"""Anomaly heads: architecture (vs a numpy MLP), pixel path == map path, checkpoints, scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomseg.errors import CheckpointError, InputError
from anomseg.models.heads import (
    HEADS,
    FeatureHead,
    StatsHead,
    bilinear_corners,
    create_head,
    head_anomaly_map,
    load_head,
    read_head_metadata,
    save_head,
)


def numpy_mlp(head, x: np.ndarray) -> np.ndarray:
    """Independent per-pixel MLP: x (N, C) -> (N,) using the head's conv weights."""
    convs = [m for m in head.mlp if isinstance(m, torch.nn.Conv2d)]
    h = x.astype(np.float64)
    for i, c in enumerate(convs):
        w = c.weight.detach().double().numpy()[:, :, 0, 0]
        h = h @ w.T + c.bias.detach().double().numpy()
        if i < len(convs) - 1:
            h = np.maximum(h, 0)
    return h[:, 0]


def test_registry_and_sizes():
    assert HEADS.names() == ["features", "oe", "stats"]
    s = create_head("stats")
    # 4*64+64 + 64*32+32 + 32+1, counted by hand
    assert sum(p.numel() for p in s.parameters()) == 2433
    f = create_head("features", feat_dim=192)
    assert f.in_dim == 36
    assert f.proj.weight.shape == (32, 192, 1, 1)
    assert [m.p for m in s.mlp if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]


def test_stats_head_matches_numpy_mlp():
    torch.manual_seed(0)
    head = StatsHead().eval()
    x = torch.randn(2, 4, 5, 7)
    out = head(x)
    assert out.shape == (2, 1, 5, 7)
    ref = numpy_mlp(head, x.permute(0, 2, 3, 1).reshape(-1, 4).numpy())
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).reshape(-1).detach().numpy(), ref, atol=1e-5)
    px = head.forward_pixels(x.permute(0, 2, 3, 1).reshape(-1, 4))
    np.testing.assert_allclose(px.detach().numpy(), ref, atol=1e-5)


@pytest.mark.parametrize(
    "out_size,grid", [((16, 32), (4, 8)), ((37, 53), (5, 9)), ((6, 6), (6, 6))]
)
def test_bilinear_corners_reproduce_interpolate(out_size, grid):
    torch.manual_seed(1)
    g = torch.randn(1, 3, *grid)
    ref = F.interpolate(g, size=out_size, mode="bilinear", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.arange(out_size[0]), torch.arange(out_size[1]), indexing="ij")
    idx, w = bilinear_corners(ys.reshape(-1), xs.reshape(-1), out_size, grid)
    flat = g[0].reshape(3, -1)
    got = (flat[:, idx] * w.unsqueeze(0)).sum(-1).reshape(3, *out_size)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0]))


def test_feature_head_pixel_path_equals_map_path():
    torch.manual_seed(2)
    head = FeatureHead(feat_dim=12).eval()
    stats, feats = torch.rand(1, 4, 24, 40), torch.randn(1, 12, 3, 5)
    full = head(stats, feats)[0, 0]
    # independent map path: numpy projection + torch resize + numpy MLP
    w = head.proj.weight.detach().numpy()[:, :, 0, 0]
    proj = np.maximum(
        np.einsum("od,dhw->ohw", w, feats[0].numpy())
        + head.proj.bias.detach().numpy()[:, None, None],
        0,
    )
    proj = F.interpolate(
        torch.from_numpy(proj)[None], size=(24, 40), mode="bilinear", align_corners=False
    )[0]
    x = torch.cat([stats[0], proj]).reshape(36, -1).t().numpy()
    np.testing.assert_allclose(full.reshape(-1).detach().numpy(), numpy_mlp(head, x), atol=1e-4)
    # sampled pixels through the corner path
    ys, xs = torch.randint(0, 24, (50,)), torch.randint(0, 40, (50,))
    idx, cw = bilinear_corners(ys, xs, (24, 40), (3, 5))
    cells = feats[0].reshape(12, -1).t()  # (15 grid cells, 12)
    px = head.forward_pixels(stats[0][:, ys, xs].t(), cells, idx, cw)
    torch.testing.assert_close(px, full[ys, xs], atol=1e-5, rtol=1e-5)
    # whole-map scorer (chunked rows) agrees with the module
    amap = head_anomaly_map(head, stats[0], feats[0], rows_per_chunk=7)
    torch.testing.assert_close(amap, torch.sigmoid(full).detach(), atol=1e-6, rtol=1e-5)


def test_feature_head_without_features_is_a_clear_error():
    with pytest.raises(CheckpointError, match="patch features"):
        FeatureHead(feat_dim=8)(torch.rand(1, 4, 4, 4), None)
    with pytest.raises(CheckpointError, match="8-channel"):
        FeatureHead(feat_dim=8)(torch.rand(1, 4, 4, 4), torch.rand(1, 5, 2, 2))


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(3)
    head = FeatureHead(feat_dim=16).eval()
    path = tmp_path / "heads" / "v1.safetensors"
    digest = save_head(head, path, model="eomt_tiny", version=1)
    import hashlib

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    # no temp file left; a readable JSON copy of the metadata sits next to the weights
    assert sorted(p.name for p in path.parent.iterdir()) == ["v1.json", "v1.safetensors"]
    import json

    assert json.loads((path.parent / "v1.json").read_text())["kind"] == "features"
    meta = read_head_metadata(path)
    assert (meta["kind"], meta["in_dim"], meta["feat_dim"], meta["model"], meta["version"]) == (
        "features",
        36,
        16,
        "eomt_tiny",
        1,
    )
    loaded, _ = load_head(path, kind="features", model="eomt_tiny")
    assert not loaded.training
    stats, feats = torch.rand(1, 4, 8, 8), torch.randn(1, 16, 2, 2)
    torch.testing.assert_close(loaded(stats, feats), head(stats, feats))


def test_load_other_kind_and_garbage(tmp_path):
    p = tmp_path / "s.safetensors"
    save_head(StatsHead(), p, model="erfnet", version=3)
    with pytest.raises(
        CheckpointError, match=r"holds a 'stats' head.*'features' head was expected"
    ):
        load_head(p, kind="features")
    with pytest.raises(CheckpointError, match="trained for model 'erfnet'"):
        load_head(p, model="eomt_tiny")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_head(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="no anomseg head metadata"):
        load_head(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_head(tmp_path / "missing.safetensors")
    # metadata says stats but tensors are a feature head's -> weights mismatch, named
    import json

    fh = FeatureHead(feat_dim=4)
    meta = {"format": "anomseg-head/1", "kind": "stats", "in_dim": 4, "config": {}}
    forged = tmp_path / "forged.safetensors"
    save_file(
        {k: v.contiguous() for k, v in fh.state_dict().items()},
        str(forged),
        metadata={"anomseg": json.dumps(meta)},
    )
    with pytest.raises(CheckpointError, match="weights do not match a 'stats' head"):
        load_head(forged)


def test_head_scorer_reads_prediction():
    scoring = pytest.importorskip("anomseg.scoring")
    from anomseg.models.heads import head_scorer
    from anomseg.prediction import Prediction

    torch.manual_seed(4)
    pred = Prediction(logits=torch.randn(20, 12, 16))
    head = StatsHead().eval()
    amap = head_scorer(head)(pred)
    assert amap.dtype == np.float32 and amap.shape == (12, 16)
    stats = scoring.uncertainty_stats(pred)
    ref = torch.sigmoid(head(stats[None].float()))[0, 0].detach().numpy()
    np.testing.assert_allclose(amap, ref, atol=1e-6)
    assert ((amap > 0) & (amap < 1)).all()


def test_head_as_scoring_family(tmp_path):
    scoring = pytest.importorskip("anomseg.scoring")
    from anomseg.head_methods import HeadRef, HeadScorers
    from anomseg.models.heads import head_scorer, head_spec
    from anomseg.prediction import Prediction

    torch.manual_seed(5)
    head = StatsHead().eval()
    path = tmp_path / "v7.safetensors"
    save_head(head, path, model="m", version=7)
    heads = HeadScorers(lambda v: HeadRef(tmp_path / f"v{v}.safetensors", kind="stats"))
    pred = Prediction(logits=torch.randn(20, 9, 11))
    ref = head_scorer(head)(pred)
    extra = heads.specs(["msp", "head:7"])
    assert list(extra) == ["head:7"]
    np.testing.assert_allclose(scoring.score("head:7", pred, extra=extra), ref, atol=1e-6)
    assert scoring.parse_method("head:7", extra=extra) == ("head:7", {})
    with pytest.raises(InputError, match="not found"):
        heads.spec("head:8")
    spec = head_spec("head:x", FeatureHead(feat_dim=4))
    assert spec.needs == frozenset({"logits", "features"}) and not spec.applicable(pred)
    np.testing.assert_allclose(
        scoring.score("head:x", pred, extra={"head:x": head_spec("head:x", head)}), ref, atol=1e-6
    )
