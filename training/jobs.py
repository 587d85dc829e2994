"""The job runner: a worker that claims jobs from the store's queue and runs registered kinds.

A job kind is a function ``run(ctx: JobContext) -> dict | None`` registered in ``JOB_KINDS``
("train_head" here; "synth_generate", "evaluate" plug in the same way). The worker:

* claims the oldest queued job atomically (``db.jobs.claim_next_job``), so two workers never run
  the same job;
* heartbeats from a side thread every ``heartbeat_s`` while the job runs (also when the job is
  busy inside one long call) and picks up a cancel request on each beat;
* passes the job ``ctx.progress(fraction, message)`` (stored at most every ``min_report_s``, every
  message also appended to the bounded log tail) and ``ctx.cancelled()``;
* marks the job done with its result, cancelled when it raised ``JobCancelled`` (or training's
  ``Cancelled``), or failed with the error (one line for user errors, the traceback's last lines
  in the log tail otherwise);
* records itself as ``host:pid:boot_id:tag`` and, at start and then every few seconds while it
  runs (idle or busy), fails the jobs whose owner process is gone or whose heartbeat is older than
  ``stale_after_s`` (``db.jobs.reap_dead_jobs``): a worker killed with SIGKILL is recovered as
  soon as any worker is up again, not only once its heartbeat times out.

It runs as a thread inside the app (``Worker.start_thread``) or as ``anomseg worker``.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomseg.errors import AnomsegError, InputError
from anomseg.registry import Registry


class JobCancelled(AnomsegError):
    """Raised inside a job when its cancel was requested."""


JobFn = Callable[["JobContext"], dict[str, Any] | None]
JOB_KINDS: Registry[JobFn] = Registry("job kind")


def _now() -> str:
    return time.strftime("%H:%M:%S")


@dataclass
class JobContext:
    """What a running job sees: its parameters, progress reporting, the cancel flag."""

    store: Any
    workspace: Path
    job_id: int
    kind: str
    params: dict[str, Any]
    worker_id: str
    min_report_s: float = 0.5
    nproc: int = 1  # processes a job may spread over (the worker's --nproc): evaluate shards
    _cancel: threading.Event = field(default_factory=threading.Event)
    _last: float = 0.0
    _last_msg: str = ""

    def progress(self, fraction: float, message: str = "", force: bool = False) -> None:
        """Report progress in 0..1 with a message (rate-limited; raises JobCancelled if asked)."""
        from db.jobs import update_job

        frac = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if force or frac >= 1.0 or now - self._last >= self.min_report_s:
            self._last = now
            log = (
                f"{_now()} {frac:5.1%} {message}\n"
                if message and message != self._last_msg
                else None
            )
            self._last_msg = message or self._last_msg

            def write(s: Any) -> bool:
                return bool(
                    update_job(
                        s, self.job_id, progress=frac, message=message or None, log=log
                    ).cancel_requested
                )

            if self.store.transact(write):
                self._cancel.set()
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.job_id} cancelled")

    def log(self, line: str) -> None:
        """Append a line to the job's log tail."""
        from db.jobs import update_job

        self.store.transact(lambda s: update_job(s, self.job_id, log=f"{_now()} {line}\n"))

    def cancelled(self) -> bool:
        """True once a cancel was requested (seen by the heartbeat or a progress report)."""
        return self._cancel.is_set()


