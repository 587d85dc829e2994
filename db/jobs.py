"""A store-backed job queue: enqueue, exclusive claim, progress / log tail, finish, cancel.

A worker claims with a guarded ``UPDATE ... WHERE id = :id AND status = 'queued'``: whatever the
backend's locking, only one UPDATE can see the row still queued, so two workers never run the same
job. Workers heartbeat while running. A job's owner is recorded as ``host:pid:boot_id[:tag]``, so
a dead owner is recognised two ways: on the same host and boot, its process is gone (at once,
whatever the heartbeat says); anywhere, its heartbeat is older than the timeout. ``reap_dead_jobs``
fails such jobs (and the head versions they were training) whenever it is called: by a worker at
start-up and while it runs, by a reader that notices (the Retrain tab's poll), and by a cancel.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.models import JOB_FINAL, JOB_STATUSES, Job, row_id, utcnow

LOG_TAIL_CHARS = 8000
STALE_AFTER_S = 60.0  # a heartbeat older than this is a dead worker's (workers beat every 5 s)


@cache
def boot_id() -> str:
    """This machine's boot id (Linux); '' where the system does not expose one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def this_host() -> str:
    """The host name as worker ids record it (no ':' so the id splits cleanly)."""
    return socket.gethostname().replace(":", "_")


def worker_identity(tag: str = "") -> str:
    """``host:pid:boot_id[:tag]``: enough to tell later whether the owner process still lives."""
    wid = f"{this_host()}:{os.getpid()}:{boot_id()}"
    return f"{wid}:{tag}"[:128] if tag else wid


def owner_gone(worker_id: str | None) -> bool:
    """True when ``worker_id``'s process is known to be dead: same host, and either another boot
    or no such pid. Another host (or an id of another form) is never known dead: its heartbeat
    decides."""
    parts = (worker_id or "").split(":")
    if len(parts) < 3 or parts[0] != this_host() or not parts[1].isdigit():
        return False
    pid, boot = int(parts[1]), parts[2]
    if boot_id() and boot and boot != boot_id():
        return True  # the machine rebooted since: every process of that boot is gone
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def enqueue_job(session: Session, kind: str, params: Mapping[str, Any] | None = None) -> Job:
    """Queue a job of ``kind`` with JSON parameters."""
    if not kind or len(kind) > 64:
        raise InputError(f"job kind {kind!r} must be 1..64 characters")
    job = Job(kind=kind, status="queued", progress=0.0, message="", log_tail="")
    job.params = dict(params or {})
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    """A job by id (fresh from the database)."""
    job = session.get(Job, row_id(job_id, "job id"), populate_existing=True)
    if job is None:
        raise InputError(f"job id {job_id} does not exist")
    return job


def list_jobs(
    session: Session, *, status: str | None = None, kind: str | None = None, limit: int = 50
) -> list[Job]:
    """Most recent jobs first."""
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        if status not in JOB_STATUSES:
            raise InputError(f"job status {status!r} is unknown; expected one of {JOB_STATUSES}")
        q = q.where(Job.status == status)
    if kind is not None:
        q = q.where(Job.kind == kind)
    return list(session.scalars(q))


def claim_next_job(
    session: Session, worker_id: str, kinds: Iterable[str] | None = None
) -> Job | None:
    """Atomically take the oldest queued job (of ``kinds``) for ``worker_id``; None if none."""
    kinds = list(kinds) if kinds is not None else None
    for _ in range(20):
        q = select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(1)
        if kinds is not None:
            q = q.where(Job.kind.in_(kinds))
        job_id = session.scalar(q)
        if job_id is None:
            return None
        now = utcnow()
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="running", worker_id=worker_id, started=now, heartbeat=now)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:
            return get_job(session, job_id)
        # another worker won this one; look again
    return None


def _running(session: Session, job_id: int) -> Job:
    job = get_job(session, job_id)
    if job.status != "running":
        raise InputError(f"job {job_id} is {job.status!r}, not running")
    return job


def update_job(
    session: Session,
    job_id: int,
    *,
    progress: float | None = None,
    message: str | None = None,
    log: str | None = None,
) -> Job:
    """Report progress (0..1), a status message and/or append to the bounded log tail.

    Also refreshes the heartbeat. The returned job's ``cancel_requested`` tells the worker to stop.
    """
    job = _running(session, job_id)
    if progress is not None:
        p = float(progress)
        if not 0.0 <= p <= 1.0:
            raise InputError(f"job progress must be within 0..1, got {progress}")
        job.progress = p
    if message is not None:
        job.message = message
    if log:
        tail = (job.log_tail or "") + log
        job.log_tail = tail[-LOG_TAIL_CHARS:]
    job.heartbeat = utcnow()
    session.flush()
    return job


