"""Evaluation over several processes: shard the images, merge the metric states on rank 0.

Every rank runs the ordinary ``anomseg.evaluate.evaluate`` on its shard (images ``rank, rank +
world, ...`` of each dataset) and ships its ``DatasetEval`` — the metric objects of every method,
anything with ``merge()`` — to rank 0 (``anomseg.evaluate.merge_on_rank0``), which merges them
and computes the rows a single process would have computed. Exact mode merges the same pixel pools and streaming histograms add
exactly, so the numbers are the single-process numbers; what may differ is the forward itself,
which rounds differently with another number of threads per process (measured: 6e-17 on
RoadAnomaly21 AuPRC; the tests allow 1e-12).

Two ways in, one code path:

* ``evaluate_nproc(N, setup, ...)`` starts N local processes (``anomseg eval --nproc N``, the
  Leaderboard's evaluate job under ``anomseg worker --nproc N``); ``setup(rank)`` is a picklable
  callable that builds that rank's ``(predictor, extra scorers)``;
* under ``torchrun`` the launched command itself is a rank: ``env_rank_world()`` reads RANK /
  WORLD_SIZE and ``init_from_env()`` joins the group (``anomseg eval`` does this by itself).

The group is always gloo: only metric states (CPU arrays) travel, also when the forwards run on
GPUs (one per rank).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from typing import Any

from anomseg.errors import AnomsegError, InputError
from anomseg.evaluate import evaluate

Setup = Callable[[int], tuple[Any, dict[str, Any] | None]]


def env_rank_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) set by torchrun, or (0, 1) outside it."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}; "
            "expected integers (as torchrun sets them)"
        ) from None


def init_from_env() -> tuple[int, int]:
    """Join the torchrun group (gloo, env:// rendezvous) when WORLD_SIZE > 1; (rank, world)."""
    import torch.distributed as dist

    rank, world = env_rank_world()
    if world > 1 and not dist.is_initialized():
        _share_cores(world)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world


def _share_cores(world: int) -> None:
    import torch

    # the ranks share this machine's cores (torchrun on one node, or --nproc)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local, 1)))


def rank_device(device: str, rank: int) -> str:
    """The device of ``rank``: cuda ranks take one GPU each (LOCAL_RANK under torchrun)."""
    if not str(device).startswith("cuda") or ":" in str(device):
        return str(device)
    import torch

    local = int(os.environ.get("LOCAL_RANK", rank))
    return f"cuda:{local % max(torch.cuda.device_count(), 1)}"


def _rank_main(
    rank: int,
    world: int,
    port: int,
    setup: Setup,
    datasets: Sequence[Any],
    methods: Sequence[str],
    kwargs: dict[str, Any],
    q: Any,
) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    _share_cores(world)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        predictor, extra = setup(rank)

        def on_image(name: str, done: int, total: int) -> None:
            q.put(("image", rank, name, done, total))

        rows = evaluate(
            predictor,
            datasets,
            methods,
            progress=False,
            on_image=on_image,
            extra=extra,
            rank=rank,
            world=world,
            **kwargs,
        )
        if rank == 0:
            info = {
                "model_key": predictor.model_key,
                "input_size": predictor.input_size,
                "device": str(predictor.device),
            }
            q.put(("result", rows, info))
        # every rank's sends are through before any rank tears gloo down: a rank that destroyed
        # its group while a peer's gather was still in flight aborted the peer ("terminate called
        # without an active exception": seen once in a CI run of this test)
        dist.barrier()
    except AnomsegError as exc:  # a user error: the parent raises it as one clear message
        q.put(("error", type(exc).__name__, str(exc)))
        raise SystemExit(1) from None  # no traceback from the rank
    finally:
        dist.destroy_process_group()


def evaluate_nproc(
    nproc: int,
    setup: Setup,
    datasets: Sequence[Any],
    methods: Sequence[str],
    *,
    on_image: Callable[[str, int, int], None] | None = None,
    **kwargs: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """``evaluate`` over ``nproc`` local processes; returns (rows, info of rank 0's predictor).

    ``setup(rank) -> (predictor, extra)`` must be picklable (a module-level function or a
    ``functools.partial`` of one): each process builds its own model. ``kwargs`` go to
    ``evaluate`` (metric_mode, batch_size, per_image, ...). ``on_image(dataset, done, total)``
    sees the images done over all ranks (in this process); an exception it raises (a job's
    cancel) stops every rank.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    from anomseg import errors

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"--nproc {nproc!r}; expected an integer >= 1")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    pctx = mp.start_processes(
        _rank_main,
        args=(nproc, _free_port(), setup, list(datasets), list(methods), kwargs, q),
        nprocs=nproc,
        join=False,
        start_method="spawn",
    )
    done: dict[str, list[int]] = {}
    totals = {d.name: len(d) for d in datasets}
    result: tuple[list[Any], dict[str, Any]] | None = None
    error: tuple[str, str] | None = None

    def drain() -> None:
        nonlocal result, error
        while True:
            try:
                msg = q.get_nowait()
            except queue.Empty:
                return
            if msg[0] == "image":
                _, rank, name, n, _total = msg
                counts = done.setdefault(name, [0] * nproc)
                counts[rank] = n
                if on_image is not None:
                    on_image(name, sum(counts), totals.get(name, _total))
            elif msg[0] == "result":
                result = (msg[1], msg[2])
            elif msg[0] == "error" and error is None:
                error = (msg[1], msg[2])

    try:
        while True:
            try:
                finished = pctx.join(timeout=0.2)
            except ProcessException:  # a rank raised or exited: the others are ended
                drain()
                if error is not None:
                    raise getattr(errors, error[0], InputError)(error[1]) from None
                raise
            drain()
            if finished:
                break
    except BaseException:
        stop_processes(pctx)
        raise
    drain()
    if result is None:
        raise RuntimeError("rank 0 ended without sending its rows")
    return result


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_processes(pctx: Any) -> None:
    """Terminate the still-running processes of a spawn context and reap them (5 s each)."""
    for p in pctx.processes:
        if p.is_alive():
            p.terminate()
    for p in pctx.processes:
        p.join(5)
