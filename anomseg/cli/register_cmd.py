"""``anomseg add-dataset`` and ``anomseg add-model``: register real data and checkpoints."""

from __future__ import annotations

import argparse


def _workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=None, help="workspace folder (default ./workspace)")
    p.add_argument("--url", default=None, help="database URL (default: SQLite in the workspace)")


def _parse_remap(text: str | None) -> dict[int, int] | None:
    from anomseg.errors import InputError

    if not text:
        return None
    out = {}
    for part in text.split(","):
        try:
            src, dst = (int(v) for v in part.split("="))
        except ValueError:
            raise InputError(f"--remap {text!r}: expected pairs like 2=1,3=255") from None
        if not (0 <= src <= 255 and dst in (0, 1, 255)):
            raise InputError(f"--remap {part!r}: source must be 0..255 and target 0, 1 or 255")
        out[src] = dst
    return out


def _parse_size(text: str | None) -> tuple[int, int] | None:
    from anomseg.errors import InputError

    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--input-size {text!r}: expected HEIGHTxWIDTH, e.g. 512x1024") from None
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise InputError(f"--input-size {text!r}: height and width must be in 16..8192")
    return h, w


def add_arguments_add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="dataset folder: images/ + labels_masks/ (benchmark layout)")
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

    from db.workspace import Workspace

    ws = Workspace.open(args.workspace, args.url)
    name = args.name or Path(args.root).resolve().name
    if args.role == "eval":
        ds_id = ws.register_benchmark(name, args.root, remap=_parse_remap(args.remap))
    else:
        ds_id = ws.register_folder(name, args.root, args.role, layout="segmentation")
    print(f"registered dataset {name!r} (id {ds_id}, role {args.role})")
    return 0


def add_arguments_add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name shown in the app")
    p.add_argument("--arch", required=True, help="architecture (see `anomseg models`)")
    p.add_argument("--checkpoint", required=True, help=".pth / .bin / .safetensors file")
    p.add_argument("--input-size", default=None, help="HEIGHTxWIDTH the model runs at")
    _workspace_arg(p)


def run_add_model(args: argparse.Namespace) -> int:
    from db.workspace import Workspace

    ws = Workspace.open(args.workspace, args.url)
    size = _parse_size(args.input_size)
    options = {"input_size": list(size)} if size else {}
    model_id = ws.register_checkpoint(
        args.name, args.arch, args.checkpoint, input_size=size, options=options
    )
    print(f"registered model {args.name!r} (id {model_id}, {args.arch})")
    return 0
