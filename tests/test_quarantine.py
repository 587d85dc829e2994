"""Issue 15 §6: one corrupt row never blocks the operations that read its neighbours.

A flag whose mask blob is garbage, a paste revision whose JSON does not parse and a render cache
that does not parse are quarantined: listed with id and reason (``anomseg db check``, the Flag
tab), skipped with a note by training and export, and deletable / repairable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from db import catalog, integrity, pastes, transfer
from db import flags as dbflags
from db.models import Flag, PasteRevision, SyntheticSample
from workbench.cli import main

H, W = 24, 32


def _mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def damaged(tmp_path):
    """A workspace with two good flags, one garbage flag blob, a corrupt paste revision and a
    corrupt render cache, all on a one-image train dataset."""
    from workbench.workspace import Workspace

    root = tmp_path / "train"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "images" / "a.png")
    ws = Workspace.open(tmp_path / "ws")
    ws.register_folder("train", root, "train", layout="segmentation")
    with ws.store.session() as s:
        ds = catalog.get_dataset(s, "train")
        img = catalog.list_images(s, ds)[0]
        m = catalog.register_model(s, "m", "erfnet", None, sha256="ef" * 32)
        good = [
            dbflags.add_flag(s, img.id, m.id, "msp", "false_positive", _mask(1, 1, 5, 5)).id,
            dbflags.add_flag(s, img.id, m.id, "msp", "ignore", _mask(10, 2, 20, 9)).id,
        ]
        bad = dbflags.add_flag(s, img.id, m.id, "msp", "false_positive", _mask(0, 0, 3, 3))
        bad.mask = b"AMK1 this is not a mask at all"
        sample_ok = pastes.create_sample(s, ds.id, "bg:0", [("p0", {"x": 1})], uid="s-ok")
        sample_bad = pastes.create_sample(
            s, ds.id, "bg:1", [("p0", {"x": 2}), ("p1", {"x": 3})], uid="s-bad"
        )
        rev = s.scalars(select_rev(sample_bad.id, "p1")).one()  # the second paste's revision
        rev.record_json = '{"x": 3, oops'
        sample_ok.render_json = "[not json"
        ids = {
            "image": img.id,
            "model": m.id,
            "good": good,
            "bad": bad.id,
            "rev": rev.id,
            "sample_ok": sample_ok.id,
        }
    yield ws, ids
    ws.close()


def select_rev(sample_id: int, key: str):
    from sqlalchemy import select

    from db.models import Paste

    return (
        select(PasteRevision)
        .join(Paste, Paste.id == PasteRevision.paste_id)
        .where(Paste.sample_id == sample_id, Paste.key == key)
    )


def test_check_store_lists_every_corrupt_row_with_id_and_reason(damaged):
    ws, ids = damaged
    with ws.store.read() as s:
        problems = integrity.check_store(s)
    assert [(p.table, p.id) for p in problems] == [
        ("flags", ids["bad"]),
        ("paste_revisions", ids["rev"]),
        ("synthetic_samples", ids["sample_ok"]),
    ]
    assert problems[0].reason.startswith("encoded mask")
    assert "invalid JSON" in problems[1].reason and "revision 1" in problems[1].reason


def test_db_check_command_lists_then_repairs(damaged, capsys, tmp_path):
    ws, ids = damaged
    where = ["--workspace", str(ws.root)]
    assert main(["db", "check", *where]) == 1
    out = capsys.readouterr().out
    assert f"flags id={ids['bad']}:" in out and f"paste_revisions id={ids['rev']}:" in out
    assert "3 corrupt row(s)" in out
    assert main(["db", "check", "--fix", *where]) == 0
    out = capsys.readouterr().out
    assert f"deleted flag {ids['bad']}" in out
    assert main(["db", "check", *where]) == 0
    with ws.store.read() as s:
        assert s.get(Flag, ids["bad"]) is None
        assert sorted(f.id for f in dbflags.list_flags(s)) == ids["good"]
        rev = s.get(PasteRevision, ids["rev"])
        assert rev.record is None  # a removal: the chain is intact, undo brings back nothing lost
        assert s.get(SyntheticSample, ids["sample_ok"]).render is None
        assert pastes.current_records(s, ids["sample_ok"]) == {"p0": {"x": 1}}


def test_export_skips_corrupt_rows_with_a_note_and_imports_back(damaged, tmp_path):
    ws, ids = damaged
    out = tmp_path / "export"
    counts = transfer.export_dir(ws.store, out)
    assert counts["flags"] == 2 and counts["quarantined"] == 3
    flags = json.loads((out / "flags.json").read_text())
    assert len(flags) == 2  # the two good flags, with their masks
    skipped = json.loads((out / "quarantined.json").read_text())
    assert sorted((q["table"], q["id"]) for q in skipped) == sorted(
        [("flags", ids["bad"]), ("paste_revisions", ids["rev"]), ("synthetic_samples", ids["sample_ok"])]
    )  # fmt: skip
    samples = {s["uid"]: s for s in json.loads((out / "samples.json").read_text())}
    assert [p["key"] for p in samples["s-bad"]["pastes"]] == ["p0"]  # the corrupt paste left out
    assert samples["s-ok"]["render"] is None

    from db import Store

    fresh = Store.open(workspace=tmp_path / "fresh")
    try:
        got = transfer.import_dir(fresh, out)
        assert got["flags"] == 2
        with fresh.read() as s:
            masks = sorted(int(f.decoded_mask().sum()) for f in dbflags.list_flags(s))
        assert masks == sorted([16, 70])
    finally:
        fresh.close()


def test_training_skips_a_corrupt_flag_with_a_note(damaged):
    from training.dataset import training_images_from_store

    ws, ids = damaged
    with ws.store.read() as s:
        images, notes = training_images_from_store(s, ids["model"])
    flagged = [i for i in images if i.flags]
    assert len(flagged) == 1
    assert sorted(r.id for r in flagged[0].flags) == ids["good"]
    assert any(f"flag {ids['bad']}" in n and "skipped" in n for n in notes), notes


def test_flag_tab_shows_lists_and_deletes_a_corrupt_flag(damaged):
    from dashboard.services import Services

    ws, ids = damaged
    svc = Services(ws)
    overlay = svc.flags.flags_overlay(ids["image"])
    assert overlay.shape[:2] == (H, W)
    frame = svc.flags.flags_frame(ids["image"])
    assert sorted(frame["id"]) == sorted([*ids["good"], ids["bad"]])
    note = frame.loc[frame["id"] == ids["bad"], "note"].item()
    assert note.startswith("⚠ quarantined")
    listed = svc.flags.quarantine_markdown()
    assert f"flag #{ids['bad']}" in listed and f"paste revision #{ids['rev']}" in listed
    svc.flags.delete_flag(ids["bad"])
    assert sorted(svc.flags.flags_frame(ids["image"])["id"]) == sorted(ids["good"])
