"""``anomseg synth``: render synthetic anomaly pastes from a YAML config."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the synth command's options."""
    parser.add_argument(
        "--config", required=True, help="synth YAML config (the single source of truth)"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N backgrounds")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (output is identical for any K)"
    )
    parser.add_argument("--out", default=None, help="output folder (overrides export.out)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Validate the config, export the samples, print a one-line summary."""
    from anomseg.errors import InputError
    from anomseg.synth.config import load_config
    from anomseg.synth.export import export

    if args.limit is not None and args.limit < 0:
        raise InputError(f"--limit: expected an integer >= 0, got {args.limit}")
    if args.workers < 1:
        raise InputError(f"--workers: expected an integer >= 1, got {args.workers}")
    cfg = load_config(args.config)
    summary = export(
        cfg, out=args.out, limit=args.limit, workers=args.workers, progress=not args.no_progress
    )
    print(
        f"synth: {summary.total} backgrounds ({summary.synthetic} synthetic, {summary.clean} clean, "
        f"{summary.pastes} pastes); rendered {summary.rendered}, unchanged {summary.skipped}; "
        f"manifest {summary.out / 'manifest.jsonl'}"
    )
    return 0