def finish_job(session: Session, job_id: int, result: Mapping[str, Any] | None = None) -> Job:
    """Mark a running job done with its result."""
    job = _running(session, job_id)
    job.status, job.progress, job.finished = "done", 1.0, utcnow()
    job.result = dict(result) if result is not None else None
    session.flush()
    return job


def fail_job(session: Session, job_id: int, error: str) -> Job:
    """Mark a job failed with its error (no-op on a job that already ended)."""
    job = get_job(session, job_id)
    if job.status in JOB_FINAL:
        return job
    job.status, job.error, job.finished = "failed", error, utcnow()
    session.flush()
    return job


def cancel_job(session: Session, job_id: int, *, stale_after_s: float = STALE_AFTER_S) -> Job:
    """Cancel: a queued job or a dead worker's job is cancelled at once, a running one is asked
    to stop."""
    job = get_job(session, job_id)
    if job.status == "queued":
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished=utcnow())
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:
            return get_job(session, job_id)
        job = get_job(session, job_id)  # claimed meanwhile: fall through to a request
    if job.status == "running":
        job.cancel_requested = True
        if _death_of(job, utcnow() - timedelta(seconds=stale_after_s)) is not None:
            # nobody will ever acknowledge the request: end it here
            job.status, job.message, job.finished = "cancelled", "cancelled (worker gone)", utcnow()
            _fail_orphan_heads(session, [job.id])
        session.flush()
    return job


def mark_cancelled(session: Session, job_id: int, message: str = "cancelled") -> Job:
    """The worker acknowledges a cancel request and stops."""
    job = _running(session, job_id)
    job.status, job.message, job.finished = "cancelled", message, utcnow()
    session.flush()
    return job


def fail_stale_jobs(
    session: Session, *, worker_id: str | None = None, older_than_s: float | None = None
) -> list[int]:
    """Fail running jobs of a (restarted) worker and/or with a heartbeat older than N seconds."""
    if worker_id is None and older_than_s is None:
        raise InputError("fail_stale_jobs needs worker_id and/or older_than_s")
    q = select(Job).where(Job.status == "running")
    if worker_id is not None:
        q = q.where(Job.worker_id == worker_id)
    if older_than_s is not None:
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        q = q.where((Job.heartbeat.is_(None)) | (Job.heartbeat < cutoff))
    ids = []
    now = utcnow()
    for job in session.scalars(q.with_for_update()):
        job.status, job.finished = "failed", now
        job.error = f"worker {job.worker_id or '?'} stopped while the job was running"
        ids.append(job.id)
    session.flush()
    return ids


def _is_this_process(worker_id: str | None) -> bool:
    parts = (worker_id or "").split(":")
    return (
        len(parts) >= 3
        and parts[0] == this_host()
        and parts[1] == str(os.getpid())
        and parts[2] == boot_id()
    )


def _death_of(job: Job, cutoff: Any) -> str | None:
    """Why a running job's worker is dead, or None while it may be alive."""
    if _is_this_process(job.worker_id):
        # we are that process, so it lives: a heartbeat that lagged under load (a busy GIL, a
        # slow disk) must not make a worker fail its own job
        return None
    if owner_gone(job.worker_id):
        pid = (job.worker_id or "").split(":")[1]
        return f"worker {job.worker_id} stopped while the job was running (process {pid} is gone)"
    if job.heartbeat is None or job.heartbeat < cutoff:
        return (
            f"worker {job.worker_id or '?'} stopped while the job was running (no heartbeat "
            f"since {job.heartbeat:%H:%M:%S} UTC)"
            if job.heartbeat is not None
            else f"worker {job.worker_id or '?'} stopped while the job was running (no heartbeat)"
        )
    return None


def _fail_orphan_heads(session: Session, job_ids: list[int]) -> None:
    # their trainer died, so they would otherwise stay 'training' for ever
    from db.heads import fail_head_version
    from db.models import HeadVersion

    if not job_ids:
        return
    q = select(HeadVersion.id).where(
        HeadVersion.job_id.in_(job_ids), HeadVersion.status == "training"
    )
    for head_id in list(session.scalars(q)):
        fail_head_version(session, head_id)


def reap_dead_jobs(session: Session, *, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Fail every running job whose owner is gone or whose heartbeat is older than
    ``stale_after_s`` (and the head versions they were training); returns their ids."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    ids = []
    for job in session.scalars(select(Job).where(Job.status == "running").with_for_update()):
        why = _death_of(job, cutoff)
        if why is None:
            continue
        job.status, job.finished, job.error = "failed", utcnow(), why
        ids.append(job.id)
    _fail_orphan_heads(session, ids)
    session.flush()
    return ids
