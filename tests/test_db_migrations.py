"""Migrations: empty -> head matches the models; 0001 with data -> head keeps (and back-fills)
it; a failing or killed revision leaves the database open at the previous revision."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from anomseg.errors import InputError
from db import Store, current, head_revision, upgrade
from db.engine import make_engine
from db.masks import encode_mask
from db.migrate import SCRIPT_LOCATION, downgrade, known_revisions
from db.models import Base
from workbench.cli import main as cli_main


def _columns(engine, table):
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


PG_URL = os.environ.get("ANOMSEG_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'a.sqlite'}"
    if not PG_URL:
        pytest.skip("ANOMSEG_TEST_PG_URL is not set (.ci/postgres.sh sets it)")
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c:
        Base.metadata.drop_all(c)
        c.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    eng.dispose()
    return PG_URL


def test_empty_to_head_matches_models(db_url):
    eng = make_engine(db_url)
    assert current(eng) is None
    assert upgrade(eng) == head_revision() == known_revisions()[-1]
    with eng.connect() as c:
        diffs = compare_metadata(
            MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
        )
    assert diffs == []
    # CHECK constraints are not compared by autogenerate: compare their names directly
    insp = sa.inspect(eng)
    for table in Base.metadata.sorted_tables:
        want = {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)}
        got = {c["name"] for c in insp.get_check_constraints(table.name)}
        assert got == want, table.name
    if eng.dialect.name == "sqlite":
        with eng.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    eng.dispose()


def _populate_0001(eng, n_flags=5):
    """Insert rows with 0001's columns via Core (the ORM models are at head)."""
    rng = np.random.default_rng(0)
    t = sa.Table
    md = sa.MetaData()
    md.reflect(eng)
    now = datetime(2024, 5, 1, 12, 0, 0)
    masks = []
    with eng.begin() as c:
        c.execute(
            t("datasets", md).insert(),
            dict(id=1, name="d", role="train", root="/r", layout="", created=now),
        )
        c.execute(
            t("images", md).insert(),
            dict(
                id=1, dataset_id=1, path="a.png", sha256="0" * 64, width=40, height=30, created=now
            ),
        )
        c.execute(
            t("models", md).insert(),
            dict(id=1, name="m", architecture="erfnet", meta_json='{"a": 1}', created=now),
        )
        for i in range(n_flags):
            m = np.zeros((30, 40), bool)
            x, y = rng.integers(0, 30), rng.integers(0, 20)
            m[y : y + 1 + i, x : x + 2 + i] = True
            m[rng.integers(0, 30), rng.integers(0, 40)] = True
            masks.append(m)
            c.execute(
                t("flags", md).insert(),
                dict(
                    id=i + 1,
                    uid=f"u{i}",
                    image_id=1,
                    model_id=1,
                    method="msp",
                    kind="ignore",
                    mask=encode_mask(m),
                    width=40,
                    height=30,
                    author="x",
                    note=f"n{i}",
                    created=now.replace(minute=i),
                ),
            )
        c.execute(
            t("jobs", md).insert(),
            dict(
                id=1,
                kind="train",
                status="done",
                progress=1.0,
                message="ok",
                log_tail="",
                cancel_requested=False,
                created=now,
            ),
        )
    return masks


def test_upgrade_from_0001_keeps_and_backfills_data(db_url):
    eng = make_engine(db_url)
    assert upgrade(eng, "0001") == "0001"
    assert "area" not in _columns(eng, "flags")
    masks = _populate_0001(eng)
    with eng.connect() as c:
        before = {
            tb: c.execute(sa.text(f"SELECT * FROM {tb} ORDER BY id")).mappings().all()
            for tb in ("datasets", "images", "models", "flags", "jobs")
        }
    assert upgrade(eng) == "0003"
    with eng.connect() as c:
        for tb, rows in before.items():
            after = c.execute(sa.text(f"SELECT * FROM {tb} ORDER BY id")).mappings().all()
            assert len(after) == len(rows)
            for old, new in zip(rows, after, strict=True):
                assert {k: new[k] for k in old} == dict(old)  # every 0001 value kept
        flags = c.execute(sa.text("SELECT * FROM flags ORDER BY id")).mappings().all()
    for row, m in zip(flags, masks, strict=True):
        ys, xs = np.nonzero(m)
        assert row["area"] == len(xs)
        assert (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]) == (
            xs.min(),
            ys.min(),
            xs.max() + 1,
            ys.max() + 1,
        )
        assert row["updated"] == row["created"]
    # the ORM reads the upgraded rows, and the kind CHECK survived the batch table copy
    from db import flags as qflags

    store = Store(db_url)
    with store.read() as s:
        got = qflags.list_flags(s)
        assert np.array_equal(got[3].decoded_mask(), masks[3])
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as c:
        c.execute(sa.text("UPDATE flags SET kind = 'bogus' WHERE id = 1"))
    store.close()
    assert downgrade(eng, "0001") == "0001" and "area" not in _columns(eng, "flags")
    eng.dispose()


