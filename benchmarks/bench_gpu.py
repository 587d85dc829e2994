"""Benchmark: GPU inference throughput of the Predictor (images/s and peak memory).

Ours: ``Predictor.forward_arrays`` as evaluation runs it on CUDA — a batch chosen from free
memory (``auto_batch_size``), bf16 autocast, channels_last, pinned host memory and a side CUDA
stream for the host<->device copies, optionally ``torch.compile`` (``--compile``); every output
field comes back to the host as float32, as the scorers need it. Baseline, in the same run: the
same model and images one at a time in fp32 (no autocast, contiguous NCHW weights, no compile).
Printed: images/s of both, the ratio, the batch size and the peak GPU memory.

Models (random weights: speed does not depend on them): ERFNet at 512x1024 and EoMT-L (ViT-L/16
DINOv2, Cityscapes 1024 windows) at 1024x1024 (one window, the setting of the official figure:
25 img/s on one H100 with torch.compile) and at 1024x2048 (two windows, the protocol's full
Cityscapes frame). Without a CUDA device it says so and exits 0.

    python benchmarks/bench_gpu.py [--compile] [--seconds 10] [--batch-size auto|N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

CONFIGS = (
    ("erfnet", (512, 1024)),
    ("eomt_vit_large_1024", (1024, 1024)),
    ("eomt_vit_large_1024", (1024, 2048)),
)


def throughput(predictor, batch: list[np.ndarray], seconds: float) -> tuple[float, int]:
    """(images/s over at least ``seconds`` after two warm-up batches, peak bytes allocated)."""
    meta = [{}] * len(batch)
    for _ in range(2):  # warm-up: cuDNN autotuning, torch.compile tracing, allocator
        predictor.forward_arrays(batch, meta)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    n, t0 = 0, time.perf_counter()
    while True:
        predictor.forward_arrays(batch, meta)
        n += len(batch)
        if time.perf_counter() - t0 >= seconds:
            break
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), torch.cuda.max_memory_allocated()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (ours)")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    ap.add_argument("--batch-size", default="auto", help="'auto' (free memory) or N")
    ap.add_argument("--only", default=None, help="run only this architecture name")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (GPU figures unmeasured); run this on a "
              "machine with one")  # fmt: skip
        return 0

    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor

    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | "
          f"compile={args.compile} | {args.seconds:.0f} s per figure")  # fmt: skip
    print(f"{'model':22s}{'input':>11s}{'batch':>7s}{'img/s':>9s}{'peak GiB':>10s}"
          f"{'baseline img/s':>16s}{'peak GiB':>10s}{'ratio':>8s}")  # fmt: skip
    rng = np.random.default_rng(0)
    for arch, size in CONFIGS:
        if args.only and arch != args.only:
            continue
        torch.manual_seed(0)
        model = create_model(arch)
        images = None
        # baseline: one image at a time, fp32, NCHW weights, no compile
        base = Predictor(model, device="cuda", input_size=size, cache_bytes=0, autocast=False,
                         channels_last=False)  # fmt: skip
        one = [rng.integers(0, 256, (*size, 3), dtype=np.uint8)]
        b_ips, b_peak = throughput(base, one, args.seconds)
        del base
        torch.cuda.empty_cache()
        ours = Predictor(model, device="cuda", input_size=size, cache_bytes=0,
                         compile=args.compile)  # fmt: skip
        bs = ours.auto_batch_size() if args.batch_size == "auto" else int(args.batch_size)
        images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(bs)]
        ips, peak = throughput(ours, images, args.seconds)
        print(f"{arch:22s}{f'{size[0]}x{size[1]}':>11s}{bs:7d}{ips:9.1f}{peak / 2**30:10.2f}"
              f"{b_ips:16.1f}{b_peak / 2**30:10.2f}{ips / b_ips:7.2f}x")  # fmt: skip
        del ours, model, images
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
