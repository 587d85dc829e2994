"""Small things a researcher reads in the app: image order, method names, plurals, hints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class TinyWorkspace:
    """The part of db.workspace.Workspace these checks touch: a store and a cache folder."""

    def __init__(self, root: Path) -> None:
        from db import Store

        self.root = root
        self.cache_dir = root / "cache"
        self.uploads_dir = root / "uploads"
        self.heads_dir = root / "heads"
        for d in (self.cache_dir, self.uploads_dir, self.heads_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(workspace=root)


@pytest.fixture()
def tiny(tmp_path):
    from db import catalog

    ws = TinyWorkspace(tmp_path)
    folder = tmp_path / "data" / "numbered" / "images"
    folder.mkdir(parents=True)
    names = ["10.png", "2.png", "1.png", "0.png", "11.png", "img9.png", "img10.png"]
    for k, n in enumerate(names):
        Image.fromarray(np.full((8, 12, 3), k * 20, np.uint8)).save(folder / n)

    def setup(s):
        ds = catalog.register_dataset(s, "numbered", "eval", folder.parent)
        catalog.register_images(s, ds, [folder / n for n in names])
        return ds.id

    ws.ds_id = ws.store.transact(setup)
    yield ws
    ws.store.close()


def test_gallery_sorts_image_names_naturally(tiny):
    from dashboard.services import Services

    svc = Services(tiny)
    names = [n for n, _i in svc.image_names(tiny.ds_id)]
    # independent order: by (prefix, number) written out by hand from the file names
    parsed = [(n.rstrip("0123456789.png") or "", int("".join(c for c in n if c.isdigit()))) for n in names]
    assert parsed == sorted(parsed)
    assert names[:5] == ["0.png", "1.png", "2.png", "10.png", "11.png"]
    captions = [c for _p, c in svc.gallery(tiny.ds_id)]
    assert [c.split(" ", 1)[1] for c in captions] == names
