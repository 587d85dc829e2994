"""Backup / restore (SQLite online backup API) and export / import round trips."""

from __future__ import annotations

import filecmp
import json
import sqlite3
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from anomseg.errors import InputError
from db import Store, catalog, current, flags, pastes, upgrade
from db.engine import make_engine
from db.models import Base
from db.transfer import backup, export_dir, import_dir, restore
from workbench.cli import main as cli_main


def _dump(store_or_url) -> dict[str, list[tuple]]:
    """Every row of every table, by id: the independent view of 'same content'."""
    eng = store_or_url.engine if isinstance(store_or_url, Store) else make_engine(store_or_url)
    with eng.connect() as c:
        out = {
            t.name: [tuple(r) for r in c.execute(sa.select(t).order_by(t.c.id))]
            for t in Base.metadata.sorted_tables
        }
    if not isinstance(store_or_url, Store):
        eng.dispose()
    return out


def _populate(store: Store, n_flags: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with store.session() as s:
        ds = catalog.register_dataset(
            s, "cs", "train", "/data/cs", check_root=False, label_remap={"7": 0}
        )
        ev = catalog.register_dataset(s, "ra21", "eval", "/data/ra", check_root=False)
        syn = catalog.register_dataset(s, "syn", "synthetic", "/data/syn", check_root=False)
        imgs = [
            catalog.add_image(s, d, f"im{i}.png", f"{i:064x}", 40 + i, 30)
            for i, d in enumerate([ds, ds, ev])
        ]
        model = catalog.register_model(
            s,
            "erf",
            "erfnet",
            "/ckpt/erf.pth",
            sha256="c" * 64,
            input_size=(512, 1024),
            meta={"classes": 19},
        )
        for k in range(n_flags):
            img = imgs[k % 3]
            m = rng.random((img.height, img.width)) < 0.1
            m[0, 0] = True
            flags.add_flag(
                s,
                img.id,
                model.id,
                ["msp:T=1.0", "head:2"][k % 2],
                ["false_positive", "false_negative", "ignore"][k % 3],
                m,
                author=f"a{k}",
                note=f"note ü {k}",
            )
        for j in range(3):
            smp = pastes.create_sample(
                s, syn.id, f"bg{j}", {"p0": {"x": j}, "p1": {"x": 10 + j}}, seed=j, author="gen"
            )
            p0 = pastes.get_paste(s, smp.id, "p0").id
            pastes.edit_paste(s, p0, {"x": j, "scale": 1.5}, author="u")
            pastes.edit_paste(s, p0, {"x": j, "scale": 2.0}, author="u")
            pastes.undo_paste(s, p0)
            pastes.remove_paste(s, pastes.get_paste(s, smp.id, "p1").id)
            pastes.set_render_cache(s, smp.id, {"image": f"r/{j}.png"})
            if j == 1:
                pastes.set_sample_status(s, smp.id, "accepted")


@pytest.fixture
def store(tmp_path):
    st = Store.open(workspace=tmp_path / "ws")
    _populate(st)
    yield st
    st.close()


def test_backup_is_exact_and_restore_replaces(store, tmp_path):
    snap = _dump(store)
    out = backup(store, tmp_path / "b.sqlite")
    con = sqlite3.connect(out)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # self-contained
    con.close()
    assert _dump(f"sqlite:///{out}") == snap
    with pytest.raises(InputError, match="already exists"):
        backup(store, out)

    other = Store(store.url)  # a second "process" with the database open during the restore
    with other.read() as s:
        assert len(flags.list_flags(s)) == 6
    with store.session() as s:
        flags.delete_flag(s, 1)
        pastes.set_sample_status(s, 1, "rejected")
    changed = _dump(store)
    assert changed != snap

    safety = restore(store, out)
    assert _dump(store) == snap
    assert _dump(f"sqlite:///{safety}") == changed  # the replaced content was kept
    with other.read() as s:  # the open connection sees the restored content
        assert len(flags.list_flags(s)) == 6
    with other.session() as s:  # and can still write
        flags.delete_flag(s, 2)
    other.close()
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_backup_while_writing_is_consistent(store, tmp_path):
    stop = threading.Event()
    written = []

    def writer():
        w = Store(store.url)
        m = np.zeros((30, 40), bool)
        m[1, 1] = True
        while not stop.is_set():
            with w.session() as s:
                written.append(flags.add_flag(s, 1, 1, "msp", "ignore", m, note="bg").uid)
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        outs = [backup(store, tmp_path / f"b{i}.sqlite") for i in range(3)]
    finally:
        stop.set()
        t.join()
    live = {r[1]: r for r in _dump(store)["flags"]}
    for out in outs:
        con = sqlite3.connect(out)
        assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        con.close()
        for row in _dump(f"sqlite:///{out}")["flags"]:
            assert live[row[1]] == row  # every backed-up row is exactly a committed row


def test_restore_refuses_bad_files(store, tmp_path):
    snap = _dump(store)
    txt = tmp_path / "notes.sqlite"
    txt.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.sqlite is not a SQLite database"):
        restore(store, txt)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="not an anomseg database"):
        restore(store, foreign)
    newer = backup(store, tmp_path / "newer.sqlite")
    con = sqlite3.connect(newer)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="revision '9999'.*newer version"):
        restore(store, newer)
    with pytest.raises(InputError, match="does not exist"):
        restore(store, tmp_path / "missing.sqlite")
    assert _dump(store) == snap
    assert list((tmp_path / "ws").glob("*before-restore*")) == []


