"""Dataset readers: layout, pairing, validation messages naming the file, remaps, resizing."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomseg.data import (
    BenchmarkDataset,
    CityscapesDataset,
    PairTensorDataset,
    SegmentationFolder,
    resize_pair,
)
from anomseg.data.classes import LABEL_ID_TO_TRAIN_ID
from anomseg.errors import DatasetError
from anomseg.imageio import array_sha256
from db.catalog import sha256_file

RNG = np.random.default_rng(1)


def _img(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _lab(h: int, w: int, values=(0, 1, 255)) -> np.ndarray:
    return RNG.choice(np.array(values, np.uint8), size=(h, w))


def make_benchmark(
    root: Path, n: int = 3, h: int = 24, w: int = 32, ext: str = "png", values=(0, 1, 255)
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    images, labels = [], []
    for i in range(n):
        im, lab = _img(h, w), _lab(h, w, values)
        Image.fromarray(im).save(root / "images" / f"{i}.{ext}")
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
        images.append(im)
        labels.append(lab)
    return images, labels


def test_reads_pairs_in_natural_order_and_ignores_junk(tmp_path):
    root = tmp_path / "bench"
    images, labels = make_benchmark(root, n=12)
    (root / "images" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "images" / "._3.png").write_bytes(b"AppleDouble")
    (root / "images" / "README.txt").write_text("not an image")
    ds = BenchmarkDataset(root)
    assert len(ds) == 12 and ds.name == "bench"
    assert ds.names == [str(i) for i in range(12)]  # 2 before 10
    for i in (0, 2, 11):
        im, lab, name = ds[i]
        assert name == str(i)
        assert np.array_equal(im, images[i]) and np.array_equal(lab, labels[i])


def test_jpg_and_webp_images_pair_with_png_labels(tmp_path):
    for ext in ("jpg", "webp"):
        root = tmp_path / ext
        make_benchmark(root, n=2, ext=ext)
        ds = BenchmarkDataset(root)
        assert ds.names == ["0", "1"] and ds[1][0].shape == (24, 32, 3)


def test_missing_root_names_it(tmp_path):
    p = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="dataset root not found") as e:
        BenchmarkDataset(p)
    assert str(p) in str(e.value)


def test_missing_labels_folder_names_it(tmp_path):
    root = tmp_path / "b"
    make_benchmark(root, n=1)
    (root / "labels_masks").rename(root / "labels")
    with pytest.raises(DatasetError, match="labels_masks") as e:
        BenchmarkDataset(root)
    assert str(root / "labels_masks") in str(e.value)


def test_no_images(tmp_path):
    root = tmp_path / "b"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    (root / "images" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetError, match="no images") as e:
        BenchmarkDataset(root)
    assert str(root / "images") in str(e.value)


def test_image_without_label_names_both(tmp_path):
    root = tmp_path / "b"
    make_benchmark(root, n=3)
    (root / "labels_masks" / "1.png").unlink()
    with pytest.raises(DatasetError, match="no label file") as e:
        BenchmarkDataset(root)
    assert str(root / "images" / "1.png") in str(e.value)
    assert str(root / "labels_masks" / "1.png") in str(e.value)


def test_label_of_another_size_names_both_sizes(tmp_path):
    root = tmp_path / "b"
    make_benchmark(root, n=2, h=24, w=32)
    Image.fromarray(_lab(30, 40)).save(root / "labels_masks" / "1.png")
    with pytest.raises(DatasetError, match="expected the same size") as e:
        BenchmarkDataset(root)
    msg = str(e.value)
    assert str(root / "labels_masks" / "1.png") in msg and "40x30" in msg and "32x24" in msg
    # also caught at read time when the cheap header check is skipped
    ds = BenchmarkDataset(root, check_sizes=False)
    with pytest.raises(DatasetError, match="40x30"):
        ds[1]


def test_unexpected_label_values_listed_and_remap_fixes_them(tmp_path):
    root = tmp_path / "b"
    _, labels = make_benchmark(root, n=1, values=(0, 2, 7, 255))
    ds = BenchmarkDataset(root)
    with pytest.raises(DatasetError, match="unexpected label values 2, 7") as e:
        ds[0]
    assert str(root / "labels_masks" / "0.png") in str(e.value)
    assert "remap" in str(e.value)
    ok = BenchmarkDataset(root, remap={2: 1, 7: 255})
    lab = ok[0][1]
    ref = labels[0].copy()
    ref[labels[0] == 2] = 1
    ref[labels[0] == 7] = 255
    assert np.array_equal(lab, ref)


def test_known_remap_by_folder_name(tmp_path):
    root = tmp_path / "RoadAnomaly"
    _, labels = make_benchmark(root, n=1, values=(0, 2, 255))
    ds = BenchmarkDataset(root)
    assert ds.remap == {2: 1}
    assert np.array_equal(ds[0][1], np.where(labels[0] == 2, 1, labels[0]))
    with pytest.raises(DatasetError, match="unexpected label values 2"):
        BenchmarkDataset(root, remap=None)[0]


def test_truncated_image_in_dataset_names_file(tmp_path):
    root = tmp_path / "b"
    make_benchmark(root, n=2, ext="jpg")
    p = root / "images" / "1.jpg"
    p.write_bytes(p.read_bytes()[:200])
    ds = BenchmarkDataset(root, check_sizes=False)
    with pytest.raises(DatasetError, match="truncated") as e:
        ds[1]
    assert str(p) in str(e.value)


def test_16bit_label_in_dataset_is_refused(tmp_path):
    root = tmp_path / "b"
    make_benchmark(root, n=1)
    p = root / "labels_masks" / "0.png"
    Image.fromarray(np.ones((24, 32), np.uint16)).save(p)
    with pytest.raises(DatasetError, match="16-bit") as e:
        BenchmarkDataset(root)[0]
    assert str(p) in str(e.value)


def test_resize_pair_and_tensor_wrapper(tmp_path):
    root = tmp_path / "b"
    images, labels = make_benchmark(root, n=2, h=30, w=50)
    ds = BenchmarkDataset(root, size=(16, 24))
    im, lab, _ = ds[0]
    assert im.shape == (16, 24, 3) and lab.shape == (16, 24)
    assert set(np.unique(lab)) <= set(np.unique(labels[0]))  # nearest: no new values
    # nearest sampling: every output pixel equals some input pixel of its row's source
    rows = (np.arange(16) + 0.5) * 30 / 16
    cols = (np.arange(24) + 0.5) * 50 / 24
    ref = labels[0][np.floor(rows).astype(int)][:, np.floor(cols).astype(int)]
    assert np.array_equal(lab, ref)
    wrapped = PairTensorDataset(BenchmarkDataset(root), (16, 24))
    im2, lab2, name, digest, hw = wrapped[1]
    # the image identity is its file's sha256 (what the store records), not a pixel hash
    file_bytes = (root / "images" / "1.png").read_bytes()
    assert name == "1" and hw == (30, 50) and digest == hashlib.sha256(file_bytes).hexdigest()
    assert digest == sha256_file(root / "images" / "1.png") != array_sha256(images[1])
    r_im, r_lab = resize_pair(images[1], labels[1], (16, 24))
    assert np.array_equal(im2, r_im) and np.array_equal(lab2, r_lab)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.integers(0, 255), min_size=1, max_size=5),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    remap=st.one_of(
        st.none(), st.dictionaries(st.integers(0, 255), st.sampled_from([0, 1, 255]), max_size=3)
    ),
    seed=st.integers(0, 2**16),
)
def test_benchmark_reader_property(values, shape, remap, seed):
    """Any 8-bit label either reads back exactly (after the remap) or raises DatasetError."""
    rng = np.random.default_rng(seed)
    lab = rng.choice(np.array(values, np.uint8), size=shape)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "prop"
        (root / "images").mkdir(parents=True)
        (root / "labels_masks").mkdir()
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(
            root / "images" / "a.png"
        )
        Image.fromarray(lab).save(root / "labels_masks" / "a.png")
        expected = lab.copy()
        for src, dst in (remap or {}).items():
            expected[lab == src] = dst
        bad = set(np.unique(expected).tolist()) - {0, 1, 255}
        ds = BenchmarkDataset(root, remap=remap)
        try:
            _, got, _ = ds[0]
        except DatasetError as exc:
            assert bad, f"refused a valid label: {exc}"
            assert str(root / "labels_masks" / "a.png") in str(exc)
            assert ", ".join(map(str, sorted(bad))) in str(exc)
        else:
            assert not bad, f"accepted label values {bad}"
            assert np.array_equal(got, expected)


# ---------------------------------------------------------------- Cityscapes / segmentation folder


def _make_cityscapes(root: Path, split: str = "val") -> list[np.ndarray]:
    ids = np.array([0, 7, 8, 11, 26, 33, 1, 24], np.uint8)
    label_ids = []
    for city, n in (("frankfurt", 2), ("lindau", 1)):
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        for i in range(n):
            stem = f"{city}_000000_{i:06d}"
            Image.fromarray(_img(16, 32)).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            )
            lab = RNG.choice(ids, size=(16, 32))
            Image.fromarray(lab).save(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            )
            label_ids.append(lab)
    return label_ids


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    label_ids = _make_cityscapes(tmp_path)
    ds = CityscapesDataset(tmp_path, split="val")
    assert len(ds) == 3 and ds.names[0] == "frankfurt_000000_000000"
    for i in range(3):
        _, lab, _ = ds[i]
        ref = np.vectorize(lambda v: LABEL_ID_TO_TRAIN_ID.get(int(v), 255))(label_ids[i])
        assert np.array_equal(lab, ref.astype(np.uint8))


def test_cityscapes_prefers_train_id_files_and_checks_them(tmp_path):
    _make_cityscapes(tmp_path)
    folder = tmp_path / "gtFine" / "val" / "lindau"
    tid = RNG.choice(np.array([0, 5, 18, 255], np.uint8), size=(16, 32))
    Image.fromarray(tid).save(folder / "lindau_000000_000000_gtFine_labelTrainIds.png")
    ds = CityscapesDataset(tmp_path)
    assert np.array_equal(ds[2][1], tid)
    bad = tid.copy()
    bad[0, 0] = 19
    p = folder / "lindau_000000_000000_gtFine_labelTrainIds.png"
    Image.fromarray(bad).save(p)
    with pytest.raises(DatasetError, match="unexpected label values 19") as e:
        CityscapesDataset(tmp_path)[2]
    assert str(p) in str(e.value)


def test_cityscapes_missing_pieces(tmp_path):
    with pytest.raises(DatasetError, match="Cityscapes images of split 'test'"):
        _make_cityscapes(tmp_path)
        CityscapesDataset(tmp_path, split="test")
    (tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000000_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="no label file") as e:
        CityscapesDataset(tmp_path)
    assert "lindau_000000_000000_leftImg8bit.png" in str(e.value)


def test_segmentation_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tid = RNG.choice(np.array([0, 3, 18, 255], np.uint8), size=(12, 20))
    Image.fromarray(_img(12, 20)).save(tmp_path / "images" / "s0.jpg")
    Image.fromarray(tid).save(tmp_path / "labels" / "s0.png")
    ds = SegmentationFolder(tmp_path)
    assert np.array_equal(ds[0][1], tid)
    Image.fromarray(np.full((12, 20), 40, np.uint8)).save(tmp_path / "labels" / "s0.png")
    with pytest.raises(DatasetError, match="trainIds"):
        ds[0]
