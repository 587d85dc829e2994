"""Multi-process head training with DistributedDataParallel (``anomseg train --nproc N``).

The parent writes the ``PixelSet`` to a file, starts N processes (``torch.multiprocessing``;
backend gloo on CPU, nccl on CUDA with one GPU per rank), each rank runs ``train_pixels`` with
its rank, and rank 0 writes the trained head back. See ``training.trainer`` for why the result
equals a single-process run on the same data (same global batch, averaged gradients).

The same entry works under torchrun: ``torchrun --nproc-per-node N -m training.ddp PIXELS OUT
CONFIG_JSON`` (it reads RANK / WORLD_SIZE / MASTER_ADDR from the environment).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from anomseg.errors import InputError
from training.config import TrainConfig
from training.dataset import PixelSet
from training.fit import Cancelled, Progress, TrainResult, build_head, train_pixels


def free_port() -> int:
    """An unused local TCP port for the rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world: int,
    port: int,
    pixels_path: str,
    out_path: str,
    config: dict[str, Any],
    device_kind: str,
    progress_q: Any,
) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    # the machine's cores are shared between ranks
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = torch.device(f"cuda:{local}" if device_kind == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        pixels = PixelSet.load(pixels_path)
        cfg = TrainConfig(**config)

        def wrap(m: torch.nn.Module) -> torch.nn.Module:
            return DDP(m, device_ids=[device.index] if device.type == "cuda" else None)

        def report(frac: float, msg: str) -> None:
            if progress_q is not None:
                progress_q.put((frac, msg))

        result = train_pixels(
            pixels,
            cfg,
            progress=report if rank == 0 else None,
            rank=rank,
            world=world,
            device=device,
            wrap=wrap,
        )
        # every rank writes its weights: the test (and a paranoid caller) can compare them
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in result.head.state_dict().items()}
        save_file(state, f"{out_path}.rank{rank}")
        if rank == 0:
            with open(f"{out_path}.json", "w") as f:
                json.dump({"metrics": result.metrics, "history": result.history}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_ddp(
    pixels: PixelSet,
    config: TrainConfig,
    nproc: int,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str = "cpu",
    keep_rank_states: bool = False,
) -> TrainResult:
    """Train with ``nproc`` DDP processes; returns rank 0's head (``metrics['rank_states']``
    holds every rank's state dict when ``keep_rank_states``)."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    if nproc < 1:
        raise InputError(f"--nproc must be >= 1, got {nproc}")
    device_kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if device_kind == "cuda" and torch.cuda.device_count() < nproc:
        raise InputError(
            f"--nproc {nproc} on CUDA needs {nproc} GPUs, found {torch.cuda.device_count()}"
        )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="anomseg-ddp-") as tmp:
        pixels_path = str(Path(tmp) / "pixels.safetensors")
        out_path = str(Path(tmp) / "head")
        pixels.save(pixels_path)
        port = free_port()
        pctx = mp.start_processes(
            _worker,
            args=(nproc, port, pixels_path, out_path, asdict(config), device_kind, q),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        try:
            while not pctx.join(timeout=0.2):
                _drain(q, progress)
                if should_stop is not None and should_stop():
                    raise Cancelled("training cancelled")
        except BaseException:
            from anomseg.distributed import stop_processes

            stop_processes(pctx)
            raise
        _drain(q, progress)
        states = [load_file(f"{out_path}.rank{r}") for r in range(nproc)]
        with open(f"{out_path}.json") as f:
            info = json.load(f)
    head = build_head(config, pixels.feat_dim)
    head.load_state_dict(states[0])
    head.eval()
    metrics = dict(info["metrics"])
    if keep_rank_states:
        metrics["rank_states"] = states
    return TrainResult(head=head, metrics=metrics, history=info["history"])


def _drain(q: Any, progress: Progress | None) -> None:
    while True:
        try:
            frac, msg = q.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(frac, msg)


def _torchrun_main(argv: list[str]) -> int:
    """Entry for ``torchrun ... -m training.ddp PIXELS OUT CONFIG_JSON``."""
    if len(argv) != 3:
        print("usage: torchrun --nproc-per-node N -m training.ddp PIXELS OUT CONFIG_JSON")
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    _worker(
        rank,
        world,
        int(os.environ.get("MASTER_PORT", "29500")),
        argv[0],
        argv[1],
        json.loads(Path(argv[2]).read_text()),
        kind,
        None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun_main(sys.argv[1:]))
