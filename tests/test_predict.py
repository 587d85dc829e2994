"""Predictor: one forward per image and size, a byte-bounded LRU cache, batch path = single path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import Compose, InterpolationMode, Resize, ToTensor

from anomseg.data import BenchmarkDataset
from anomseg.errors import InputError
from anomseg.imageio import resize_label
from anomseg.predict import PredictionCache, Predictor, resolve_device

RNG = np.random.default_rng(3)


class TinySeg(nn.Module):
    """A small conv net following the model contract; counts images seen by predict_batch."""

    arch = "tiny"
    num_classes = 4
    default_input_size = (24, 40)

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))
        self.calls = 0
        self.images = 0

    def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.images += x.shape[0]
        return {"logits": self.conv(x), "features": self.conv(x)[:, :2, ::2, ::2]}


def _img(h: int = 30, w: int = 50) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_output_equals_independent_seed_preprocessing():
    model = TinySeg()
    a = _img()
    pred = Predictor(model, device="cpu").predict(a)
    # the seed protocol, written independently: torchvision Resize on PIL, then ToTensor
    tf = Compose([Resize((24, 40), InterpolationMode.BILINEAR), ToTensor()])
    with torch.no_grad():
        ref = model.conv(tf(Image.fromarray(a)).unsqueeze(0))[0]
    assert pred.size == (24, 40) and pred.logits.dtype == torch.float32
    torch.testing.assert_close(pred.logits, ref, rtol=0, atol=1e-5)
    assert pred.features.shape == (2, 12, 20)
    assert pred.num_classes == 4 and pred.meta["image_size"] == (30, 50)
    # ordinary tensors, not inference-mode ones: usable in autograd later (head training)
    assert not pred.logits.is_inference()
    assert (pred.logits * torch.ones(1, requires_grad=True)).sum().requires_grad


def test_second_predict_does_not_call_the_model(tmp_path):
    model = TinySeg()
    p = Predictor(model, device="cpu")
    a = _img()
    Image.fromarray(a).save(tmp_path / "a.png")
    first = p.predict(a)
    assert model.calls == 1
    again = p.predict(a.copy())  # same pixels, other object
    via_path = p.predict(tmp_path / "a.png")
    via_pil = p.predict(Image.fromarray(a))
    assert model.calls == 1
    assert again is first and via_path is first and via_pil is first
    p2 = Predictor(model, device="cpu", input_size=(12, 20), cache=p.cache)
    assert p2.predict(a).size == (12, 20) and model.calls == 2  # other size: other entry


def test_models_with_other_weights_never_share_entries():
    cache = PredictionCache()
    a = _img()
    m0, m1 = TinySeg(seed=0), TinySeg(seed=1)
    r0 = Predictor(m0, device="cpu", cache=cache).predict(a)
    r1 = Predictor(m1, device="cpu", cache=cache).predict(a)
    assert m0.calls == 1 and m1.calls == 1 and len(cache) == 2
    assert not torch.equal(r0.logits, r1.logits)


def test_lru_is_bounded_in_bytes_and_evicts_least_recent():
    model = TinySeg()
    one = Predictor(model, device="cpu").predict(_img()).nbytes()
    model.calls = 0
    p = Predictor(model, device="cpu", cache_bytes=2 * one + one // 2)  # room for two
    a, b, c = _img(), _img(), _img()
    p.predict(a), p.predict(b)
    p.predict(a)  # a becomes most recent
    assert model.calls == 2
    p.predict(c)  # evicts b, the least recently used
    assert len(p.cache) == 2 and p.cache.nbytes <= p.cache.max_bytes
    p.predict(a), p.predict(c)
    assert model.calls == 3
    p.predict(b)
    assert model.calls == 4
    tiny = Predictor(model, device="cpu", cache_bytes=one - 1)
    tiny.predict(a), tiny.predict(a)
    assert len(tiny.cache) == 0 and model.calls == 6  # too big to keep: never stored


def test_batch_path_equals_single_path():
    images = [_img(), _img(20, 20), _img(), _img(64, 40)]
    single = [Predictor(TinySeg(), device="cpu").predict(im) for im in images]
    model = TinySeg()
    many = Predictor(model, device="cpu").predict_many(images + [images[0]], batch_size=3)
    assert model.calls == 2 and model.images == 4  # duplicate image ran once
    for s, m in zip(single, many, strict=False):
        torch.testing.assert_close(m.logits, s.logits, rtol=0, atol=1e-5)
    assert many[4] is many[0]


def test_native_size_groups_batches_by_shape():
    model = TinySeg()
    images = [_img(10, 12), _img(16, 8), _img(10, 12)]
    preds = Predictor(model, device="cpu", input_size="native").predict_many(images, batch_size=4)
    assert [p.size for p in preds] == [(10, 12), (16, 8), (10, 12)]
    assert model.calls == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_dataset_equals_predict(tmp_path, workers):
    root = tmp_path / "bench"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    labels = []
    for i in range(5):
        Image.fromarray(_img(36, 60)).save(root / "images" / f"{i}.png")
        lab = RNG.choice(np.array([0, 1, 255], np.uint8), size=(36, 60))
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
        labels.append(lab)
    ds = BenchmarkDataset(root)
    model = TinySeg()
    p = Predictor(model, device="cpu")
    out = list(p.predict_dataset(ds, batch_size=2, num_workers=workers))
    assert [n for n, _, _ in out] == ["0", "1", "2", "3", "4"]
    assert model.calls == 3
    ref = Predictor(TinySeg(), device="cpu")
    for i, (_, pred, lab) in enumerate(out):
        torch.testing.assert_close(
            pred.logits, ref.predict(root / "images" / f"{i}.png").logits, rtol=0, atol=1e-5
        )
        assert np.array_equal(lab, resize_label(labels[i], (24, 40)))
    # the same images through predict() now hit the cache filled by the dataset path
    p.predict(root / "images" / "3.png")
    assert model.calls == 3


def test_bad_arguments():
    with pytest.raises(InputError, match="device 'banana'"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="input size"):
        Predictor(TinySeg(), device="cpu", input_size=(0, 5))
    with pytest.raises(InputError, match="expected"):
        Predictor(TinySeg(), device="cpu").predict(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(InputError, match="batch size"):
        Predictor(TinySeg(), device="cpu").predict_many([_img()], batch_size=0)