class Worker:
    """Claims and runs jobs; one job at a time."""

    def __init__(
        self,
        store: Any,
        workspace: str | os.PathLike,
        *,
        worker_id: str | None = None,
        kinds: list[str] | None = None,
        poll_s: float = 1.0,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 60.0,
        nproc: int = 1,
    ) -> None:
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise InputError(f"worker nproc {nproc!r}; expected an integer >= 1")
        self.nproc = nproc
        self.store = store
        self.workspace = Path(workspace)
        from db.jobs import worker_identity

        self.worker_id = worker_id or worker_identity(f"{id(self) & 0xFFFF:x}")
        self.kinds = kinds
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.current: JobContext | None = None
        # how often a live worker looks for dead ones: a few times per heartbeat timeout
        self.reap_every_s = max(min(heartbeat_s, stale_after_s / 2), 0.05)
        self._last_reap = float("-inf")
        self._reap_lock = threading.Lock()

    def recover(self) -> list[int]:
        """Fail jobs left running by a dead worker (owner gone or stale heartbeat) and the head
        versions they were training; returns their ids."""
        from db.jobs import reap_dead_jobs

        with self._reap_lock:
            self._last_reap = time.monotonic()
            return self.store.transact(
                lambda s: reap_dead_jobs(s, stale_after_s=self.stale_after_s)
            )

    def reap_if_due(self) -> list[int]:
        """``recover`` at most every ``reap_every_s`` (called from the poll loop and heartbeat)."""
        if time.monotonic() - self._last_reap < self.reap_every_s:
            return []
        try:
            return self.recover()
        except Exception:  # a transient store error must not stop the worker; retry next time
            return []

    def _known_kinds(self) -> list[str]:
        return [k for k in (self.kinds or JOB_KINDS.names()) if k in JOB_KINDS]

    def run_once(self) -> int | None:
        """Claim one queued job and run it to the end; returns its id, or None if none queued."""
        from db.jobs import claim_next_job

        self.reap_if_due()

        def claim(s: Any) -> tuple[int, str, dict[str, Any]] | None:
            job = claim_next_job(s, self.worker_id, self._known_kinds())
            return None if job is None else (job.id, job.kind, dict(job.params or {}))

        got = self.store.transact(claim)
        if got is None:
            return None
        job_id, kind, params = got
        ctx = JobContext(
            self.store, self.workspace, job_id, kind, params, self.worker_id, nproc=self.nproc
        )
        self.current = ctx
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(ctx, stop_beat), daemon=True)
        beat.start()
        try:
            self._run(ctx)
        finally:
            stop_beat.set()
            beat.join()
            self.current = None
        return job_id

    def _heartbeat(self, ctx: JobContext, stop: threading.Event) -> None:
        from db.jobs import update_job

        while not stop.wait(self.heartbeat_s):
            self.reap_if_due()  # a busy worker still notices other workers' deaths
            try:
                if self.store.transact(lambda s: update_job(s, ctx.job_id).cancel_requested):
                    ctx._cancel.set()
            except InputError:
                return  # the job ended meanwhile
            except Exception:  # a transient store error must not kill the job; retry next beat
                continue

    def _run(self, ctx: JobContext) -> None:
        from db.jobs import finish_job, mark_cancelled
        from training.trainer import Cancelled

        try:
            fn = JOB_KINDS.get(ctx.kind)
            ctx.progress(0.0, f"started {ctx.kind} on {self.worker_id}", force=True)
            result = fn(ctx)
        except (JobCancelled, Cancelled):
            self.store.transact(lambda s: mark_cancelled(s, ctx.job_id, "cancelled"))
            return
        except AnomsegError as exc:
            msg = str(exc)
            self._fail(ctx, msg, None)
            return
        except Exception as exc:
            self._fail(ctx, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            return
        self.store.transact(lambda s: finish_job(s, ctx.job_id, result or {}))

    def _fail(self, ctx: JobContext, error: str, tb: str | None) -> None:
        from db.jobs import fail_job, update_job

        def write(s: Any) -> None:
            tail = "\n".join((tb or "").strip().splitlines()[-12:])
            try:
                update_job(
                    s,
                    ctx.job_id,
                    message=f"failed: {error}"[:500],
                    log=f"{_now()} ERROR {error}\n" + (tail + "\n" if tail else ""),
                )
            except InputError:
                pass  # no longer running (cancelled meanwhile): still record the error below
            fail_job(s, ctx.job_id, error)

        self.store.transact(write)

    def run_forever(self, stop: threading.Event | None = None, max_jobs: int | None = None) -> int:
        """Poll and run jobs until ``stop`` is set (or ``max_jobs`` ran); returns jobs run."""
        stop = stop or threading.Event()
        self.recover()
        n = 0
        while not stop.is_set() and (max_jobs is None or n < max_jobs):
            if self.run_once() is None:
                stop.wait(self.poll_s)
            else:
                n += 1
        return n

    def start_thread(self) -> tuple[threading.Thread, threading.Event]:
        """Run the worker in a daemon thread (the app's in-process worker)."""
        stop = threading.Event()
        t = threading.Thread(
            target=self.run_forever,
            args=(stop,),
            daemon=True,
            name=f"anomseg-worker-{self.worker_id}",
        )
        t.start()
        return t, stop


# --- job kinds -----------------------------------------------------------------------------------

TRAIN_PARAM_KEYS = ("model", "activate", "nproc", "device", "evaluate")


@JOB_KINDS.register("train_head")
def train_head_job(ctx: JobContext) -> dict[str, Any]:
    """Train a head: params = model, head, epochs, lr, ... (TrainConfig fields), activate, nproc."""
    from training.trainer import train_head

    p = dict(ctx.params)
    if "model" not in p:
        raise InputError("train_head job needs a 'model' parameter")
    cfg = _train_config(p)
    return train_head(
        ctx.store,
        ctx.workspace,
        p["model"],
        cfg,
        activate=p.get("activate", False),
        nproc=int(p.get("nproc", 1)),
        device=str(p.get("device", "auto")),
        evaluate=bool(p.get("evaluate", True)),
        progress=ctx.progress,
        should_stop=ctx.cancelled,
        job_id=ctx.job_id,
    )


def _train_config(params: dict[str, Any]) -> Any:
    from dataclasses import fields

    from training.trainer import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - names - set(TRAIN_PARAM_KEYS))
    if unknown:
        raise InputError(
            f"unknown training parameter(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(names | set(TRAIN_PARAM_KEYS)))}"
        )
    return TrainConfig(**{k: v for k, v in params.items() if k in names})