def test_restore_old_revision_is_upgraded(store, tmp_path):
    old = tmp_path / "old.sqlite"
    eng = make_engine(old)
    upgrade(eng, "0001")
    with eng.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO datasets (id, name, role, root, layout, created) "
                "VALUES (1, 'legacy', 'eval', '/x', '', '2024-01-01 00:00:00')"
            )
        )
    eng.dispose()
    restore(store, old)
    assert current(store) == "0003"
    with store.read() as s:
        assert [d.name for d in catalog.list_datasets(s)] == ["legacy"]


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_export_import_round_trip_exact(store, tmp_path):
    a = tmp_path / "exp_a"
    counts = export_dir(store, a)
    assert counts["flags"] == 6 and counts["samples"] == 3 and counts["images"] == 3
    # an independent check of one exported mask against the stored one
    meta = json.loads((a / "flags.json").read_text())
    with store.read() as s:
        f0 = [f for f in flags.list_flags(s) if f.uid == meta[0]["uid"]][0]
        from PIL import Image

        png = np.asarray(Image.open(a / meta[0]["mask"]).convert("L")) > 0
        assert np.array_equal(png, f0.decoded_mask()) and meta[0]["area"] == int(png.sum())

    fresh = Store.open(workspace=tmp_path / "ws2")
    got = import_dir(fresh, a)
    assert got == {"flags": 6, "flags_skipped": 0, "samples": 3, "samples_skipped": 0}
    b = tmp_path / "exp_b"
    export_dir(fresh, b)
    assert _tree(a) == _tree(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, _tree(a), shallow=False)
    assert mismatch == [] and errors == []

    # row-level: flags and paste histories identical apart from autoincrement ids
    def view(st):
        with st.read() as s:
            fl = sorted(
                (
                    f.uid,
                    f.method,
                    f.kind,
                    f.mask,
                    f.area,
                    f.bbox,
                    f.author,
                    f.note,
                    f.created,
                    f.updated,
                    f.image.path,
                    f.model.name,
                )
                for f in flags.list_flags(s)
            )
            sm = []
            for smp in pastes.list_samples(s):
                hist = {
                    p.key: (
                        p.current_number,
                        [
                            (
                                r.number,
                                r.parent_number,
                                r.record,
                                r.content_hash,
                                r.author,
                                r.created,
                            )
                            for r in p.revisions
                        ],
                    )
                    for p in smp.pastes
                }
                sm.append(
                    (
                        smp.uid,
                        smp.status,
                        smp.seed,
                        smp.render,
                        smp.created,
                        smp.updated,
                        hist,
                        pastes.current_records(s, smp.id),
                    )
                )
            return fl, sorted(sm, key=lambda x: x[0])

    assert view(fresh) == view(store)
    # importing again adds nothing
    again = import_dir(fresh, a)
    assert again == {"flags": 0, "flags_skipped": 6, "samples": 0, "samples_skipped": 3}
    fresh.close()


