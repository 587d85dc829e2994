"""Query helpers of the store: catalog and training guard, flags, paste history, heads, jobs,
leaderboard, corrupt rows. Expected values come from independent computations (hashlib, numpy,
brute-force Python over what was inserted)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from anomseg.errors import DatasetError, InputError
from db import Store, catalog, flags, heads, jobs, pastes, results
from db.models import Base, Flag

PG_URL = os.environ.get("ANOMSEG_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = Store.open(workspace=tmp_path / "ws")
    else:
        if not PG_URL:
            pytest.skip("ANOMSEG_TEST_PG_URL is not set (.ci/postgres.sh sets it)")
        eng = sa.create_engine(PG_URL)
        with eng.begin() as c:  # a fresh schema for every test
            Base.metadata.drop_all(c)
            c.execute(text("DROP TABLE IF EXISTS alembic_version"))
        eng.dispose()
        st = Store.open(url=PG_URL)
    yield st
    st.close()


def _png(path, w=32, h=24, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def world(store, tmp_path):
    troot, eroot = tmp_path / "train", tmp_path / "eval"
    for i in range(2):
        _png(troot / "img" / f"t{i}.png", seed=i)
        _png(eroot / f"e{i}.png", seed=10 + i)
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"weights")
    with store.session() as s:
        tr = catalog.register_dataset(s, "train_ds", "train", troot, layout="folder")
        ev = catalog.register_dataset(s, "eval_ds", "eval", eroot)
        syn = catalog.register_dataset(s, "synth", "synthetic", tmp_path, check_root=False)
        timgs = catalog.register_images(s, tr, ["img/t0.png", troot / "img" / "t1.png"])
        eimgs = catalog.register_images(s, ev, ["e0.png", "e1.png"])
        m = catalog.register_model(s, "erf", "erfnet", ckpt, input_size=(24, 32))
        return SimpleNamespace(
            train=tr.id,
            eval=ev.id,
            synth=syn.id,
            timgs=[i.id for i in timgs],
            eimgs=[i.id for i in eimgs],
            model=m.id,
            troot=troot,
            ckpt=ckpt,
        )


# ---------------------------------------------------------------- catalog


def test_images_hashed_and_sized(store, world):
    with store.read() as s:
        img = catalog.get_image(s, "train_ds", "img/t1.png")
        data = (world.troot / "img" / "t1.png").read_bytes()
        assert img.sha256 == hashlib.sha256(data).hexdigest()
        assert (img.width, img.height) == (32, 24)
        m = catalog.get_model(s, "erf")
        assert m.checkpoint_sha256 == hashlib.sha256(b"weights").hexdigest()
        assert (m.input_h, m.input_w) == (24, 32)


@pytest.mark.parametrize("bad", ["../eval/e0.png", "img/../../eval/e0.png", "/etc/passwd"])
def test_image_paths_cannot_escape_root(store, world, bad):
    with store.session() as s, pytest.raises(InputError, match="outside|escapes"):
        catalog.register_images(s, catalog.get_dataset(s, "train_ds"), [bad])


def test_catalog_errors(store, world, tmp_path):
    (world.troot / "notimg.png").write_text("hello")
    with store.session() as s:
        tr = catalog.get_dataset(s, "train_ds")
        with pytest.raises(InputError, match="notimg.png is not a readable image"):
            catalog.register_images(s, tr, ["notimg.png"])
        with pytest.raises(DatasetError, match="does not exist"):
            catalog.register_images(s, tr, ["missing.png"])
        with pytest.raises(InputError, match="refusing to change it to 'train'"):
            catalog.register_dataset(s, "eval_ds", "train", tmp_path / "eval")
        with pytest.raises(InputError, match="role 'test' is unknown"):
            catalog.register_dataset(s, "x", "test", tmp_path)
        with pytest.raises(DatasetError, match="not a directory"):
            catalog.register_dataset(s, "x", "train", tmp_path / "nope")
        with pytest.raises(InputError, match="known: erf"):
            catalog.get_model(s, "eomt")


def test_training_guard_refuses_eval_images(store, world):
    with store.read() as s:
        assert catalog.training_images_allowed(s, world.timgs) == sorted(world.timgs)
        with pytest.raises(InputError, match=r"eval_ds/e0\.png"):
            catalog.training_images_allowed(s, [*world.timgs, world.eimgs[0]])
        with pytest.raises(InputError, match="not registered"):
            catalog.training_images_allowed(s, [99999])


# ---------------------------------------------------------------- flags


def _mask(h=24, w=32, box=(2, 3, 10, 8)):
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_flag_round_trip_and_filters(store, world):
    m1, m2 = _mask(), _mask(box=(20, 1, 31, 20))
    m2[5, 5] = True
    with store.session() as s:
        f1 = flags.add_flag(
            s,
            world.timgs[0],
            world.model,
            "msp:T=1.0",
            "false_positive",
            m1,
            author="ann",
            note="shadow",
        )
        flags.add_flag(s, world.eimgs[0], world.model, "head:1", "false_negative", m2)
        f1_id = f1.id
    with store.read() as s:
        got = flags.get_flag(s, f1_id)
        assert np.array_equal(got.decoded_mask(), m1)
        assert got.area == int(m1.sum()) == 40 and got.bbox == (2, 3, 10, 8)
        assert (got.author, got.note, got.kind) == ("ann", "shadow", "false_positive")
        assert got.created.tzinfo is not None
        assert [f.id for f in flags.list_flags(s, method="head:1")] != [f1_id]
        assert len(flags.list_flags(s, dataset_id=world.eval)) == 1
        assert len(flags.list_flags(s, kind="false_positive", image_id=world.timgs[0])) == 1
        # eval-image flags stay annotations: never returned for training
        assert [f.id for f in flags.flags_for_training(s, world.model)] == [f1_id]
        counts = flags.flag_counts(s, world.model)
        assert counts["false_positive"] == {"train": 1, "train_pixels": 40, "eval_only": 0}
        assert counts["false_negative"]["eval_only"] == 1
        before = got.updated
    with store.session() as s:
        flags.update_flag(s, f1_id, note="edited", kind="ignore", mask=m2)
    with store.read() as s:
        got = flags.get_flag(s, f1_id)
        assert (got.note, got.kind, got.area) == ("edited", "ignore", int(m2.sum()))
        assert got.updated >= before
    with store.session() as s:
        flags.delete_flag(s, f1_id)
    with store.read() as s, pytest.raises(InputError, match="does not exist"):
        flags.get_flag(s, f1_id)


def test_flag_bad_input(store, world):
    with store.session() as s:
        with pytest.raises(InputError, match=r"flag mask is 16x8 but image 'img/t0.png' is 32x24"):
            flags.add_flag(
                s, world.timgs[0], world.model, "msp", "false_positive", np.ones((8, 16), bool)
            )
        with pytest.raises(InputError, match="empty"):
            flags.add_flag(
                s, world.timgs[0], world.model, "msp", "false_positive", np.zeros((24, 32), bool)
            )
        with pytest.raises(InputError, match="kind 'fp' is unknown"):
            flags.add_flag(s, world.timgs[0], world.model, "msp", "fp", _mask())
        with pytest.raises(InputError, match="image id 999"):
            flags.add_flag(s, 999, world.model, "msp", "ignore", _mask())
    with store.read() as s:
        assert flags.list_flags(s) == []


# ---------------------------------------------------------------- pastes


def test_paste_edit_undo_redo_history(store, world):
    r1 = {"object": "cow", "x": 10, "y": 20, "scale": 1.0}
    with store.session() as s:
        sample = pastes.create_sample(
            s, world.synth, "bg-1", {"a": r1, "b": {"object": "tyre"}}, seed=7, author="gen"
        )
        sid = sample.id
        pid = pastes.get_paste(s, sid, "a").id
    rec = lambda x: {**r1, "x": x}  # noqa: E731
    with store.session() as s:
        assert pastes.edit_paste(s, pid, rec(11)).number == 2
        assert pastes.edit_paste(s, pid, rec(12)).number == 3
        assert pastes.edit_paste(s, pid, rec(12)).number == 3  # unchanged: no new revision
    with store.session() as s:
        assert pastes.undo_paste(s, pid).record == rec(11)
        assert pastes.undo_paste(s, pid).record == r1
        with pytest.raises(InputError, match="nothing to undo"):
            pastes.undo_paste(s, pid)
        assert pastes.redo_paste(s, pid).number == 2
        # an edit after undo branches: revision 4 derives from 2, 3 is kept
        r4 = pastes.edit_paste(s, pid, rec(40))
        assert (r4.number, r4.parent_number) == (4, 2)
        with pytest.raises(InputError, match="nothing to redo"):
            pastes.redo_paste(s, pid)
        assert pastes.undo_paste(s, pid).number == 2
        assert pastes.redo_paste(s, pid).number == 4  # newest child of 2
    with store.session() as s:
        pastes.remove_paste(s, pastes.get_paste(s, sid, "b").id)
        assert pastes.current_records(s, sid) == {"a": rec(40)}
        pastes.undo_paste(s, pastes.get_paste(s, sid, "b").id)
        assert pastes.current_records(s, sid) == {"a": rec(40), "b": {"object": "tyre"}}
        hist = pastes.paste_history(s, pid)
        assert [h.number for h in hist] == [1, 2, 3, 4]
        assert [h.record["x"] for h in hist] == [10, 11, 12, 40]
        canon = json.dumps(rec(40), sort_keys=True, separators=(",", ":"))
        assert hist[-1].content_hash == hashlib.sha256(canon.encode()).hexdigest()


def test_sample_status_and_bad_records(store, world):
    with store.session() as s:
        sid = pastes.create_sample(s, world.synth, "bg", {"a": {"k": 1}}).id
        pastes.set_sample_status(s, sid, "accepted")
        pastes.set_render_cache(s, sid, {"image": "renders/abc.png"})
        with pytest.raises(InputError, match="status 'ok' is unknown"):
            pastes.set_sample_status(s, sid, "ok")
        with pytest.raises(InputError, match="already has a paste"):
            pastes.add_paste(s, sid, "a", {"k": 2})
        with pytest.raises(InputError, match="JSON object"):
            pastes.edit_paste(s, pastes.get_paste(s, sid, "a").id, [1, 2])  # type: ignore[arg-type]
    with store.read() as s:
        assert pastes.sample_counts(s) == {"proposed": 0, "accepted": 1, "rejected": 0}
        assert [x.id for x in pastes.list_samples(s, status="accepted")] == [sid]
        assert pastes.get_sample(s, sid).render == {"image": "renders/abc.png"}


# ---------------------------------------------------------------- heads


def _n_active(store, model_id):
    with store.engine.connect() as c:
        return c.execute(
            text("SELECT count(*) FROM head_versions WHERE model_id = :m AND active"),
            {"m": model_id},
        ).scalar()


def test_heads_versioning_activation_rollback(store, world):
    with store.session() as s:
        v1 = heads.create_head_version(s, world.model, "stats", hparams={"lr": 1e-3})
        heads.finish_head_version(
            s,
            v1.id,
            checkpoint_path="h1.safetensors",
            checkpoint_sha256="a" * 64,
            metrics={"auprc": 0.5},
        )
        v2 = heads.create_head_version(s, world.model, "features", parent_id=v1.id)
        with pytest.raises(InputError, match="only a ready head"):
            heads.activate_head(s, v2.id)
        heads.finish_head_version(s, v2.id, checkpoint_path="h2", checkpoint_sha256="b" * 64)
        v3 = heads.create_head_version(s, world.model, "stats", parent_id=v2.id)
        heads.fail_head_version(s, v3.id)
        assert [v.version for v in (v1, v2, v3)] == [1, 2, 3]
        ids = (v1.id, v2.id, v3.id)
    for hid in (ids[0], ids[1], ids[0], ids[1]):
        with store.session() as s:
            heads.activate_head(s, hid)
        assert _n_active(store, world.model) == 1
        with store.read() as s:
            assert heads.active_head(s, world.model).id == hid
    with store.session() as s:
        assert heads.rollback_head(s, world.model).id == ids[0]
        with pytest.raises(InputError, match="no parent"):
            heads.rollback_head(s, world.model)
        assert heads.get_head_version(s, world.model, 2).method == "head:2"
        assert [h.version for h in heads.list_head_versions(s, world.model)] == [3, 2, 1]
    assert _n_active(store, world.model) == 1
    # the database itself refuses a second active head
    with pytest.raises(IntegrityError), store.engine.begin() as c:
        c.execute(text("UPDATE head_versions SET active = true WHERE id = :i"), {"i": ids[1]})


def test_concurrent_activation_keeps_one_active(store, world):
    with store.session() as s:
        hids = []
        for _ in range(4):
            h = heads.create_head_version(s, world.model, "stats")
            heads.finish_head_version(s, h.id, checkpoint_path="x", checkpoint_sha256="0" * 64)
            hids.append(h.id)
    errors = []

    def worker(k):
        try:
            for i in range(15):
                store.transact(lambda s, i=i: heads.activate_head(s, hids[(i + k) % 4]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert _n_active(store, world.model) == 1


# ---------------------------------------------------------------- jobs


def test_job_lifecycle(store):
    with store.session() as s:
        a = jobs.enqueue_job(s, "train", {"epochs": 3}).id
        b = jobs.enqueue_job(s, "synth").id
        c = jobs.enqueue_job(s, "train").id
    with store.session() as s:
        assert jobs.claim_next_job(s, "w1", kinds=["synth"]).id == b
        job = jobs.claim_next_job(s, "w1")
        assert (job.id, job.status, job.worker_id, job.params) == (
            a,
            "running",
            "w1",
            {"epochs": 3},
        )
        with pytest.raises(InputError, match="within 0..1"):
            jobs.update_job(s, a, progress=1.5)
        for i in range(500):
            jobs.update_job(s, a, progress=i / 500, log=f"log line number {i:05d}\n")
        tail = jobs.get_job(s, a).log_tail
        full = "".join(f"log line number {i:05d}\n" for i in range(500))
        assert len(full) > jobs.LOG_TAIL_CHARS
        assert len(tail) == jobs.LOG_TAIL_CHARS and tail == full[-jobs.LOG_TAIL_CHARS :]
        jobs.finish_job(s, a, {"head": 1})
        with pytest.raises(InputError, match="not running"):
            jobs.update_job(s, a, progress=0.5)
        assert jobs.cancel_job(s, c).status == "cancelled"  # queued: at once
        assert jobs.cancel_job(s, b).cancel_requested  # running: asked
        assert jobs.update_job(s, b, progress=0.1).cancel_requested
        assert jobs.mark_cancelled(s, b).status == "cancelled"
        assert jobs.claim_next_job(s, "w1") is None
        d = jobs.enqueue_job(s, "train").id
        jobs.claim_next_job(s, "w2")
        assert jobs.fail_stale_jobs(s, older_than_s=3600) == []
        assert jobs.fail_stale_jobs(s, worker_id="w2") == [d]
        got = jobs.get_job(s, d)
        assert got.status == "failed" and "w2 stopped" in got.error
        assert jobs.fail_job(s, a, "late").status == "done"  # an ended job stays ended
    with store.read() as s:
        assert [j.status for j in jobs.list_jobs(s)] == ["failed", "cancelled", "cancelled", "done"]


def test_stale_by_heartbeat(store):
    with store.session() as s:
        j = jobs.enqueue_job(s, "train").id
        jobs.claim_next_job(s, "w")
    with store.engine.begin() as c:
        c.execute(text("UPDATE jobs SET heartbeat = '2000-01-01 00:00:00' WHERE id = :i"), {"i": j})
    with store.session() as s:
        assert jobs.fail_stale_jobs(s, older_than_s=60) == [j]


def test_claim_exclusive_across_threads(store):
    n = 60
    with store.session() as s:
        for i in range(n):
            jobs.enqueue_job(s, "k", {"i": i})
    claimed: dict[str, list[int]] = {}

    def worker(name):
        got = claimed.setdefault(name, [])
        while True:
            job = store.transact(lambda s: jobs.claim_next_job(s, name))
            if job is None:
                return
            got.append(job.id)

    ts = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    all_ids = [i for v in claimed.values() for i in v]
    assert len(all_ids) == n and len(set(all_ids)) == n
    with store.engine.connect() as c:
        rows = c.execute(text("SELECT id, worker_id FROM jobs")).all()
    owner = {jid: w for w, ids in claimed.items() for jid in ids}
    assert {r.id: r.worker_id for r in rows} == owner


# ---------------------------------------------------------------- results


def test_leaderboard_latest_per_key(store, world):
    inserted = []
    rng = np.random.default_rng(0)
    with store.session() as s:
        for k in range(30):
            method = ["msp:T=1.0", "maxlogit", "head:1"][k % 3]
            ds = [world.eval, world.train][(k // 3) % 2]
            metrics = {"auprc": float(rng.random()), "fpr95": float(rng.random())}
            r = results.add_eval_result(
                s,
                world.model,
                method,
                ds,
                metrics,
                n_images=k,
                params={"T": 1.0},
                seconds=0.1,
                code_version="t",
            )
            inserted.append((r.id, method, ds, metrics, k))
        with pytest.raises(InputError, match="dataset id 999"):
            results.add_eval_result(s, world.model, "msp", 999, {}, 1)
    latest = {}
    for rid, method, ds, metrics, k in inserted:  # brute force: last insert per key wins
        latest[(method, ds)] = (rid, metrics, k)
    with store.read() as s:
        rows = results.leaderboard(s)
        names = {world.eval: "eval_ds", world.train: "train_ds"}
        assert len(rows) == len(latest) == 6
        for (method, ds), (rid, metrics, k) in latest.items():
            (row,) = [r for r in rows if r["method"] == method and r["dataset"] == names[ds]]
            assert row["result_id"] == rid and row["n_images"] == k
            assert row["auprc"] == metrics["auprc"] and row["model"] == "erf"
        assert len(results.leaderboard(s, dataset_ids=[world.eval], methods=["maxlogit"])) == 1
        assert len(results.result_history(s, world.model, "maxlogit", world.eval)) == 5


def test_non_finite_metrics_stored_as_null(store, world):
    with store.session() as s:
        r = results.add_eval_result(
            s, world.model, "msp", world.eval, {"fpr95": float("nan"), "auprc": np.float32(0.25)}, 2
        )
        rid = r.id
    with store.read() as s:
        (row,) = [x for x in results.leaderboard(s) if x["result_id"] == rid]
        assert row["fpr95"] is None and row["auprc"] == 0.25


# ---------------------------------------------------------------- corrupt rows


def test_corrupt_json_row_names_the_row(store, world):
    with store.session() as s:
        sid = pastes.create_sample(s, world.synth, "bg", {"a": {"k": 1}}).id
        rev_id = pastes.current_revision(s, pastes.get_paste(s, sid, "a").id).id
        fid = flags.add_flag(s, world.timgs[0], world.model, "msp", "ignore", _mask()).id
    with store.engine.begin() as c:
        c.execute(
            text("UPDATE paste_revisions SET record_json = '{broken' WHERE id = :i"), {"i": rev_id}
        )
        c.execute(text("UPDATE flags SET mask = :b WHERE id = :i"), {"b": b"junk", "i": fid})
    with store.read() as s:
        with pytest.raises(
            InputError, match=rf"paste_revisions row id={rev_id}: column 'record_json'"
        ):
            pastes.current_records(s, sid)
        # the rest of the row and the table stay readable
        assert pastes.list_samples(s)[0].id == sid
        with pytest.raises(InputError, match=rf"flags row id={fid}: .*AMK1"):
            s.get(Flag, fid).decoded_mask()
        assert flags.list_flags(s)[0].area == 40


def test_readers_do_not_wait_for_a_writer(store):
    other = Store(store.url)
    with store.session() as s:
        jobs.enqueue_job(s, "x")  # this transaction holds the write lock
        t0 = time.perf_counter()
        with other.read() as r:
            assert jobs.list_jobs(r) == []  # uncommitted work is invisible
        assert time.perf_counter() - t0 < 5  # a BEGIN IMMEDIATE reader would wait 30 s
    with other.read() as r:
        assert len(jobs.list_jobs(r)) == 1
    other.close()
