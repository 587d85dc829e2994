"""``anomseg add-synthetic``: create or fill a store-backed synthetic dataset.

    anomseg add-synthetic camvid-coco --backgrounds labelled:../shared/data/camvid \\
        --objects coco:../shared/data/coco_subsets/mini_a --n 100 --accept
    anomseg add-synthetic dashcam --backgrounds folder:~/frames --model erfnet \\
        --objects coco:../shared/data/coco_subsets/mini_b --n 20
    anomseg add-synthetic camvid-coco --n 50      # more samples from the stored sources

The dataset keeps its source specs in the store, so the dashboard's "Generate more" and a later
``add-synthetic NAME --n N`` draw from the same sources.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

BACKGROUND_KINDS = ("labelled", "folder", "cityscapes")
OBJECT_KINDS = ("coco",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    p.add_argument("name", help="synthetic dataset name (created on first use)")
    p.add_argument(
        "--backgrounds",
        default=None,
        help="SOURCE:ROOT with SOURCE labelled (a labelled road dataset, e.g. CamVid), folder "
        "(unlabelled frames, labelled by --model) or cityscapes (official layout)",
    )
    p.add_argument(
        "--class-map", default="camvid", help="labelled: shipped map name or YAML file (camvid)"
    )
    p.add_argument("--images", default="train", help="labelled: images folder under ROOT (train)")
    p.add_argument(
        "--labels", default="trainannot", help="labelled: label maps folder under ROOT (trainannot)"
    )
    p.add_argument("--model", default=None, help="folder: registered model giving pseudo-labels")
    p.add_argument("--split", default="train", help="cityscapes: split (train)")
    p.add_argument("--size", default=None, help="resize backgrounds to WIDTHxHEIGHT")
    p.add_argument(
        "--objects",
        default=None,
        help="coco:ROOT[,ROOT2] (ROOT/annotations/instances_<split>2017.json + "
        "ROOT/<split>2017/) or coco:FILE.json with --coco-images DIR",
    )
    p.add_argument("--coco-split", default="train", help="coco: train, val or train,val (train)")
    p.add_argument("--coco-images", default=None, help="coco: images folder for a JSON file")
    p.add_argument("--categories", default=None, help="coco: comma-separated category names")
    p.add_argument("--instances", default="1-3", help="pastes per sample MIN-MAX (1-3)")
    p.add_argument("--n", type=int, required=True, help="samples to add (1..500)")
    p.add_argument("--seed", type=int, default=0, help="placement seed (0)")
    p.add_argument("--accept", action="store_true", help="store them accepted (they train at once)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--workspace", default=None, help="workspace folder (default ./workspace)")
    p.add_argument("--url", default=None, help="database URL (default: SQLite in the workspace)")


def _split_source(text: str, kinds: tuple[str, ...], flag: str) -> tuple[str, str]:
    from anomseg.errors import InputError

    kind, sep, root = text.partition(":")
    if not sep or kind not in kinds or not root:
        raise InputError(f"{flag}: expected {'|'.join(kinds)}:PATH, got {text!r}")
    return kind, str(Path(root).expanduser())


def _size(text: str | None) -> list[int] | None:
    from anomseg.errors import InputError

    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) <= 0 or int(h) <= 0:
        raise InputError(f"--size: expected WIDTHxHEIGHT, e.g. 1024x512, got {text!r}")
    return [int(w), int(h)]


def background_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--backgrounds`` option (and its companions) as a source spec."""
    from anomseg.errors import InputError

    kind, root = _split_source(args.backgrounds, BACKGROUND_KINDS, "--backgrounds")
    opts: dict[str, Any] = {"root": root}
    if kind == "labelled":
        cm = args.class_map
        cm_path = Path(cm).expanduser()
        opts.update(
            images=args.images,
            labels=args.labels,
            class_map=str(cm_path.resolve()) if cm_path.is_file() else cm,
        )
    elif kind == "folder":
        if not args.model:
            raise InputError(
                "--backgrounds folder:...: give --model NAME, the registered model whose "
                "predictions label the frames"
            )
        opts["model"] = args.model
    else:
        opts["split"] = args.split
    size = _size(args.size)
    if size is not None:
        opts["size"] = size
    return {"source": kind, "options": opts}


def object_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--objects`` option (and its companions) as a source spec."""
    from anomseg.errors import InputError

    kind, root = _split_source(args.objects, OBJECT_KINDS, "--objects")
    splits = [sp.strip() for sp in args.coco_split.split(",")]
    if not splits or any(sp not in ("train", "val") for sp in splits):
        raise InputError(f"--coco-split: expected train, val or train,val, got {args.coco_split!r}")
    if root.endswith(".json"):
        if not args.coco_images:
            raise InputError("--objects coco:FILE.json needs --coco-images DIR")
        opts: dict[str, Any] = {"annotations": root, "images": args.coco_images}
    else:  # ROOT[,ROOT...] x split[,split]: the objects of every file are pooled
        pairs = [
            (str(Path(r) / "annotations" / f"instances_{sp}2017.json"), str(Path(r) / f"{sp}2017"))
            for r in root.split(",")
            for sp in splits
        ]
        if len(pairs) == 1:
            opts = {"annotations": pairs[0][0], "images": pairs[0][1]}
        else:
            opts = {"annotations": [a for a, _ in pairs], "images": [i for _, i in pairs]}
    if args.categories:
        opts["categories"] = [c.strip() for c in args.categories.split(",") if c.strip()]
    return {"source": kind, "options": opts}


def _instances(text: str) -> tuple[int, int]:
    from anomseg.errors import InputError

    lo, sep, hi = text.partition("-")
    hi = hi if sep else lo
    if not lo.isdigit() or not hi.isdigit():
        raise InputError(f"--instances: expected MIN-MAX, e.g. 1-3, got {text!r}")
    return int(lo), int(hi)


def run(args: argparse.Namespace) -> int:
    """Create / fill the dataset and print what was added."""
    from tqdm.auto import tqdm

    from anomseg.errors import InputError
    from training.synth_samples import generate_samples
    from workbench.workspace import Workspace

    if (args.backgrounds is None) != (args.objects is None):
        raise InputError("give both --backgrounds and --objects (a new dataset), or neither")
    bg = background_spec(args) if args.backgrounds else None
    obj = object_spec(args) if args.objects else None
    instances = _instances(args.instances)
    ws = Workspace.open(args.workspace, args.url)
    try:
        with tqdm(total=args.n, disable=args.no_progress, unit="sample") as bar:

            def progress(frac: float, msg: str) -> None:
                bar.n = round(frac * args.n)
                bar.set_postfix_str(msg[-60:])
                bar.refresh()

            made = generate_samples(
                ws.store,
                args.name,
                args.n,
                backgrounds=bg,
                objects=obj,
                seed=args.seed,
                status="accepted" if args.accept else "proposed",
                progress=progress,
                workspace=ws.root,
                predictor_for=ws.predictor,
                instances=instances if bg is not None or args.instances != "1-3" else None,
            )
    finally:
        ws.close()
    state = "accepted" if args.accept else "proposed"
    print(
        f"add-synthetic: {len(made)} {state} samples added to {args.name!r} (ids {made[0]}..{made[-1]})"
    )
    return 0
