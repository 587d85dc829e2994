"""Several processes writing at once (flags, paste edits / undos, job queue) lose nothing and
never surface "database is locked". SQLite always; PostgreSQL when $ANOMSEG_TEST_PG_URL is set
(.ci/postgres.sh starts one for CI).

Each writer works through plain ``store.session()`` transactions (no retry wrapper), so any
lock error would fail the test. The expected end state is computed independently: each writer
replays its own paste edits/undos on a plain-Python model of the history.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback

import numpy as np
import pytest
import sqlalchemy as sa

H, W = 48, 64
PG_URL = os.environ.get("ANOMSEG_TEST_PG_URL")


def _flag_mask(wid: int, i: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[wid % H, : 1 + i % W] = True
    m[(i % (H - 10)) + 5, 10:20] = True
    return m


def _writer(url: str, wid: int, n: int, ids: dict, out: mp.Queue) -> None:
    """One writer process: n mixed operations, then drain the job queue."""
    try:
        from db import Store, flags, jobs, pastes

        store = Store(url)
        own = ids["own"][wid]
        model: dict[int, tuple[int | None, dict | None]] = {1: (None, {"w": wid, "i": -1})}
        cur = 1
        claimed: list[int] = []
        stats = {"flags": 0, "shared": 0, "jobs": 0}

        def work_job(s, jid: int) -> None:
            jobs.update_job(s, jid, progress=0.5, message="half", log=f"{wid} took {jid}\n")
            jobs.finish_job(s, jid, {"by": wid})

        for i in range(n):
            op = i % 4
            if op == 0:
                with store.session() as s:
                    flags.add_flag(
                        s,
                        ids["image"],
                        ids["model"],
                        "msp:T=1.0",
                        "false_positive",
                        _flag_mask(wid, i),
                        author=f"w{wid}",
                        note=f"{wid}:{i}",
                    )
                stats["flags"] += 1
            elif op == 1:
                with store.session() as s:
                    pastes.edit_paste(s, ids["shared"], {"w": wid, "i": i}, author=f"w{wid}")
                stats["shared"] += 1
            elif op == 2:
                with store.session() as s:
                    if i % 3 == 2 and model[cur][0] is not None:
                        pastes.undo_paste(s, own)
                        cur = model[cur][0]
                    else:
                        rev = pastes.edit_paste(s, own, {"w": wid, "i": i})
                        number = max(model) + 1
                        assert rev.number == number
                        model[number] = (cur, {"w": wid, "i": i})
                        cur = number
            else:
                with store.session() as s:
                    jobs.enqueue_job(s, "stress", {"w": wid, "i": i})
                stats["jobs"] += 1
                with store.session() as s:
                    job = jobs.claim_next_job(s, f"w{wid}")
                    jid = job.id if job is not None else None
                if jid is not None:
                    claimed.append(jid)
                    with store.session() as s:
                        work_job(s, jid)
        while True:  # drain what the others left queued
            with store.session() as s:
                job = jobs.claim_next_job(s, f"w{wid}")
                jid = job.id if job is not None else None
            if jid is None:
                break
            claimed.append(jid)
            with store.session() as s:
                work_job(s, jid)
        store.close()
        out.put(("ok", wid, {"claimed": claimed, "model": model, "cur": cur, **stats}))
    except BaseException:
        out.put(("error", wid, traceback.format_exc()))


def _fresh_pg(url: str) -> None:
    from db.models import Base

    eng = sa.create_engine(url)
    with eng.begin() as c:
        Base.metadata.drop_all(c)
        c.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    eng.dispose()


def _setup(url: str, n_workers: int) -> dict:
    from db import Store, catalog, pastes

    store = Store.open(url=url)
    with store.session() as s:
        ds = catalog.register_dataset(s, "d", "train", "/nonexistent", check_root=False)
        img = catalog.add_image(s, ds, "a.png", "0" * 64, W, H)
        syn = catalog.register_dataset(s, "syn", "synthetic", "/nonexistent", check_root=False)
        m = catalog.register_model(s, "m", "erfnet")
        smp = pastes.create_sample(s, syn.id, "bg", {"shared": {"w": -1, "i": -1}})
        own = {
            w: pastes.add_paste(s, smp.id, f"own{w}", {"w": w, "i": -1}).id
            for w in range(n_workers)
        }
        ids = {
            "image": img.id,
            "model": m.id,
            "sample": smp.id,
            "shared": pastes.get_paste(s, smp.id, "shared").id,
            "own": own,
        }
    store.close()
    return ids


def _run(url: str, n_workers: int, n_ops: int) -> None:
    from db import Store, flags, jobs, pastes

    ids = _setup(url, n_workers)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, n_ops, ids, out)) for w in range(n_workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    reports = {}
    try:
        for _ in procs:
            status, wid, payload = out.get(timeout=240)
            assert status == "ok", f"writer {wid} failed:\n{payload}"
            reports[wid] = payload
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    elapsed = time.perf_counter() - t0
    print(f"{n_workers} writers x {n_ops} ops on {url.split(':')[0]}: {elapsed:.1f} s")

    store = Store(url)
    with store.read() as s:
        # flags: every one present, with the pixels that were written
        got = flags.list_flags(s)
        want_notes = {f"{w}:{i}" for w in range(n_workers) for i in range(0, n_ops, 4)}
        assert len(got) == len(want_notes) == sum(r["flags"] for r in reports.values())
        assert {f.note for f in got} == want_notes
        for f in got[:: max(1, len(got) // 20)]:
            w, i = map(int, f.note.split(":"))
            assert np.array_equal(f.decoded_mask(), _flag_mask(w, i))

        # the shared paste: one linear history holding every edit exactly once
        hist = pastes.paste_history(s, ids["shared"])
        n_shared = sum(r["shared"] for r in reports.values())
        assert [h.number for h in hist] == list(range(1, n_shared + 2))
        assert all(h.parent_number == h.number - 1 for h in hist[1:])
        edits = {(h.record["w"], h.record["i"]) for h in hist[1:]}
        assert edits == {(w, i) for w in range(n_workers) for i in range(1, n_ops, 4)}
        assert pastes.current_revision(s, ids["shared"]).number == n_shared + 1

        # each worker's own paste: exactly the history its replayed model predicts
        for w, rep in reports.items():
            model = {int(k): v for k, v in rep["model"].items()}
            hist = pastes.paste_history(s, ids["own"][w])
            assert {h.number: (h.parent_number, h.record) for h in hist} == model
            assert pastes.current_revision(s, ids["own"][w]).number == rep["cur"]

        # jobs: all done, each claimed by exactly one worker, the one that finished it
        all_jobs = jobs.list_jobs(s, limit=100000)
        assert len(all_jobs) == sum(r["jobs"] for r in reports.values())
        claims = [(j, w) for w, r in reports.items() for j in r["claimed"]]
        assert len(claims) == len({j for j, _ in claims}) == len(all_jobs)
        owner = dict(claims)
        for job in all_jobs:
            assert job.status == "done" and job.progress == 1.0
            assert job.worker_id == f"w{owner[job.id]}" and job.result == {"by": owner[job.id]}
            assert f"{owner[job.id]} took {job.id}" in job.log_tail
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.sqlite'}"
    if not PG_URL:
        pytest.skip("ANOMSEG_TEST_PG_URL is not set (.ci/postgres.sh sets it)")
    _fresh_pg(PG_URL)
    return PG_URL


def test_two_writers_lose_nothing(db_url):
    _run(db_url, n_workers=2, n_ops=100)


@pytest.mark.slow
def test_four_writers_x_200_mixed_writes(db_url):
    _run(db_url, n_workers=4, n_ops=200)


def _opener(url: str, out: mp.Queue, barrier) -> None:
    try:
        from db import Store, current

        barrier.wait(60)  # all imports done: open at the same moment
        st = Store.open(url=url)
        out.put(("ok", current(st)))
        st.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


@pytest.mark.slow
def test_simultaneous_first_open_migrates_once(db_url):
    """The app and workers starting together on a new database all end at head."""
    from db import head_revision

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_opener, args=(db_url, out, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(status == "ok" for status, _ in got), got
    assert {rev for _, rev in got} == {head_revision()}
