"""The job runner: a worker that claims jobs from the store's queue and runs registered kinds.

The kinds (``train_head``, ``synth_generate``, ``evaluate``) are in ``workbench.jobs.JOB_KINDS``;
the worker needs nothing of the UI, so ``anomseg worker`` runs headless. The worker:

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

import ctypes
import ctypes.util
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from anomseg.errors import AnomsegError, InputError
from db.jobs import (
    claim_next_job,
    fail_job,
    finish_job,
    mark_cancelled,
    reap_dead_jobs,
    update_job,
    worker_identity,
)
from training.fit import Cancelled
from workbench.jobs import JOB_KINDS, JobCancelled, JobContext, log_time


def return_freed_memory() -> bool:
    """Hand the C allocator's freed pages back to the OS (glibc ``malloc_trim``); False where
    there is no glibc.

    A job frees its buffers when it ends, but glibc keeps freed memory in the arenas of the
    threads that used it: after a real-ERFNet evaluation of two datasets the app's RSS stayed
    ~420 MB higher until trimmed (``benchmarks/bench_app_memory.py``).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


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
            return_freed_memory()
        return job_id

    def _heartbeat(self, ctx: JobContext, stop: threading.Event) -> None:
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
        def write(s: Any) -> None:
            tail = "\n".join((tb or "").strip().splitlines()[-12:])
            try:
                update_job(
                    s,
                    ctx.job_id,
                    message=f"failed: {error}"[:500],
                    log=f"{log_time()} ERROR {error}\n" + (tail + "\n" if tail else ""),
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