def test_failing_backfill_rolls_back_whole_revision(tmp_path):
    eng = make_engine(tmp_path / "a.sqlite")
    upgrade(eng, "0001")
    _populate_0001(eng, n_flags=3)
    with eng.begin() as c:
        c.execute(sa.text("UPDATE flags SET mask = :b WHERE id = 2"), {"b": b"AMK1garbage"})
    with pytest.raises(InputError, match="migration 0002: flags row id=2"):
        upgrade(eng)
    assert current(eng) == "0001"
    cols = _columns(eng, "flags")
    assert "area" not in cols and "updated" not in cols  # ADD COLUMNs rolled back too
    assert "heartbeat" not in _columns(eng, "jobs")
    with eng.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM flags").scalar() == 3
        assert c.exec_driver_sql("PRAGMA quick_check").scalar() == "ok"
    eng.dispose()


FAILING_REVISION = '''
"""injected failing revision"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("flags", sa.Column("extra", sa.Integer()))
    op.create_table("scratch", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("INSERT INTO scratch (id) VALUES (1)")
    op.execute("UPDATE flags SET note = 'touched'")
    {action}


def downgrade():
    pass
'''


def _scripts_with(tmp_path, action):
    loc = tmp_path / "migrations"
    shutil.copytree(SCRIPT_LOCATION, loc, ignore=shutil.ignore_patterns("__pycache__"))
    (loc / "versions" / "0004_inject.py").write_text(FAILING_REVISION.format(action=action))
    return loc


def _assert_at_head_untouched(db):
    eng = make_engine(db)
    assert current(eng) == "0003"
    assert "extra" not in _columns(eng, "flags")
    assert not sa.inspect(eng).has_table("scratch")
    with eng.connect() as c:
        assert c.exec_driver_sql("PRAGMA quick_check").scalar() == "ok"
        notes = [r[0] for r in c.exec_driver_sql("SELECT note FROM flags ORDER BY id")]
    assert notes == ["n0", "n1"]
    eng.dispose()
    # and it still opens and writes through the normal path
    store = Store.open(url=f"sqlite:///{db}")
    with store.session() as s:
        from db import jobs

        jobs.enqueue_job(s, "after")
    store.close()


def test_exception_in_revision_leaves_previous_revision(tmp_path):
    db = tmp_path / "a.sqlite"
    eng = make_engine(db)
    upgrade(eng, "0001")
    _populate_0001(eng, n_flags=2)
    upgrade(eng)
    eng.dispose()
    loc = _scripts_with(tmp_path, 'raise RuntimeError("boom in 0004")')
    with pytest.raises(RuntimeError, match="boom in 0004"):
        upgrade(db, script_location=loc)
    _assert_at_head_untouched(db)


KILL_SCRIPT = """
import sys
from db.migrate import upgrade
upgrade(sys.argv[1], script_location=sys.argv[2])
"""


def test_kill_9_mid_revision_leaves_previous_revision(tmp_path):
    db = tmp_path / "a.sqlite"
    eng = make_engine(db)
    upgrade(eng, "0001")
    _populate_0001(eng, n_flags=2)
    upgrade(eng)
    eng.dispose()
    marker = tmp_path / "inside"
    action = f"open({str(marker)!r}, 'w').close(); import time; time.sleep(120)"
    loc = _scripts_with(tmp_path, action)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(db), str(loc)])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, "upgrade process ended before reaching the marker"
            assert time.time() < deadline, "upgrade never reached the injected revision"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    _assert_at_head_untouched(db)


def test_cli_upgrade_and_current(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert cli_main(["db", "upgrade", "--workspace", str(ws)]) == 0
    assert "-> 0003" in capsys.readouterr().out
    assert cli_main(["db", "current", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.strip() == "0003 (head)"
    assert (ws / "anomseg.sqlite").is_file()
    assert cli_main(["db", "current", "--workspace", str(tmp_path / "nope")]) == 0
    assert "no database" in capsys.readouterr().out
    assert not (tmp_path / "nope").exists()  # asking does not create anything
    assert cli_main(["db", "upgrade", "--url", "mysql://u@h/db"]) == 2
    assert "backend 'mysql' is not supported" in capsys.readouterr().err


def test_0003_allows_oe_heads_keeps_rows_and_refuses_downgrade_over_them(tmp_path):
    eng = make_engine(tmp_path / "a.sqlite")
    upgrade(eng, "0001")
    _populate_0001(eng, n_flags=1)
    upgrade(eng, "0002")
    row = dict(model_id=1, version=1, active=False, status="ready", created=datetime(2024, 5, 1))
    ins = sa.text(
        "INSERT INTO head_versions (model_id, kind, version, active, status, created) "
        "VALUES (:model_id, :kind, :version, :active, :status, :created)"
    )
    with eng.begin() as c:
        c.execute(ins, {**row, "kind": "stats"})
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as c:
        c.execute(ins, {**row, "kind": "oe", "version": 2})  # 0002 does not know the kind
    assert upgrade(eng) == "0003"
    with eng.begin() as c:
        c.execute(ins, {**row, "kind": "oe", "version": 2})
        kinds = [r[0] for r in c.exec_driver_sql("SELECT kind FROM head_versions ORDER BY id")]
    assert kinds == ["stats", "oe"]
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as c:
        c.execute(ins, {**row, "kind": "bogus", "version": 3})
    with pytest.raises(RuntimeError, match="kind 'oe' exist"):
        downgrade(eng, "0002")
    assert current(eng) == "0003"
    eng.dispose()
