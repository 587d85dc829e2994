"""Issue 15 §1: a crashed job is recovered whenever its death is noticed, not only by a worker
started after the heartbeat timeout.

The owner of a running job is recorded as ``host:pid:boot_id``; a job whose owner process is gone
(same host, same boot) is dead at once, one whose heartbeat is older than the timeout is dead
whoever owned it. The central test kills a real worker process with SIGKILL and starts the next
worker 2 s later, far inside the 60 s heartbeat timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from db import Store, catalog, heads
from db import jobs as q
from db.models import HeadVersion, Job, utcnow
from workbench.worker import Worker

REPO = Path(__file__).resolve().parent.parent

# a worker process whose only job kind reports progress for ever (until it is killed)
CHILD = textwrap.dedent(
    """
    import sys, time
    from db import Store
    from workbench.jobs import JOB_KINDS
    from workbench.worker import Worker

    @JOB_KINDS.register("test_endless")
    def endless(ctx):
        i = 0
        while True:
            i += 1
            ctx.progress(min(0.33 + i * 1e-4, 0.9), f"epoch {i}")
            time.sleep(0.05)

    store = Store.open(workspace=sys.argv[1])
    Worker(store, sys.argv[1], kinds=["test_endless"], poll_s=0.05, heartbeat_s=0.2).run_forever()
    """
)


@pytest.fixture
def store(tmp_path):
    st = Store.open(workspace=tmp_path)
    yield st
    st.close()


def _job(store, job_id) -> Job:
    with store.read() as s:
        job = q.get_job(s, job_id)
        s.expunge(job)
        return job


def _training_head(store, job_id: int) -> int:
    """A head version being trained by ``job_id`` (what a real retrain creates first)."""
    with store.session() as s:
        m = catalog.register_model(s, f"m{job_id}", "erfnet", None, sha256="cd" * 32)
        return heads.create_head_version(s, m.id, "stats", job_id=job_id).id


def _head_status(store, head_id: int) -> str:
    with store.read() as s:
        return s.get(HeadVersion, head_id).status


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _claimed_by(store, worker_id: str, heartbeat_age_s: float = 0.0) -> int:
    jid = store.transact(lambda s: q.enqueue_job(s, "test_nobody_runs", {}).id)
    store.transact(lambda s: q.claim_next_job(s, worker_id, ["test_nobody_runs"]))

    def age(s):
        s.get(Job, jid).heartbeat = utcnow() - timedelta(seconds=heartbeat_age_s)

    store.transact(age)
    return jid


def test_worker_id_records_host_pid_and_boot(store, tmp_path):
    w = Worker(store, tmp_path)
    host, pid, boot = w.worker_id.split(":")[:3]
    assert (host, int(pid), boot) == (q.this_host(), os.getpid(), q.boot_id())
    assert q.owner_gone(w.worker_id) is False


def test_kill9_then_restart_within_the_timeout_recovers_the_job(store, tmp_path):
    jid = store.transact(lambda s: q.enqueue_job(s, "test_endless", {}).id)
    head_id = _training_head(store, jid)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "child.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, env=env, stdout=f, stderr=f
        )
    try:
        deadline = time.monotonic() + 60
        while not (_job(store, jid).status == "running" and _job(store, jid).progress > 0.33):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    job = _job(store, jid)
    assert job.status == "running" and job.worker_id.split(":")[1] == str(proc.pid)
    time.sleep(2.0)  # "start it again 2 s later": the heartbeat is 2 s old, the timeout 60 s

    w = Worker(store, tmp_path, kinds=["test_endless"], stale_after_s=60)
    assert w.recover() == [jid]
    job = _job(store, jid)
    assert job.status == "failed" and f":{proc.pid}:" in job.error and "gone" in job.error
    assert _head_status(store, head_id) == "failed"


def test_a_running_worker_reaps_dead_jobs_continuously(store, tmp_path):
    w = Worker(store, tmp_path, kinds=["test_steps_unused"], poll_s=0.05, stale_after_s=2.0)
    stop = threading.Event()
    t = threading.Thread(target=w.run_forever, args=(stop,), daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # the worker is up and idle; its start-up recovery found nothing
        gone = _claimed_by(store, f"{q.this_host()}:{_dead_pid()}:{q.boot_id()}")
        foreign = _claimed_by(store, "elsewhere:4242:some-boot", heartbeat_age_s=5.0)
        fresh = _claimed_by(store, "elsewhere:4243:some-boot")
        deadline = time.monotonic() + 10
        while {_job(store, gone).status, _job(store, foreign).status} != {"failed"}:
            assert time.monotonic() < deadline, (_job(store, gone).status, _job(store, foreign))
            time.sleep(0.05)
        assert "gone" in _job(store, gone).error
        assert "heartbeat" in _job(store, foreign).error
        assert _job(store, fresh).status == "running"  # another host, alive by its heartbeat
    finally:
        stop.set()
        t.join(10)


def test_cancel_of_a_dead_job_ends_it_at_once(store):
    dead = _claimed_by(store, f"{q.this_host()}:{_dead_pid()}:{q.boot_id()}")
    head_id = _training_head(store, dead)
    stale = _claimed_by(store, "elsewhere:1:b", heartbeat_age_s=3600)
    alive = _claimed_by(store, f"{q.this_host()}:{os.getpid()}:{q.boot_id()}")
    for jid in (dead, stale, alive):
        store.transact(lambda s, j=jid: q.cancel_job(s, j))
    assert _job(store, dead).status == "cancelled" and _job(store, dead).finished is not None
    assert _job(store, stale).status == "cancelled"
    assert _head_status(store, head_id) == "failed"
    # a live owner is asked to stop and acknowledges it itself
    job = _job(store, alive)
    assert job.status == "running" and job.cancel_requested


def test_a_rebooted_host_owns_nothing(store):
    jid = _claimed_by(store, f"{q.this_host()}:{os.getpid()}:a-previous-boot")
    assert q.owner_gone(f"{q.this_host()}:{os.getpid()}:a-previous-boot") is True
    assert store.transact(lambda s: q.reap_dead_jobs(s, stale_after_s=60)) == [jid]


def test_the_retrain_tab_poll_notices_a_dead_job(tmp_path):
    from dashboard.services import Services
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    try:
        jid = _claimed_by(ws.store, f"{q.this_host()}:{_dead_pid()}:{q.boot_id()}")
        state = Services(ws).jobs.job_state(jid)
        assert state.status == "failed" and state.finished and "gone" in (state.error or "")
    finally:
        ws.close()


def test_legacy_worker_ids_still_recover_by_heartbeat(store, tmp_path):
    old = _claimed_by(store, "oldhost:77:1a2b", heartbeat_age_s=600)
    assert q.owner_gone("oldhost:77:1a2b") is False  # another host: only the heartbeat tells
    assert Worker(store, tmp_path, stale_after_s=60).recover() == [old]


def test_a_worker_never_reaps_its_own_job_when_its_heartbeat_lags(store, tmp_path):
    """Under load a heartbeat can lag past a short timeout; the owner process is alive (it is
    the one reaping), so its job stays running while another owner's stale job is failed."""
    mine = _claimed_by(store, q.worker_identity("busy"), heartbeat_age_s=30)
    other = _claimed_by(store, "elsewhere:9:b", heartbeat_age_s=30)
    assert Worker(store, tmp_path, stale_after_s=1).recover() == [other]
    assert _job(store, mine).status == "running"
