"""Curate's sample list shows each sample's own picture as a thumbnail, from its render cache.

Independent check: the thumbnail (decoded from the list's ``<img>``) against an area-average
shrink of the render-cache PNG computed here with numpy; it must be close to its own sample's
picture and clearly farther from the others'.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = (64, 128)


class _Workspace:
    """The surface of workbench.workspace.Workspace the Curate service reads."""

    def __init__(self, root: Path) -> None:
        from db import Store

        self.root = root
        self.cache_dir = root / "cache"
        self.uploads_dir = root / "uploads"
        self.heads_dir = root / "heads"
        self.renders_dir = self.cache_dir / "renders"
        for d in (self.cache_dir, self.uploads_dir, self.heads_dir, self.renders_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(workspace=root)
        self.demo_size = SIZE


@pytest.fixture(scope="module")
def curate(tmp_path_factory):
    from anomseg.synth.placement import PlacementConfig, propose
    from anomseg.world.objects import ObjectBank
    from anomseg.world.scenes import generate_scene
    from dashboard.services import Services
    from db import catalog, pastes

    tmp_path = tmp_path_factory.mktemp("thumbs")
    ws = _Workspace(tmp_path)
    (tmp_path / "data").mkdir()
    bank = ObjectBank()
    cfg = PlacementConfig(height_bottom=0.4, area_ratio=(0.002, 0.3))
    scenes = []
    for seed in (31, 32, 33):
        bg = generate_scene(seed, SIZE)
        recs, _why = propose(bg, bank, 2, cfg, seed=seed)
        assert recs, "the placement should find room on a procedural road"
        scenes.append((bg.id, {f"p{k}": r.to_dict() for k, r in enumerate(recs)}))

    def setup(s):
        syn = catalog.register_dataset(s, "thumb-synth", "synthetic", tmp_path / "data")
        return [int(pastes.create_sample(s, syn.id, bid, recs).id) for bid, recs in scenes]

    ids = ws.store.transact(setup)
    svc = Services(ws)
    for sid in ids[:2]:  # the third sample has no render cache yet
        svc.curate.refresh_render_cache(sid)
    yield svc.curate, ids, ws
    ws.store.close()


def _decode(cell: str) -> np.ndarray:
    m = re.search(r'src="data:image/jpeg;base64,([^"]+)"', cell)
    assert m, f"no data-URI <img> in {cell[:80]!r}"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB"))


def _area_shrink(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mean of each output pixel's source block (sizes divide here: 64x128 -> 32x64 etc.)."""
    h, w = size
    fh, fw = rgb.shape[0] // h, rgb.shape[1] // w
    return rgb[: h * fh, : w * fw].reshape(h, fh, w, fw, 3).mean(axis=(1, 3))


def _cache_picture(ws, sid) -> np.ndarray:
    from db import pastes as dbpastes

    with ws.store.read() as s:
        path = dbpastes.get_sample(s, sid).render["image"]
    return np.asarray(Image.open(path).convert("RGB"))


def test_each_listed_sample_shows_its_own_render(curate):
    svc, ids, ws = curate
    df = svc.samples_frame()
    assert list(df["id"]) == ids and df.columns[0] == "sample"
    cells = dict(zip(df["id"], df["sample"], strict=True))
    assert cells[ids[2]] == ""  # no render cache: no thumbnail, and the list still shows it
    thumbs = {sid: _decode(cells[sid]) for sid in ids[:2]}
    for sid, thumb in thumbs.items():
        assert f'data-sample="{sid}"' in cells[sid]
        assert thumb.shape[:2] == SIZE  # 64x128 fits the 128-px side unshrunk
        own = np.abs(thumb.astype(float) - _cache_picture(ws, sid)).mean()
        other = np.abs(thumb.astype(float) - _cache_picture(ws, ({*ids[:2]} - {sid}).pop())).mean()
        assert own < 8.0 and other > 4 * own, (own, other)  # JPEG q85 on busy 64x128


def test_thumbnails_shrink_antialiased_to_the_side(tmp_path):
    from dashboard.services.curate import THUMB_SIDE, thumbnail_rgb

    rng = np.random.default_rng(0)
    big = (rng.random((8, 16, 3)) * 255).astype(np.uint8).repeat(64, 0).repeat(64, 1)
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)  # 512x1024 made of 64-px blocks
    thumb = thumbnail_rgb(path)
    assert thumb.shape == (THUMB_SIDE // 2, THUMB_SIDE, 3)
    ref = _area_shrink(big, thumb.shape[:2])
    assert np.abs(thumb.astype(float) - ref).mean() < 3.0


def test_thumbnails_are_cached_bounded_and_follow_edits(curate, monkeypatch):
    from dashboard.services import curate as curate_mod

    svc, ids, ws = curate
    first = svc.samples_frame()
    assert svc.thumbs.info()["entries"] == 2
    assert svc.thumbs.nbytes <= svc.thumbs.max_bytes == curate_mod.THUMB_CACHE_BYTES
    assert svc.thumbs.max_items == curate_mod.THUMB_CACHE_ITEMS

    # the second listing reads no file: the cache answers
    def no_read(_path, side=0):
        raise AssertionError("thumbnail decoded again")

    monkeypatch.setattr(curate_mod, "thumbnail_rgb", no_read)
    assert svc.samples_frame()["sample"].tolist() == first["sample"].tolist()
    monkeypatch.undo()

    # an edit renders a new picture: its row gets the new thumbnail
    sid = ids[0]
    rec = svc.paste_record(sid, "p0")
    svc.edit_paste(sid, "p0", {"flip": not rec["flip"]}, "ann")
    after = svc.samples_frame().set_index("id")["sample"]
    assert after[sid] != first.set_index("id")["sample"][sid]
    diff = np.abs(_decode(after[sid]).astype(float) - _cache_picture(ws, sid)).mean()
    assert diff < 8.0

    # only the first THUMB_ROWS rows of a long list get one (one PNG decode each)
    monkeypatch.setattr(curate_mod, "THUMB_ROWS", 1)
    cells = svc.samples_frame()["sample"].tolist()
    assert cells[0] and cells[1] == ""
