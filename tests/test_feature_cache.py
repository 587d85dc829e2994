"""Feature cache: lattice sub-sampling, layout, reuse, atomic writes, corruption recovery."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from anomseg.prediction import Prediction
from training.features import FeatureCache, lattice_coords

SIZE = (10, 14)


@pytest.fixture
def fake_scoring(monkeypatch):
    """Stats = first 4 logit channels: lets the test know exactly what should be cached."""
    mod = types.ModuleType("anomseg.scoring")
    mod.uncertainty_stats = lambda pred: pred.logits[:4].clone()
    monkeypatch.setitem(sys.modules, "anomseg.scoring", mod)


def make_pred(seed: int, size=SIZE, feat=True) -> Prediction:
    g = torch.Generator().manual_seed(seed)
    logits = torch.rand(6, *size, generator=g)
    features = torch.randn(8, 2, 3, generator=g) if feat else None
    return Prediction(logits=logits, features=features)


def test_put_load_roundtrip_and_layout(tmp_path):
    cache = FeatureCache.for_workspace(tmp_path, stride=2)
    stats = torch.rand(4, *SIZE)
    feats = torch.randn(8, 2, 3)
    cache.put("m" * 64, "ab" + "c" * 62, SIZE, stats, feats)
    path = (
        tmp_path
        / "cache/features"
        / ("m" * 16)
        / "10x14-s2"
        / "ab"
        / ("ab" + "c" * 62 + ".safetensors")
    )
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    got = cache.load("m" * 64, "ab" + "c" * 62, SIZE)
    # exact pixels at rows/cols 1, 3, 5, ... (independent numpy slicing), stored as float16
    ref = stats.numpy()[:, 1::2, 1::2].astype(np.float16)
    np.testing.assert_array_equal(got.stats.numpy(), ref)
    np.testing.assert_array_equal(got.features.numpy(), feats.numpy().astype(np.float16))
    ys, xs = got.coords()
    assert ys.tolist() == [1, 3, 5, 7, 9] and xs.tolist() == [1, 3, 5, 7, 9, 11, 13]
    assert lattice_coords((5, 5), 1)[0].tolist() == [0, 1, 2, 3, 4]
    assert lattice_coords((9, 9), 4)[0].tolist() == [2, 6]


def test_get_or_compute_reuses_and_keys(tmp_path, fake_scoring):
    cache = FeatureCache(tmp_path / "c")
    calls = []

    def compute(seed=0, size=SIZE):
        calls.append(seed)
        return make_pred(seed, size)

    a = cache.get_or_compute("model1", "img1", SIZE, compute)
    b = cache.get_or_compute("model1", "img1", SIZE, compute)
    assert calls == [0] and (cache.counters.hits, cache.counters.misses) == (1, 1)
    torch.testing.assert_close(a.stats, b.stats)
    np.testing.assert_array_equal(
        b.stats.numpy(), make_pred(0).logits[:4].numpy()[:, 1::2, 1::2].astype(np.float16)
    )
    # any key part changing recomputes
    cache.get_or_compute("model2", "img1", SIZE, lambda: compute(1))
    cache.get_or_compute("model1", "img2", SIZE, lambda: compute(2))
    cache.get_or_compute("model1", "img1", (12, 14), lambda: compute(3, (12, 14)))
    assert calls == [0, 1, 2, 3]
    # a second cache object on the same folder (a retrain, another process) reuses everything
    again = FeatureCache(tmp_path / "c")
    again.get_or_compute("model1", "img1", SIZE, lambda: compute(9))
    assert calls == [0, 1, 2, 3] and again.counters.hits == 1
    # a prediction of the wrong size is refused
    with pytest.raises(ValueError, match="size"):
        cache.get_or_compute("model1", "img9", SIZE, lambda: make_pred(0, (4, 4)))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "moved"])
def test_corrupt_entry_is_recomputed(tmp_path, fake_scoring, damage):
    cache = FeatureCache(tmp_path)
    cache.get_or_compute("m", "img", SIZE, lambda: make_pred(0))
    path = cache.path("m", "img", SIZE)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 7]))
    elif damage == "flip":
        data[-3] ^= 0xFF  # inside the tensor bytes: header still parses, checksum does not
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:  # an entry of another image copied under this key
        cache.get_or_compute("m", "other", SIZE, lambda: make_pred(5))
        path.write_bytes(cache.path("m", "other", SIZE).read_bytes())
    calls = []
    got = cache.get_or_compute("m", "img", SIZE, lambda: calls.append(1) or make_pred(0))
    assert calls == [1] and cache.counters.corrupt == 1
    np.testing.assert_array_equal(
        got.stats.numpy(), make_pred(0).logits[:4].numpy()[:, 1::2, 1::2].astype(np.float16)
    )
    assert cache.load("m", "img", SIZE) is not None  # rewritten intact


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch as st

    cache = FeatureCache(tmp_path)

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.put("m", "img", SIZE, torch.rand(4, *SIZE))
    assert list(tmp_path.rglob("*")) == [] or all(p.is_dir() for p in tmp_path.rglob("*"))


def test_pixel_model_without_features(tmp_path, fake_scoring):
    cache = FeatureCache(tmp_path, stride=1)
    got = cache.get_or_compute("m", "i", SIZE, lambda: make_pred(0, feat=False))
    assert got.features is None and tuple(got.stats.shape) == (4, *SIZE)
    assert cache.load("m", "i", SIZE).features is None