def check_training_request(store: Any, model: str | int, head: str = "stats") -> dict[str, int]:
    """Cheap pre-check before queueing a training job: InputError when nothing could train."""
    from sqlalchemy import func, select

    from anomseg.models.heads import HEADS
    from db.catalog import get_model
    from db.flags import flags_for_training
    from db.models import SyntheticSample

    HEADS.get(head)
    with store.read() as s:
        row = get_model(s, model)
        name = row.name
        n_samples = s.scalar(
            select(func.count(SyntheticSample.id)).where(SyntheticSample.status == "accepted")
        )
        n_flags = len(flags_for_training(s, row.id))
    if not n_samples and not n_flags:
        raise InputError(
            f"no usable training samples for model {name!r}: accept some synthetic samples "
            "or flag regions on training images first (flags on eval/heldout images never train)"
        )
    return {"accepted_samples": int(n_samples or 0), "flags": n_flags}


def enqueue_training(store: Any, params: dict[str, Any]) -> int:
    """Validate a training request and queue it; returns the job id (no job on a bad request).

    A request identical to a queued or running one is merged into it (its id is returned).
    """
    from db.jobs import enqueue_job

    p = dict(params)
    if "model" not in p:
        raise InputError("a training request needs a 'model'")
    cfg = _train_config(p)
    rule = p.get("activate", False)
    if not isinstance(rule, bool):
        from training.trainer import ACTIVATION_RULES

        ACTIVATION_RULES.get(str(rule))
    check_training_request(store, p["model"], cfg.head)

    def write(s: Any) -> int:
        # two quick clicks (or a client retry) must not train two identical heads: an identical
        # request already queued or running answers with that job (same transaction, no race)
        from sqlalchemy import select

        from db.models import Job, dump_json

        same = s.scalar(
            select(Job.id)
            .where(
                Job.kind == "train_head",
                Job.status.in_(("queued", "running")),
                Job.params_json == dump_json(p),
            )
            .order_by(Job.id)
            .limit(1)
        )
        return int(same) if same is not None else enqueue_job(s, "train_head", p).id

    return store.transact(write)
