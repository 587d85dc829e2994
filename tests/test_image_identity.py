"""One image identity through store and Predictor: the sha256 of the image file.

The store keys an image by its file's sha256 (``db.catalog.sha256_file``); the Predictor's cache,
``Prediction.meta["image_sha256"]`` and the dataset pass use the same value, so an image scored
from a path, from a dataset pass or from an array read by the app (with the store's hash) is
one cache entry and one forward."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image
from torch import nn

from anomseg.data import BenchmarkDataset
from anomseg.imageio import array_sha256, read_image
from anomseg.predict import Predictor
from db.catalog import sha256_file


class Net(nn.Module):
    arch, num_classes, default_input_size = "identity-net", 3, (16, 24)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def predict_batch(self, x):
        return {"logits": self.conv(x)}


def _bench(root, n=3):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        lab = np.zeros((20, 30), np.uint8)
        lab[5:9, 5:9] = 1
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
    return BenchmarkDataset(root)


def test_path_dataset_pass_and_array_with_store_hash_share_one_forward(tmp_path):
    ds = _bench(tmp_path / "b")
    path = tmp_path / "b" / "images" / "1.png"
    store_hash = sha256_file(path)  # what db.catalog.add_images records as Image.sha256
    assert store_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    p = Predictor(Net(), device="cpu")
    passed = {name: pred for name, pred, _ in p.predict_dataset(ds)}
    assert p.forward_calls == 3
    assert passed["1"].meta["image_sha256"] == store_hash
    by_path = p.predict(path)
    by_array = p.predict(read_image(path), image_sha256=store_hash)  # the app's Compare view
    assert p.forward_calls == 3  # both served by the dataset pass's entry
    assert by_path is passed["1"] and by_array is passed["1"]


def test_an_image_that_never_was_a_file_is_named_by_its_pixels(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    p = Predictor(Net(), device="cpu")
    pred = p.predict(rgb)
    assert pred.meta["image_sha256"] == array_sha256(rgb)
    assert p.predict(rgb.copy()) is pred and p.forward_calls == 1
    # written to a file, the same pixels are still one forward; a file scored first takes the
    # file's identity (as the store records it)
    Image.fromarray(rgb).save(tmp_path / "u.png")
    assert p.predict(tmp_path / "u.png") is pred and p.forward_calls == 1
    fresh = Predictor(Net(), device="cpu")
    assert fresh.predict(tmp_path / "u.png").meta["image_sha256"] == sha256_file(tmp_path / "u.png")


def test_a_probe_by_path_is_reused_by_the_dataset_pass(tmp_path):
    # the evaluate job probes the first image (which methods apply) before the dataset pass
    ds = _bench(tmp_path / "b")
    p = Predictor(Net(), device="cpu")
    probe = p.predict(ds.samples[0].image_path)
    passed = {name: pred for name, pred, _ in p.predict_dataset(ds)}
    assert passed["0"] is probe and p.forward_calls == 3  # 1 probe + the 2 other images
