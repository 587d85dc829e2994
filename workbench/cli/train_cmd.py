"""``anomseg train``: train an anomaly head from the store (curated samples + flags).

Runs here and now (with a progress bar), or, with ``--queue``, leaves a ``train_head`` job for a
worker (``anomseg worker`` or the app). ``--nproc N`` trains with N DistributedDataParallel
processes (gloo on CPU, nccl on CUDA); the same code runs under torchrun (see training/ddp.py).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anomseg train`` (defaults from training.config.TrainConfig, shown in --help)."""
    from anomseg.head_geometry import GEOMETRIES
    from training.config import TrainConfig
    from training.recipes import RECIPES

    d = TrainConfig()  # the one source of defaults: the Retrain tab and the worker use it too
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--model", required=True, help="registered model name (see the store)")
    parser.add_argument(
        "--head",
        choices=["stats", "features", "oe"],
        default=d.head,
        help="stats-only (4 inputs) or feature-enriched (36 inputs) head, or oe: outlier "
        "exposure (fine-tunes ERFNet's whole decoder at a tenth of --lr with the energy-margin "
        "term, read by energy)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workspace", help="workspace folder (store, caches, checkpoints)")
    where.add_argument("--url", help="database URL (the workspace is then ./workspace)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="passes over the pixels")
    parser.add_argument(
        "--recipe",
        choices=RECIPES.names(),
        default=d.recipe,
        help="; ".join(f"{r}: {RECIPES.get(r).description}" for r in RECIPES.names()),
    )
    parser.add_argument(
        "--head-geometry",
        choices=GEOMETRIES,
        default=d.head_geometry,
        help="apply the head per EoMT window before stitching, or once on the stitched maps",
    )
    # lr / weight decay default to the chosen recipe's (TrainConfig fills them in): name them
    per_recipe = {k: RECIPES.get(k) for k in RECIPES.names()}
    lrs = ", ".join(f"{k} {r.lr:g}" for k, r in per_recipe.items())
    wds = ", ".join(f"{k} {r.weight_decay:g}" for k, r in per_recipe.items())
    parser.add_argument(
        "--lr", type=float, default=None, help=f"AdamW learning rate; None: the recipe's ({lrs})"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help=f"AdamW weight decay; None: the recipe's ({wds})",
    )
    parser.add_argument(
        "--batch-pixels",
        type=int,
        default=d.batch_pixels,
        help="pixels per step, half anomalous and half normal",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=d.steps_per_epoch,
        help="None: number of labelled pixels / batch pixels",
    )
    parser.add_argument("--pos-weight", type=float, default=d.pos_weight, help="BCE pos_weight")
    parser.add_argument(
        "--fp-weight",
        type=float,
        default=d.fp_weight,
        help="loss weight of pixels flagged false positive",
    )
    parser.add_argument(
        "--fn-weight",
        type=float,
        default=d.fn_weight,
        help="loss weight of pixels flagged false negative",
    )
    parser.add_argument(
        "--flag-share",
        type=float,
        default=d.flag_share,
        help="share of each batch half drawn from flagged pixels",
    )
    parser.add_argument("--dropout", type=float, default=d.dropout, help="head dropout")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed")
    act = parser.add_mutually_exclusive_group()
    act.add_argument("--activate", action="store_true", help="make the new head active")
    act.add_argument(
        "--activate-rule", default=None, help="activate by a rule instead, e.g. auprc_improves"
    )
    parser.add_argument("--nproc", type=int, default=1, help="DDP processes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--no-eval", action="store_true", help="skip the evaluation on the registered eval datasets"
    )
    parser.add_argument(
        "--queue", action="store_true", help="queue a job for a worker instead of training here"
    )


def run(args: argparse.Namespace) -> int:
    """Train (or queue) one head version and print its summary."""
    import sys
    from pathlib import Path

    from tqdm.auto import tqdm

    from anomseg.predict import resolve_device
    from db.engine import default_workspace
    from db.store import Store
    from training.trainer import TrainConfig, train_head
    from workbench.jobs import enqueue_training
    from workbench.models import frozen_model

    cfg = TrainConfig(
        head=args.head,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        recipe=args.recipe,
        head_geometry=args.head_geometry,
        batch_pixels=args.batch_pixels,
        steps_per_epoch=args.steps_per_epoch,
        pos_weight=args.pos_weight,
        fp_weight=args.fp_weight,
        fn_weight=args.fn_weight,
        flag_share=args.flag_share,
        dropout=args.dropout,
        seed=args.seed,
    )
    activate: bool | str = args.activate_rule or bool(args.activate)
    workspace = (Path(args.workspace) if args.workspace else default_workspace()).resolve()
    store = Store.open(url=args.url, workspace=workspace)
    try:
        if args.queue:
            params = {
                "model": args.model,
                **cfg.to_dict(),
                "activate": activate,
                "nproc": args.nproc,
                "device": args.device,
                "evaluate": not args.no_eval,
            }
            job_id = enqueue_training(store, params)
            print(f"queued train_head job {job_id}; run 'anomseg worker' to process it")
            return 0
        device = str(resolve_device(args.device))
        bar = tqdm(
            total=1000,
            desc=f"train {args.head} head",
            file=sys.stderr,
            bar_format="{l_bar}{bar}| {elapsed} {postfix}",
        )

        def progress(frac: float, msg: str) -> None:
            bar.n = int(frac * 1000)
            bar.set_postfix_str(msg[:60], refresh=True)

        try:
            out = train_head(
                store,
                workspace,
                frozen_model(store, args.model, device),
                cfg,
                activate=activate,
                nproc=args.nproc,
                device=device,
                evaluate=not args.no_eval,
                progress=progress,
            )
        finally:
            bar.close()
    finally:
        store.close()
    m = out["metrics"]
    c = out["snapshot_counts"]
    print(f"head:{out['version']} ({out['kind']}) of model {out['model']}: {out['checkpoint']}")
    print(
        f"  trained on {c['images']} images, {c['positives']} anomalous / {c['negatives']} "
        f"normal pixels ({c['fp_flag_pixels']} flagged FP), final loss "
        f"{m['train']['final_loss']:.4f} in {m['train']['seconds']:.1f} s"
    )
    for name, e in m["eval"].items():
        if e.get("metrics"):
            r = e["metrics"]
            print(
                f"  {name:24s} AuPRC {100 * r['auprc']:6.2f}  FPR95 {100 * r['fpr95']:6.2f}"
                f"  ({e['n_images']} images)"
            )
        else:
            print(f"  {name:24s} not evaluated: {e.get('error', 'no anomalous images')}")
    print(f"  active: {'yes' if out['active'] else 'no'} (rule {out['rule']})")
    return 0
