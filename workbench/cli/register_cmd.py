"""``anomseg add-dataset`` and ``anomseg add-model``: register real data and checkpoints."""

from __future__ import annotations

import argparse


def _workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=None, help="workspace folder (default ./workspace)")
    p.add_argument("--url", default=None, help="database URL (default: SQLite in the workspace)")


def add_arguments_add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "root",
        help="dataset folder: images/ + labels_masks/ (benchmark layout; with --role train its "
        "labels train heads), or images/ only",
    )
    p.add_argument("--name", default=None, help="dataset name (default: folder name)")
    p.add_argument(
        "--role",
        default="eval",
        choices=["eval", "train", "synthetic", "heldout"],
        help="eval datasets are never used for training (default eval)",
    )
    p.add_argument("--remap", default=None, help="label value remap, e.g. 2=1 (RoadAnomaly)")
    _workspace_arg(p)


def run_add_dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from anomseg.errors import InputError
    from db import catalog
    from workbench.cli.eval_cmd import parse_remap
    from workbench.workspace import Workspace

    remap = parse_remap(args.remap)
    root = Path(args.root).expanduser().resolve()  # relative to where the command runs
    ws = Workspace.open(args.workspace, args.url)
    name = args.name or root.name
    with ws.store.read() as s:
        old = {d.name: d for d in catalog.list_datasets(s)}.get(name)
        if old is not None:
            # never re-point a dataset: flags painted on its images would land on other pictures
            raise InputError(
                f"dataset {name!r} is already registered (id {old.id}, role {old.role}, root "
                f"{old.root}); pick another --name for {root}"
            )
    labelled = (root / "labels_masks").is_dir()
    if args.role == "eval" or (args.role == "train" and labelled):
        # a labelled train dataset is validated like a benchmark and trains on its labels
        ds_id = ws.register_benchmark(
            name, root, role=args.role, remap=None if remap == "auto" else remap
        )
    else:
        ds_id = ws.register_folder(name, root, args.role, layout="segmentation")
    print(f"registered dataset {name!r} (id {ds_id}, role {args.role}, root {root})")
    return 0


def add_arguments_add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name shown in the app")
    p.add_argument("--arch", required=True, help="architecture (see `anomseg models`)")
    p.add_argument("--checkpoint", required=True, help=".pth / .bin / .safetensors file")
    p.add_argument("--input-size", default=None, help="HEIGHTxWIDTH the model runs at")
    p.add_argument(
        "--replace",
        action="store_true",
        help="register a new checkpoint under an existing name (the old one is kept, renamed, "
        "with its heads, flags and results)",
    )
    _workspace_arg(p)


def run_add_model(args: argparse.Namespace) -> int:
    from db import catalog
    from workbench.cli.eval_cmd import parse_size
    from workbench.workspace import Workspace

    size = parse_size(args.input_size)
    size = None if size == "native" else size
    ws = Workspace.open(args.workspace, args.url)
    options = {"input_size": list(size)} if size else {}
    model_id = ws.register_checkpoint(
        args.name, args.arch, args.checkpoint, input_size=size, options=options,
        replace=args.replace,
    )  # fmt: skip
    with ws.store.read() as s:
        row = catalog.get_model(s, model_id)
        replaced = (row.meta or {}).get("replaces") if args.replace else None
        path = row.checkpoint_path
    print(f"registered model {args.name!r} (id {model_id}, {args.arch}, {path})")
    if replaced:
        print(
            f"the previous checkpoint is kept as model {replaced!r} with its heads, flags and "
            "results; a running app loads the new weights on its next request"
        )
    return 0
