"""``anomseg worker``: run queued background jobs (head training, ...) from the store."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anomseg worker``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workspace", help="workspace folder (store, caches, checkpoints)")
    where.add_argument("--url", help="database URL (the workspace is then ./workspace)")
    parser.add_argument(
        "--kinds", default=None, help="comma-separated job kinds to run (default: all registered)"
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat period, seconds")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=60.0,
        help="fail running jobs whose heartbeat is older (a killed worker)",
    )
    parser.add_argument("--once", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes an evaluate job shards its images over (metrics merged exactly)",
    )


def run(args: argparse.Namespace) -> int:
    """Poll the queue and run jobs until interrupted (or, with --once, until it is empty)."""
    from pathlib import Path

    from db.engine import default_workspace
    from db.store import Store
    from workbench.jobs import JOB_KINDS
    from workbench.worker import Worker

    workspace = Path(args.workspace) if args.workspace else default_workspace()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    for k in kinds or []:
        JOB_KINDS.get(k)  # unknown kind -> clear error listing the known ones
    store = Store.open(url=args.url, workspace=workspace)
    worker = Worker(
        store,
        workspace,
        kinds=kinds,
        poll_s=args.poll,
        heartbeat_s=args.heartbeat,
        stale_after_s=args.stale_after,
        nproc=args.nproc,
    )
    n = 0
    try:
        failed = worker.recover()
        if failed:
            print(f"marked {len(failed)} job(s) of a stopped worker failed: {failed}")
        print(
            f"worker {worker.worker_id} on {store.url.split('://')[0]} store; kinds: "
            f"{', '.join(kinds or JOB_KINDS.names())}"
        )
        while True:
            job_id = worker.run_once()
            if job_id is not None:
                n += 1
                print(f"job {job_id} finished")
            elif args.once:
                break
            else:
                import time

                time.sleep(args.poll)
    except KeyboardInterrupt:
        print("worker stopped")
    finally:
        store.close()
    print(f"{n} job(s) run")
    return 0
