"""Job runner: progress / log tail, crash -> failed, cancel, stale-heartbeat recovery, and a
failing training job that leaves the active head alone."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch

from anomseg.errors import InputError
from db import Store, catalog, heads
from db import jobs as q
from db.models import HeadVersion, Job, utcnow
from workbench.jobs import JOB_KINDS, JobCancelled, enqueue_training
from workbench.worker import Worker


def _kind(name):
    def deco(fn):
        if name not in JOB_KINDS:
            JOB_KINDS.register(name, fn)
        return fn

    return deco


@_kind("test_steps")
def _steps(ctx):
    for i in range(4):
        ctx.progress(i / 4, f"step {i}", force=True)
    return {"sum": sum(ctx.params["values"])}


@_kind("test_crash")
def _crash(ctx):
    ctx.progress(0.5, "about to fail", force=True)
    raise ValueError("boom at half way")


@_kind("test_user_error")
def _user_error(ctx):
    raise InputError("dataset 'x' has no images; expected at least one")


@_kind("test_loop_forever")
def _loop(ctx):
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        if ctx.params.get("quiet"):
            # a long computation that never reports: only the heartbeat sees the cancel
            if ctx.cancelled():
                raise JobCancelled("stopped")
        else:
            ctx.progress(0.1, "working")
        time.sleep(0.02)
    return {"finished": True}


@pytest.fixture
def store(tmp_path):
    st = Store.open(workspace=tmp_path)
    yield st
    st.close()


def _enqueue(store, kind, params=None):
    return store.transact(lambda s: q.enqueue_job(s, kind, params or {}).id)


def _job(store, job_id) -> Job:
    with store.read() as s:
        job = q.get_job(s, job_id)
        s.expunge(job)
        return job


def test_job_runs_with_progress_and_result(store, tmp_path):
    jid = _enqueue(store, "test_steps", {"values": [1, 2, 3]})
    w = Worker(store, tmp_path, kinds=["test_steps"])
    assert w.run_once() == jid
    job = _job(store, jid)
    assert (job.status, job.progress, job.result) == ("done", 1.0, {"sum": 6})
    assert [ln.rsplit("% ", 1)[-1] for ln in job.log_tail.splitlines()][-4:] == [
        "step 0",
        "step 1",
        "step 2",
        "step 3",
    ]
    assert job.worker_id == w.worker_id and job.heartbeat is not None and job.finished
    assert w.run_once() is None  # queue empty


def test_crash_and_user_error_mark_failed(store, tmp_path):
    crash = _enqueue(store, "test_crash")
    user = _enqueue(store, "test_user_error")
    w = Worker(store, tmp_path, kinds=["test_crash", "test_user_error"])
    w.run_once(), w.run_once()
    job = _job(store, crash)
    assert job.status == "failed" and job.error == "ValueError: boom at half way"
    assert "about to fail" in job.log_tail and "raise ValueError" in job.log_tail
    job = _job(store, user)
    assert job.status == "failed"
    assert job.error == "dataset 'x' has no images; expected at least one"
    assert "Traceback" not in job.log_tail


@pytest.mark.parametrize("quiet", [False, True])
def test_cancel_running_job(store, tmp_path, quiet):
    jid = _enqueue(store, "test_loop_forever", {"quiet": quiet})
    w = Worker(store, tmp_path, kinds=["test_loop_forever"], heartbeat_s=0.1)
    t = threading.Thread(target=w.run_once)
    t.start()
    deadline = time.monotonic() + 10
    while _job(store, jid).status != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    store.transact(lambda s: q.cancel_job(s, jid))
    t.join(15)
    assert not t.is_alive()
    assert _job(store, jid).status == "cancelled"


def test_dead_worker_jobs_fail_on_start(store, tmp_path):
    dead = _enqueue(store, "test_steps", {"values": []})
    alive = _enqueue(store, "test_steps", {"values": []})
    store.transact(lambda s: q.claim_next_job(s, "host:1:dead"))
    store.transact(lambda s: q.claim_next_job(s, "host:2:alive"))

    def age(s):
        s.get(Job, dead).heartbeat = utcnow() - timedelta(seconds=600)

    store.transact(age)
    w = Worker(store, tmp_path, kinds=["test_steps"], stale_after_s=60)
    assert w.recover() == [dead]
    job = _job(store, dead)
    assert job.status == "failed" and "host:1:dead" in job.error
    assert _job(store, alive).status == "running"


def test_unknown_kind_is_not_claimed(store, tmp_path):
    jid = _enqueue(store, "no_such_kind")
    assert Worker(store, tmp_path).run_once() is None
    assert _job(store, jid).status == "queued"


def _model_with_active_head(store, tmp_path):
    from anomseg.models.heads import StatsHead, save_head

    ckpt = tmp_path / "v1.safetensors"
    digest = save_head(StatsHead(), ckpt, model="m", version=1)
    with store.session() as s:
        m = catalog.register_model(
            s, "m", "erfnet", "/nonexistent.pth", sha256="ab" * 32, input_size=(8, 8)
        )
        hv = heads.create_head_version(s, m.id, "stats")
        heads.finish_head_version(s, hv.id, checkpoint_path=str(ckpt), checkpoint_sha256=digest)
        heads.activate_head(s, hv.id)
        return m.id, hv.id


def test_no_usable_samples_leaves_no_job(store, tmp_path):
    model_id, v1 = _model_with_active_head(store, tmp_path)
    with pytest.raises(InputError, match="no usable training samples for model 'm'"):
        enqueue_training(store, {"model": "m", "head": "stats"})
    with pytest.raises(InputError, match="unknown training parameter"):
        enqueue_training(store, {"model": "m", "epoch": 3})
    with store.read() as s:
        assert q.list_jobs(s) == []
    # queued anyway (e.g. another client): the job fails with the same message, no head row
    jid = _enqueue(store, "train_head", {"model": "m"})
    Worker(store, tmp_path).run_once()
    job = _job(store, jid)
    assert job.status == "failed" and job.error.startswith("no usable training samples")
    with store.read() as s:
        assert [h.id for h in heads.list_head_versions(s, model_id)] == [v1]
        assert heads.active_head(s, model_id).id == v1


def test_training_crash_keeps_active_head(store, tmp_path, monkeypatch):
    import training.dataset as ds
    import training.trainer as tr

    model_id, v1 = _model_with_active_head(store, tmp_path)
    n = 64
    toy = ds.PixelSet(
        torch.rand(n, 4),
        (torch.arange(n) % 2).float(),
        torch.ones(n),
        torch.zeros(n, dtype=torch.long),
        torch.arange(n),
        (8, 8),
    )
    monkeypatch.setattr(tr, "build_pixel_set", lambda *a, **k: (toy, ds.Snapshot()))

    def crash(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tr, "train_pixels", crash)
    jid = _enqueue(store, "train_head", {"model": "m", "activate": True, "evaluate": False})
    Worker(store, tmp_path).run_once()
    job = _job(store, jid)
    assert job.status == "failed" and "simulated" in job.error
    with store.read() as s:
        versions = {h.version: h.status for h in heads.list_head_versions(s, model_id)}
        assert versions == {1: "ready", 2: "failed"}
        assert heads.active_head(s, model_id).id == v1
        assert s.get(HeadVersion, v1).active
    assert not list((tmp_path / "heads").rglob("*.safetensors"))  # no checkpoint written
