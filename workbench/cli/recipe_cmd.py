"""``anomseg recipe real``: reproduce the real-data table from ``../shared`` in one command.

Builds ``OUT/workspace``, trains every learned kind on CamVid x COCO pastes, evaluates them and
the post-hoc methods on RoadAnomaly21 and fs_static, writes ``OUT/results.json`` and
``OUT/heads/<kind>.safetensors``. Re-running the same command resumes (finished steps are
skipped); see ``training.real_recipe``.
"""

from __future__ import annotations

import argparse

RECIPES = ("real",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``anomseg recipe``."""
    p.add_argument("recipe", choices=RECIPES, help="real: the shared real data (../shared)")
    p.add_argument("--shared", default="../shared", help="the shared folder (default ../shared)")
    p.add_argument("--out", required=True, help="output folder (workspace, heads, results.json)")
    p.add_argument("--samples", type=int, default=192, help="CamVid x COCO training samples")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the stats / feature heads")
    p.add_argument("--oe-epochs", type=int, default=None, help="outlier-exposure epochs")
    p.add_argument(
        "--oe-stage", default=None, choices=("classifier", "last", "decoder"),
        help="ERFNet decoder layers outlier exposure fine-tunes",
    )  # fmt: skip
    p.add_argument(
        "--pastes", default="large", choices=("default", "large"),
        help="paste placement: large objects (up to 60%% of the image height; the default), or "
        "the generator's default placement",
    )  # fmt: skip
    p.add_argument(
        "--oe-energy-weight", type=float, default=None, metavar="W",
        help="weight of outlier exposure's energy-margin term (0: Meta-OoD's loss alone)",
    )  # fmt: skip
    p.add_argument("--input-size", default="512x1024", metavar="HxW", help="model input size")
    p.add_argument("--eval-limit", type=int, default=None, help="first N images per eval set")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Run or resume the recipe, print the table."""
    from pathlib import Path

    from anomseg.errors import InputError
    from training.real_recipe import PASTES, Budget, format_results, run_real_recipe
    from workbench.cli.eval_cmd import parse_size
    from workbench.models import frozen_model

    size = parse_size(args.input_size)
    if not isinstance(size, tuple):
        raise InputError(f"--input-size {args.input_size!r}; expected HxW, e.g. 512x1024")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise InputError(f"--eval-limit {args.eval_limit}; expected >= 1")
    if args.epochs < 1:
        raise InputError(f"--epochs {args.epochs}; expected >= 1")
    oe = {}
    if args.oe_epochs is not None:
        oe["epochs"] = args.oe_epochs
    if args.oe_stage is not None:
        oe["stage"] = args.oe_stage
    if args.oe_energy_weight is not None:
        oe["energy_weight"] = args.oe_energy_weight
    shared = Path(args.shared)
    if not shared.is_dir():
        raise InputError(f"--shared {shared}: folder not found (expected the shared data folder)")
    budget = Budget(
        samples=args.samples, head_epochs=args.epochs, oe=oe, input_size=size,
        placement=dict(PASTES[args.pastes]),
        eval_limit=args.eval_limit, seed=args.seed,
    )  # fmt: skip
    doc = run_real_recipe(shared, args.out, budget, open_model=frozen_model)
    print(format_results(doc))
    print(f"wrote {Path(args.out) / 'results.json'} and {len(doc['heads'])} head files in "
          f"{Path(args.out) / 'heads'}")  # fmt: skip
    return 0
