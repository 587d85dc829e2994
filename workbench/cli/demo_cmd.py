"""``anomseg demo``: the built-in world's data, README pictures and demo models.

Sub-commands:

* ``build``: write the demo data (procedural train / held-out scenes and the two demo
  benchmarks) and its ``datasets.json``;
* ``pictures``: write the README pictures (a scene, its labels, a pasted anomaly, the bank);
* ``train-models``: re-train the demo models (``anomseg.world.train_models``).
"""

from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH such as 512x1024, got {text!r}"
        ) from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``demo build``, ``demo pictures`` and ``demo train-models``."""
    sub = parser.add_subparsers(dest="demo_command", required=True, metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="write the demo data (scenes, pastes, two benchmarks)")
    b.add_argument(
        "--dir",
        default=None,
        help="output folder (default: $ANOMSEG_WORKSPACE/demo or ./workspace/demo)",
    )
    b.add_argument(
        "--train", type=int, default=200, help="training scenes (half get pastes; default 200)"
    )
    b.add_argument("--heldout", type=int, default=40, help="clean held-out scenes (default 40)")
    b.add_argument("--obstacles", type=int, default=25, help="demo-obstacles images (default 25)")
    b.add_argument("--anomalies", type=int, default=25, help="demo-anomalies images (default 25)")
    b.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    b.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes (output is identical for any number)",
    )
    b.add_argument(
        "--size", type=_size, default=(512, 1024), help="image size HEIGHTxWIDTH (default 512x1024)"
    )
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b.add_argument(
        "--workspace",
        default=None,
        help="also register the data (datasets, images, paste samples, demo models) in this "
        "workspace's store; its demo/ folder is used when --dir is not given",
    )
    b.set_defaults(_demo=_run_build)

    p = sub.add_parser("pictures", help="write the README pictures of the procedural world")
    p.add_argument("--out", default="docs/images", help="output folder (default docs/images)")
    p.add_argument("--seed", type=int, default=None, help="scene seed (default: the README's)")
    p.set_defaults(_demo=_run_pictures)

    # --- train-models: filled in by the demo-models work (anomseg.world.train_models) ---------
    t = sub.add_parser("train-models", help="re-train the demo models (CPU, ~30 min on 2 cores)")
    t.add_argument(
        "--out", default=None, help="output folder (default: anomseg/assets/demo_models)"
    )
    t.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    t.add_argument(
        "--train", type=int, default=None, help="training scenes (default: the script's)"
    )
    t.add_argument(
        "--iters", type=int, default=None, help="iterations per model (default: the script's)"
    )
    t.set_defaults(_demo=_run_train_models)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen sub-command."""
    return int(args._demo(args) or 0)


def _run_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from anomseg.world.demo_data import build_demo, default_demo_dir

    if args.workspace and not args.dir:
        return _build_into_workspace(args)
    out = args.dir or default_demo_dir()
    bar = None if args.no_progress else tqdm(total=0, unit="img", desc="demo build")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        info = build_demo(
            out,
            n_train=args.train,
            seed=args.seed,
            workers=args.workers,
            size=args.size,
            n_heldout=args.heldout,
            n_obstacles=args.obstacles,
            n_anomalies=args.anomalies,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    parts = ", ".join(f"{d['name']} {d['count']}" for d in info["datasets"])
    print(f"demo build: {parts} -> {out} ({info['build_seconds']:.1f} s); see {out}/datasets.json")
    return 0


def _build_into_workspace(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workbench.bootstrap import DemoSizes, bootstrap_demo
    from workbench.workspace import Workspace

    ws = Workspace.open(args.workspace)
    sizes = DemoSizes(
        n_train=args.train,
        n_heldout=args.heldout,
        n_obstacles=args.obstacles,
        n_anomalies=args.anomalies,
        size=tuple(args.size),
        workers=args.workers,
    )
    with tqdm(total=100, unit="%", desc="demo build", disable=args.no_progress) as bar:

        def progress(frac: float, msg: str) -> None:
            bar.n = round(frac * 100)
            bar.set_postfix_str(msg[:40], refresh=False)  # one refresh below, not two lines
            bar.refresh()

        info = bootstrap_demo(ws, progress, sizes, seed=args.seed)
    parts = ", ".join(f"{d['name']} {d['count']}" for d in info["datasets"])
    print(f"demo build: {parts} -> {ws.demo_dir}, registered in {ws.store.url}")
    return 0


def _run_pictures(args: argparse.Namespace) -> int:
    from anomseg.world.demo_data import write_pictures

    paths = write_pictures(args.out, seed=args.seed)
    for path in paths:
        print(path)
    return 0


def _run_train_models(args: argparse.Namespace) -> int:
    # Owned by the demo-models work: a thin call into anomseg.world.train_models.
    from anomseg.world import train_models as tm

    kwargs = {"seed": args.seed}
    if args.out is not None:
        kwargs["out_dir"] = args.out
    if args.train is not None:
        kwargs["n_train"] = args.train
    if args.iters is not None:
        kwargs["iters"] = args.iters
    from tqdm import tqdm

    with tqdm(total=100, unit="%", desc="train demo models") as bar:

        def progress(frac: float, msg: str) -> None:
            bar.n = round(frac * 100)
            bar.set_postfix_str(msg[-50:], refresh=False)  # one refresh below, not two lines
            bar.refresh()

        results = tm.train_models(progress=progress, **kwargs)
    for name, meta in results.items():
        print(f"{name}: held-out mIoU {meta['metrics']['heldout_miou'] * 100:.1f}%")
    return 0
