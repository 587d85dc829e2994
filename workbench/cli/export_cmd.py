"""``anomseg export-scores``: one score map per image and method, in the official layout.

``--format smiyc`` writes what the SegmentMeIfYouCan evaluator reads (and a submission holds):
``OUT/anomaly_p/<method>/<dataset>/<frame>.hdf5`` with the map as float16 dataset ``value`` at
the image's native size; ``--format npy`` writes lossless float32 ``OUT/<method>/<dataset>/
<frame>.npy``. Every image is exported (the official evaluator scores every frame), one forward
per image for all methods; each file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomseg.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``anomseg export-scores``."""
    p.add_argument("--model", required=True, help="architecture name (see `anomseg models`)")
    p.add_argument("--checkpoint", help="weights file (.pth/.bin/.safetensors)")
    p.add_argument(
        "--methods", default="msp,maxlogit,entropy",
        help="comma-separated scoring methods, parameters after ':' (e.g. msp:T=2,energy)",
    )  # fmt: skip
    p.add_argument(
        "--dataset", action="append", required=True, metavar="PATH",
        help="benchmark root with images/ (labels_masks/ optional: test splits) (repeatable)",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default="smiyc", help="smiyc (official HDF5 layout) or npy")
    p.add_argument(
        "--input-size", default=None, metavar="HxW",
        help="model input HxW, 'native' for none; default: the model's",
    )  # fmt: skip
    p.add_argument("--remap", default=None, metavar="A=B[,C=D]", help="label value remap")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (image decoding)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workspace", help="store that holds the heads named by head:N")
    where.add_argument("--url", help="database URL of that store instead of a workspace folder")


def run(args: argparse.Namespace) -> int:
    """Validate, build the model once, write the maps."""
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import parse_methods
    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor, resolve_device
    from anomseg.scoremaps import describe_bytes, export_scores, get_format, images_only
    from workbench.cli.eval_cmd import head_scorers, parse_remap, parse_size, split_methods

    get_format(args.format)
    size = parse_size(args.input_size)
    methods = split_methods(args.methods)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise InputError(f"--checkpoint {args.checkpoint}: file not found")
    extra = head_scorers(methods, args.checkpoint, args.workspace, args.url)
    parse_methods(methods, extra)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a folder")
    if args.batch_size < 1 or args.workers < 0:
        raise InputError("--batch-size must be >= 1 and --workers >= 0")
    remap = parse_remap(args.remap)
    # a test split without labels_masks/ (what a submission covers) needs only its images
    datasets = [
        BenchmarkDataset(p, remap=remap) if (Path(p) / "labels_masks").is_dir() else images_only(p)
        for p in args.dataset
    ]
    if args.checkpoint is None:
        print(f"warning: no --checkpoint given; {args.model} runs with its initial weights",
              file=sys.stderr)  # fmt: skip
    predictor = Predictor(
        create_model(args.model, checkpoint=args.checkpoint),
        device=resolve_device(args.device), input_size=size,
    )  # fmt: skip
    for ds in datasets:
        info = export_scores(
            predictor, ds, methods, out, args.format, extra=extra, batch_size=args.batch_size,
            num_workers=args.workers, progress=not args.no_progress,
        )  # fmt: skip
        print(
            f"{ds.name}: wrote {info['files']} {args.format} maps ({describe_bytes(info['bytes'])})"
            f" for {len(methods)} method(s) under {out} as dataset {info['dataset']}"
        )
    return 0
