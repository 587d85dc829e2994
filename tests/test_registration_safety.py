"""Issue 15 §2-§5: registering a model or dataset never re-points stored work silently.

* ``add-model NAME`` on an existing name is refused unless ``--replace``; a replace keeps the old
  heads attached to the old checkpoint (its row is retired under another name), and a running
  app's model cache follows the checkpoint hash, not the name.
* ``add-dataset --name EXISTING`` is refused: images' identity under existing flags never changes.
* Relative dataset roots and checkpoint paths are resolved to absolute paths at registration.
* Every role is validated like eval (truncated files, bombs, bad label values).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.hashing import file_sha256
from workbench.cli import main

DEMO = Path(__file__).resolve().parent.parent / "anomseg" / "assets" / "demo_models"


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def _variant(tmp_path: Path, name: str, delta: float) -> Path:
    """A copy of the demo ERFNet whose first tensor is shifted: same architecture, other hash."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = DEMO / "demo-erfnet.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    first = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[first] = tensors[first] + delta
    out = tmp_path / name
    save_file(tensors, str(out), metadata=meta)
    return out


def _ws(tmp_path):
    from workbench.workspace import Workspace

    return Workspace.open(tmp_path / "ws")


def _add_ready_head(ws, model: str) -> int:
    from anomseg.models.heads import StatsHead, save_head
    from db import catalog, heads

    ckpt = ws.heads_dir / model / "v1-stats.safetensors"
    with ws.store.session() as s:
        m = catalog.get_model(s, model)
        digest = save_head(StatsHead(), ckpt, model=model, model_sha256=m.checkpoint_sha256)
        hv = heads.create_head_version(s, m.id, "stats")
        heads.finish_head_version(s, hv.id, checkpoint_path=str(ckpt), checkpoint_sha256=digest)
        heads.activate_head(s, hv.id)
        return hv.id


# ============================================================================ §2 models


def test_add_model_on_an_existing_name_is_refused_unless_replace(tmp_path, capsys):
    from dashboard.services import Services
    from db import catalog, heads
    from db.models import HeadVersion

    a, b = _variant(tmp_path, "a.safetensors", 0.0), _variant(tmp_path, "b.safetensors", 0.5)
    sha_a, sha_b = file_sha256(a), file_sha256(b)
    assert sha_a != sha_b
    ws_dir = str(tmp_path / "ws")
    common = ["--arch", "erfnet", "--input-size", "128x256", "--workspace", ws_dir]
    assert _cli(capsys, "add-model", "m", "--checkpoint", str(a), *common)[0] == 0
    app = _ws(tmp_path)  # a running app on the same workspace
    try:
        head_id = _add_ready_head(app, "m")
        before = app.predictor("m")

        rc, text = _cli(capsys, "add-model", "m", "--checkpoint", str(b), *common)
        assert rc == 2 and "already registered" in text and "--replace" in text, text
        with app.store.read() as s:
            assert catalog.get_model(s, "m").checkpoint_sha256 == sha_a  # untouched

        rc, text = _cli(capsys, "add-model", "m", "--checkpoint", str(b), "--replace", *common)
        assert rc == 0, text
        with app.store.read() as s:
            new = catalog.get_model(s, "m")
            assert new.checkpoint_sha256 == sha_b
            assert heads.list_head_versions(s, new.id) == []  # no head of the old weights
            old_head = s.get(HeadVersion, head_id)
            old_model = old_head.model
            # the head stays with the checkpoint it was trained on, under the retired row
            assert old_model.checkpoint_sha256 == sha_a and old_model.name != "m"
            assert old_model.name in text
            assert heads.head_checkpoint_for(s, sha_a, 1)[0] == old_model.name
            with pytest.raises(Exception, match="no ready head"):
                heads.head_checkpoint_for(s, sha_b, 1)
        # the running app: no head offered for the new weights, and the new weights are loaded
        svc = Services(app)
        assert not [c for c in svc.scores.method_choices("m") if c.name.startswith("head:")]
        after = app.predictor("m")
        assert after is not before
        sd_before, sd_after = before.model.state_dict(), after.model.state_dict()
        changed = [k for k in sd_before if not np.array_equal(sd_before[k], sd_after[k])]
        assert len(changed) == 1, changed  # exactly the tensor the variant shifted
    finally:
        app.close()


def test_add_model_stores_an_absolute_checkpoint_path(tmp_path, capsys, monkeypatch):
    from db import catalog

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(DEMO / "demo-erfnet.safetensors", work / "rel.safetensors")
    monkeypatch.chdir(work)
    ws_dir = str(tmp_path / "ws")
    rc, text = _cli(
        capsys, "add-model", "m", "--arch", "erfnet", "--checkpoint", "rel.safetensors",
        "--input-size", "128x256", "--workspace", ws_dir,
    )  # fmt: skip
    assert rc == 0, text
    monkeypatch.chdir(tmp_path)  # load from another directory
    ws = _ws(tmp_path)
    try:
        with ws.store.read() as s:
            path = catalog.get_model(s, "m").checkpoint_path
        assert path == str(work / "rel.safetensors") and Path(path).is_absolute()
        ws.load_model("m")
    finally:
        ws.close()


# ============================================================================ §3-§5 datasets


def _benchmark(root: Path, seed: int, n: int = 2, size=(24, 32), label_values=(0, 1, 255)):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "images" / f"im{i}.png"
        )
        lab = rng.choice(np.array(label_values, np.uint8), size=size)
        Image.fromarray(lab).save(root / "labels_masks" / f"im{i}.png")
    return root


