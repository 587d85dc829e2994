"""Jobs as the tabs follow them: state, the newest of some kinds, cancelling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dashboard.services.context import ServiceContext
from db import jobs as dbjobs


@dataclass
class JobState:
    """A job row as the Retrain tab shows it."""

    id: int
    kind: str
    status: str
    progress: float
    message: str
    log_tail: str
    error: str | None
    result: dict | None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


class JobService:
    """Read and cancel queued jobs (queueing is the tab's own service: retrain, curate, ...)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def job_state(self, job_id: int) -> JobState:
        """A job's status, progress and log tail, fresh from the store."""
        with self.store.read() as s:
            running = dbjobs.get_job(s, int(job_id)).status == "running"
        if running:  # a poll that finds the worker dead ends the job instead of waiting on it
            self.store.transact(lambda s: dbjobs.reap_dead_jobs(s))
        with self.store.read() as s:
            j = dbjobs.get_job(s, int(job_id))
            return JobState(
                j.id,
                j.kind,
                j.status,
                float(j.progress),
                j.message or "",
                j.log_tail or "",
                j.error,
                j.result,
            )

    def latest_job(
        self, kinds: Iterable[str] = ("train_head",), running_only: bool = False
    ) -> int | None:
        """The newest job of some kinds (only queued/running ones if asked)."""
        with self.store.read() as s:
            for j in dbjobs.list_jobs(s, limit=50):
                if j.kind not in kinds:
                    continue
                if running_only and j.status not in ("queued", "running"):
                    continue
                return int(j.id)
        return None

    def cancel_job(self, job_id: int) -> None:
        """Cancel a queued job, or ask a running one to stop."""
        self.store.transact(lambda s: dbjobs.cancel_job(s, int(job_id)) and None)
