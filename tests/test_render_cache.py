"""The render-cache contract (anomseg.synth.render_cache): names, entry, freshness."""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

from anomseg.synth.render_cache import (
    cache_entry,
    is_current,
    render_paths,
    revisions_hash,
    write_render_cache,
)


def test_revisions_hash_is_the_sha256_of_sorted_key_lines_and_order_free():
    revs = {"p1": "b" * 64, "p0": "a" * 64, "p2": None}  # None: a removed paste
    expected = hashlib.sha256(f"p0={'a' * 64}\np1={'b' * 64}\np2=-\n".encode()).hexdigest()
    assert revisions_hash(revs) == expected
    assert revisions_hash(dict(reversed(list(revs.items())))) == expected
    assert revisions_hash({**revs, "p2": "c" * 64}) != expected


def test_write_render_cache_names_files_by_hash_and_points_at_them(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    gt = (rng.random((12, 20)) > 0.8).astype(np.uint8)
    revs = {"p0": "a" * 64}
    entry = write_render_cache(tmp_path / "renders", "u1", revs, rgb, gt)
    rh = revisions_hash(revs)
    img_p, gt_p = render_paths(tmp_path / "renders", "u1", rh)
    assert img_p.name == f"u1-{rh[:16]}.png" and gt_p.name == f"u1-{rh[:16]}_gt.png"
    assert entry == {
        "image": str(img_p),
        "gt": str(gt_p),
        "revisions_hash": rh,
        "image_sha256": hashlib.sha256(img_p.read_bytes()).hexdigest(),
        "size": [12, 20],
    }
    np.testing.assert_array_equal(np.asarray(Image.open(img_p)), rgb)  # lossless
    np.testing.assert_array_equal(np.asarray(Image.open(gt_p)), gt)
    assert not [p for p in (tmp_path / "renders").iterdir() if p.name.startswith(".")]
    # the same revisions again: the files (possibly held by a reader) are not rewritten
    before = os.stat(img_p).st_mtime_ns, os.stat(gt_p).st_mtime_ns
    again = write_render_cache(tmp_path / "renders", "u1", revs, rgb * 0, gt * 0)
    assert again == entry and (os.stat(img_p).st_mtime_ns, os.stat(gt_p).st_mtime_ns) == before


def test_is_current_follows_the_revisions_hash():
    rh = revisions_hash({"p0": "a" * 64})
    assert is_current(cache_entry("i.png", "g.png", rh), rh)
    assert not is_current(cache_entry("i.png", "g.png", rh), revisions_hash({"p0": "b" * 64}))
    assert is_current({"image": "i.png", "gt": "g.png"}, rh)  # an entry of old: no hash
    assert not is_current(None, rh) and not is_current({}, rh)