def _dataset_rows(tmp_path) -> dict:
    from db import catalog

    ws = _ws(tmp_path)
    try:
        with ws.store.read() as s:
            return {
                d.name: (d.root, {i.path: i.sha256 for i in catalog.list_images(s, d)})
                for d in catalog.list_datasets(s)
            }
    finally:
        ws.close()


def test_add_dataset_on_an_existing_name_is_refused(tmp_path, capsys):
    d1 = _benchmark(tmp_path / "d1", seed=1)
    d2 = _benchmark(tmp_path / "d2", seed=2)
    ws_dir = str(tmp_path / "ws")
    assert _cli(capsys, "add-dataset", str(d1), "--name", "x", "--workspace", ws_dir)[0] == 0
    before = _dataset_rows(tmp_path)
    for root in (d2, d1):  # another root, or the same one again
        rc, text = _cli(capsys, "add-dataset", str(root), "--name", "x", "--workspace", ws_dir)
        assert rc == 2 and "'x' is already registered" in text, text
    assert _dataset_rows(tmp_path) == before


def test_catalog_never_rewrites_image_identity(tmp_path):
    from anomseg.errors import InputError
    from db import catalog

    d1 = _benchmark(tmp_path / "d1", seed=1)
    ws = _ws(tmp_path)
    try:
        ws.register_benchmark("x", d1)
        with ws.store.session() as s:
            with pytest.raises(InputError, match="already registered with root"):
                catalog.register_dataset(s, "x", "eval", tmp_path)
        # the file changed on disk: re-registering it must not rewrite the stored hash
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(d1 / "images" / "im0.png")
        with ws.store.session() as s:
            ds = catalog.get_dataset(s, "x")
            old = catalog.get_image(s, ds, "images/im0.png").sha256
            with pytest.raises(InputError, match="changed since it was registered"):
                catalog.register_images(s, ds, [d1 / "images" / "im0.png"])
        with ws.store.read() as s:
            assert catalog.get_image(s, "x", "images/im0.png").sha256 == old
    finally:
        ws.close()


@pytest.mark.parametrize("how", ["child", "sibling", "dot"])
def test_add_dataset_resolves_relative_roots(tmp_path, capsys, monkeypatch, how):
    ds = _benchmark(tmp_path / "top" / "ds", seed=3)
    cwd, arg = {
        "child": (tmp_path / "top", "ds"),
        "sibling": (tmp_path / "top" / "other", "../ds"),
        "dot": (ds, "."),
    }[how]
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    rc, text = _cli(capsys, "add-dataset", arg, "--workspace", str(tmp_path / "ws"))
    assert rc == 0, text
    rows = _dataset_rows(tmp_path)
    assert list(rows) == ["ds"]
    root, images = rows["ds"]
    assert root == str(ds) and sorted(images) == ["images/im0.png", "images/im1.png"]


def _folder(root: Path, n: int = 2, size=(24, 32)) -> Path:
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "images" / f"im{i}.png"
        )
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("role", ["train", "synthetic", "heldout", "eval"])
@pytest.mark.parametrize("fault", ["truncated", "bomb", "label_values"])
def test_every_role_is_validated_like_eval(tmp_path, capsys, monkeypatch, role, fault):
    if fault == "label_values":
        root = _benchmark(tmp_path / "bad", seed=4, label_values=(0, 7, 200))
        expect = "unexpected label values 7, 200"
    else:
        root = _benchmark(tmp_path / "bad", seed=4) if role == "eval" else _folder(tmp_path / "bad")
        if fault == "truncated":
            _truncate(root / "images" / "im1.png")
            expect = "im1.png: image is truncated or corrupt"
        else:
            monkeypatch.setenv("ANOMSEG_MAX_PIXELS", "500")  # the 32x24 images are 768 px
            expect = "over the limit of 500"
    rc, text = _cli(
        capsys, "add-dataset", str(root), "--role", role, "--workspace", str(tmp_path / "ws")
    )
    assert rc == 2 and expect in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert _dataset_rows(tmp_path) == {}  # nothing stored


def test_a_pixel_bomb_in_a_train_dataset_is_one_line(tmp_path, capsys):
    """A real 20000x20000 PNG (a few hundred kB on disk): refused before it is decoded."""
    root = _folder(tmp_path / "bomb", n=1)
    Image.new("1", (20000, 20000)).save(root / "images" / "huge.png")
    rc, text = _cli(
        capsys, "add-dataset", str(root), "--role", "train", "--workspace", str(tmp_path / "ws")
    )
    assert rc == 2 and "huge.png" in text and "decompression bomb" in text, text
    assert "Traceback" not in text and "DecompressionBombError" not in text


@pytest.mark.realdata
def test_real_benchmark_registers_by_relative_root_and_once(shared, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(shared / "data" / "anomaly_val")
    ws_dir = str(tmp_path / "ws")
    rc, text = _cli(capsys, "add-dataset", "RoadAnomaly21", "--workspace", ws_dir)
    assert rc == 0, text
    rows = _dataset_rows(tmp_path)
    root, images = rows["RoadAnomaly21"]
    assert root == str((shared / "data" / "anomaly_val" / "RoadAnomaly21").resolve())
    assert len(images) == 10
    rc, text = _cli(capsys, "add-dataset", "fs_static", "--name", "RoadAnomaly21",
                    "--workspace", ws_dir)  # fmt: skip
    assert rc == 2 and "already registered" in text
    assert _dataset_rows(tmp_path) == rows