def test_import_refuses_bad_exports_atomically(store, tmp_path):
    a = tmp_path / "exp"
    export_dir(store, a)
    with pytest.raises(InputError, match="not empty"):
        export_dir(store, a)

    def broken(edit):
        d = tmp_path / f"broken{len(list(tmp_path.glob('broken*')))}"
        import shutil

        shutil.copytree(a, d)
        edit(d)
        return d

    def tamper(name, fn):
        def edit(d):
            data = json.loads((d / name).read_text())
            fn(data)
            (d / name).write_text(json.dumps(data))

        return edit

    other = Store.open(workspace=tmp_path / "other")
    cases = [
        (tamper("flags.json", lambda d: d[0].update(area=d[0]["area"] + 1)), r"flags\.json\[0\]"),
        (tamper("flags.json", lambda d: d[1].update(mask="../../etc/passwd")), "leaves the export"),
        (tamper("flags.json", lambda d: d[2].pop("kind")), "missing field 'kind'"),
        (tamper("flags.json", lambda d: d[3].update(uid="../../evil")), r"flags\.json\[3\]: uid"),
        (tamper("samples.json", lambda d: d[1].update(status="maybe")), "status 'maybe'"),
        (lambda d: (d / meta_mask(d)).write_bytes(b"junk"), "not a readable PNG"),
        (
            tamper("samples.json", lambda d: d[0]["pastes"][0].update(current=99)),
            "current revision",
        ),
        (lambda d: (d / "manifest.json").write_text("{}"), "not an anomseg export"),
    ]
    for edit, msg in cases:
        with pytest.raises(InputError, match=msg):
            import_dir(other, broken(edit))
    with other.read() as s:  # each refused import left nothing behind
        assert catalog.list_datasets(s) == [] and catalog.list_models(s) == []
    with other.session() as s:  # the same image name with different content
        ds = catalog.register_dataset(s, "cs", "train", "/data/cs", check_root=False)
        catalog.add_image(s, ds, "im1.png", "f" * 64, 41, 30)
    with pytest.raises(InputError, match=r"im1\.png has different content"):
        import_dir(other, a)
    with other.read() as s:  # nothing half-imported
        assert flags.list_flags(s) == [] and pastes.list_samples(s) == []
        assert len(catalog.list_datasets(s)) == 1
    other.close()


def meta_mask(d) -> str:
    return json.loads((d / "flags.json").read_text())[0]["mask"]


def test_cli_backup_restore_export_import(store, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    snap = _dump(store)
    assert cli_main(["db", "backup", str(tmp_path / "c.sqlite"), "--workspace", ws]) == 0
    assert cli_main(["db", "export", str(tmp_path / "e"), "--workspace", ws]) == 0
    assert "flags 6" in capsys.readouterr().out
    with store.session() as s:
        flags.delete_flag(s, 3)
    assert cli_main(["db", "restore", str(tmp_path / "c.sqlite"), "--workspace", ws]) == 0
    assert _dump(store) == snap
    ws3 = str(tmp_path / "ws3")
    assert cli_main(["db", "import", str(tmp_path / "e"), "--workspace", ws3]) == 0
    assert "flags 6" in capsys.readouterr().out
    assert cli_main(["db", "restore", str(tmp_path / "nope.sqlite"), "--workspace", ws]) == 2
    assert "does not exist" in capsys.readouterr().err
