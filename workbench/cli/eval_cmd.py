"""``anomseg eval``: models x methods x anomaly benchmarks, one forward per image.

Prints a table of dataset x method (AuPRC, FPR95 and AUROC in percent, images, seconds) and
optionally writes the rows to ``--out`` (``.json`` with per-image values, or ``.csv``); files hold
metric values as fractions in [0, 1]. Files are written atomically (nothing half-written).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import types
from pathlib import Path
from typing import Any

from anomseg import settings
from anomseg.errors import InputError
from workbench.cli.eval_rows import check_out, format_table, parse_remap, write_rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``anomseg eval``."""
    p.add_argument("--model", help="architecture name (see `anomseg models`)")
    p.add_argument("--checkpoint", help="weights file (.pth/.bin/.safetensors)")
    p.add_argument(
        "--dataset", action="append", required=True, metavar="PATH",
        help="benchmark root with images/ and labels_masks/ (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--methods", default="msp,maxlogit,entropy",
        help="comma-separated scoring methods, parameters after ':' (e.g. msp:T=2,energy)",
    )  # fmt: skip
    p.add_argument(
        "--input-size", default=None, metavar="HxW",
        help="resize images to HxW (e.g. 512x1024), 'native' for none; default: the model's",
    )  # fmt: skip
    p.add_argument(
        "--metric-mode", default="exact", choices=("exact", "streaming", "smiyc"),
        help="exact / streaming pixel metrics, or smiyc: the official evaluator's binned AP",
    )  # fmt: skip
    p.add_argument(
        "--score-size", default="input", choices=("input", "label"),
        help="input: label resized to the map (seed); label: map resized to the label (official)",
    )  # fmt: skip
    p.add_argument(
        "--scores", metavar="DIR",
        help="evaluate score maps made elsewhere (official HDF5 layout or .npy) instead of a model",
    )  # fmt: skip
    p.add_argument("--name", help="with --scores: the external method's name")
    p.add_argument(
        "--no-record", action="store_true", help="with --scores: do not record in the store"
    )  # fmt: skip
    p.add_argument(
        "--record", metavar="NAME",
        help="store the rows (per-image values, protocol card) under registered model NAME, "
        "whose checkpoint must be --checkpoint: the Leaderboard shows them",
    )  # fmt: skip
    p.add_argument("--out", help="write rows to a .json or .csv file (values as fractions)")
    p.add_argument(
        "--batch-size", default="1",
        help="images per forward, or 'auto' (from free GPU memory; 1 on CPU)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true",
        help="torch.compile the forward (pays off on a GPU over many images; slow to start)",
    )  # fmt: skip
    p.add_argument(
        "--nproc", type=int, default=1,
        help="processes to shard the images over (metrics merged exactly); under torchrun "
        "each launched process is one rank by itself",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (image decoding)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--remap", default=None, metavar="A=B[,C=D]",
        help="label value remap for every dataset, e.g. 2=1 (default: known names, e.g. RoadAnomaly)",
    )  # fmt: skip
    p.add_argument(
        "--all-images", action="store_true",
        help="also score images without anomaly pixels (the seed skips them)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workspace",
        help="store of the heads named by head:N and of --record / --scores results "
        "(default $ANOMSEG_WORKSPACE or ./workspace)",
    )
    where.add_argument("--url", help="database URL of that store instead of a workspace folder")


def parse_batch_size(text: str) -> int | str:
    """'4' -> 4; 'auto' -> 'auto' (chosen from free device memory)."""
    t = str(text).strip().lower()
    if t == "auto":
        return t
    if not t.isdigit() or int(t) < 1:
        raise InputError(f"--batch-size {text}; expected a positive integer or 'auto'")
    return int(t)


def rank_setup(
    model: str,
    checkpoint: str | None,
    size: tuple[int, int] | str | None,
    device: str,
    methods: list[str],
    workspace: str | None,
    url: str | None,
    rank: int,
    compile: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """One process's (predictor, head scorers): what each rank of --nproc / torchrun builds."""
    from anomseg.distributed import rank_device
    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor

    extra = head_scorers(methods, checkpoint, workspace, url)
    net = create_model(model, checkpoint=checkpoint)
    dev = rank_device(device, rank)
    return Predictor(net, device=dev, input_size=size, compile=compile), extra


def _progress_bars(enabled: bool) -> Any:
    """on_image for a multi-process run: one tqdm bar per dataset, images done over all ranks."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def on_image(name: str, done: int, total: int) -> None:
        if name not in bars:
            bars[name] = tqdm(total=total, desc=f"eval {name}", unit="img", disable=not enabled,
                              file=sys.stderr)  # fmt: skip
        bars[name].update(done - bars[name].n)
        if done >= total:
            bars[name].close()

    return on_image


MAX_INPUT_SIDE = 16384  # pixels per side of a model input: far above any road-scene frame


def parse_size(text: str | None) -> tuple[int, int] | str | None:
    """'512x1024' -> (512, 1024); 'native' -> 'native'; None -> None (model default)."""
    if text is None:
        return None
    t = text.strip().lower()
    if t == "native":
        return "native"
    m = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", t)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise InputError(
            f"--input-size {text!r}; expected HxW with positive integers, e.g. 512x1024, or 'native'"
        )
    h, w = int(m.group(1)), int(m.group(2))
    # a forward at 40000x80000 dies in a MemoryError deep inside torch: refuse it here instead
    from anomseg.imageio import MAX_PIXELS_ENV, max_pixels

    if max(h, w) > MAX_INPUT_SIDE or h * w > max_pixels():
        raise InputError(
            f"--input-size {text!r} is over the limit: at most {MAX_INPUT_SIDE} pixels per side "
            f"and {max_pixels()} pixels in all (${MAX_PIXELS_ENV} raises the latter); "
            "expected e.g. 512x1024"
        )
    return h, w


def split_methods(text: str) -> list[str]:
    """'msp:T=2,maxlogit,energy:T=0.5' -> one spec per method (parameters follow ':')."""
    specs = [p.strip() for p in text.split(",") if p.strip()]
    if not specs:
        raise InputError(f"--methods {text!r}; expected e.g. msp,maxlogit,entropy")
    return specs


def head_scorers(
    methods: list[str], checkpoint: str | None, workspace: str | None, url: str | None
) -> dict[str, Any]:
    """Scorer specs for the learned heads among ``methods``.

    ``head:N`` is version N of the head of the registered model whose checkpoint file has the
    same sha256 as ``--checkpoint`` (so the head is never applied to another model's
    predictions); ``head:PATH.safetensors`` is a head file, checked against the same hash.
    """
    from anomseg.hashing import file_sha256
    from anomseg.head_methods import HeadRef, HeadScorers, head_suffix, is_head_file

    wanted = [m for m in methods if head_suffix(m) is not None]
    if not wanted:
        return {}
    if checkpoint is None:
        raise InputError("head:N methods need --checkpoint: the model the head was trained for")
    sha = file_sha256(checkpoint)

    def lookup(suffix: str) -> HeadRef:
        # base: the checkpoint an oe file was tuned from; the sha: the head's own model
        if is_head_file(suffix):
            if not Path(suffix).is_file():
                raise InputError(f"head:{suffix}: file not found")
            return HeadRef(Path(suffix), base=checkpoint, model_sha256=sha)
        from db import heads as dbheads
        from db.store import Store

        # the same default as every other command: $ANOMSEG_WORKSPACE, else ./workspace
        root = settings.workspace_dir(workspace)
        if url is None and not root.is_dir():
            raise InputError(f"head:{suffix}: workspace {root} not found")
        store = Store.open(url=url, workspace=root)
        try:
            with store.read() as s:
                owner, ckpt = dbheads.head_checkpoint_for(s, sha, int(suffix.lstrip("vV")))
        finally:
            store.close()
        return HeadRef(Path(ckpt), base=checkpoint, model_sha256=sha, owner=owner)

    return HeadScorers(lookup).specs(wanted)


def run(args: argparse.Namespace) -> int:
    """Validate everything, build the model once, evaluate, print, write."""
    if getattr(args, "scores", None) is not None:
        from workbench.cli.scores_eval import run_scores

        if getattr(args, "record", None) is not None:
            raise InputError(
                "--record NAME stores a model's run; --scores maps are recorded as model "
                f"'external' already (--no-record skips that); got --record {args.record}"
            )

        return run_scores(args)
    if args.model is None:
        raise InputError("--model is required (or --scores DIR --name METHOD for external maps)")
    if getattr(args, "name", None) is not None:
        raise InputError("--name names external maps; expected it with --scores DIR only")
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import check_metric_mode, evaluate, parse_methods
    from anomseg.head_methods import is_head_method
    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor, resolve_device

    # cheap checks first: a typo must not cost a model load or a half-finished run
    size = parse_size(args.input_size)
    methods = split_methods(args.methods)
    record = getattr(args, "record", None)
    heads = [m for m in methods if is_head_method(m)]
    if record is not None and heads:  # head:N may be another model's version of the weights
        raise InputError(
            f"--record {record} stores post-hoc methods; got {', '.join(heads)}: a head version's "
            "rows are recorded when it is trained (or by the Leaderboard's evaluate job)"
        )
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise InputError(f"--checkpoint {args.checkpoint}: file not found")
    extra = head_scorers(
        methods, args.checkpoint, getattr(args, "workspace", None), getattr(args, "url", None)
    )
    parse_methods(methods, extra)
    check_metric_mode(args.metric_mode)
    out = check_out(args.out)
    args.batch_size = parse_batch_size(args.batch_size)
    from anomseg.distributed import env_rank_world, evaluate_nproc, init_from_env, rank_device

    nproc = getattr(args, "nproc", 1)
    rank, world = env_rank_world()
    if nproc < 1:
        raise InputError(f"--nproc {nproc}; expected >= 1")
    if nproc > 1 and world > 1:
        raise InputError(
            f"--nproc {nproc} under torchrun (WORLD_SIZE={world}); expected one or the other: "
            "torchrun already starts one process per rank"
        )
    if args.workers < 0:
        raise InputError(f"--workers {args.workers}; expected >= 0")
    remap = parse_remap(args.remap)
    device = resolve_device(args.device)
    datasets = [BenchmarkDataset(p, remap=remap) for p in args.dataset]
    names = [d.name for d in datasets]
    for i, d in enumerate(datasets):  # two folders called "val" must stay apart in the table
        if names.count(d.name) > 1:
            d.name = f"{Path(d.root).parent.name}/{d.name}"
            names[i] = d.name
    if record is not None and rank == 0:
        record_target(args, record)  # a wrong name or other weights: refused before the run
    if args.checkpoint is None and rank == 0:
        print(f"warning: no --checkpoint given; {args.model} runs with its initial weights",
              file=sys.stderr)  # fmt: skip
    options = dict(
        metric_mode=args.metric_mode,
        batch_size=args.batch_size,
        num_workers=args.workers,
        skip_without_anomaly=not args.all_images,
        score_size=getattr(args, "score_size", "input"),
        # per-image values cost a sort per image and method; only a JSON output holds them
        per_image=(out is not None and out.suffix.lower() == ".json") or record is not None,
    )
    setup = functools.partial(
        rank_setup, args.model, args.checkpoint, size, str(device), methods,
        getattr(args, "workspace", None), getattr(args, "url", None),
        compile=getattr(args, "compile", False),
    )  # fmt: skip
    if nproc > 1:
        rows, info = evaluate_nproc(
            nproc, setup, datasets, methods, on_image=_progress_bars(not args.no_progress),
            **options,
        )  # fmt: skip
        predictor = types.SimpleNamespace(**info)
    else:
        rank, world = init_from_env()  # a torchrun rank joins its group; else (0, 1)
        predictor = Predictor(
            create_model(args.model, checkpoint=args.checkpoint),
            device=rank_device(str(device), rank), input_size=size,
            compile=getattr(args, "compile", False),
        )  # fmt: skip
        rows = evaluate(
            predictor, datasets, methods, progress=not args.no_progress and rank == 0,
            extra=extra, rank=rank, world=world, **options,
        )  # fmt: skip
        if rank != 0:  # its shard is in rank 0's rows, which rank 0 prints and writes
            return 0
    from anomseg.evaluate import attach_protocol
    from anomseg.hashing import file_sha256

    attach_protocol(
        rows, datasets, getattr(predictor, "input_size", None),
        checkpoint_sha256=file_sha256(args.checkpoint) if args.checkpoint else "",
        skip_empty=not args.all_images, score_size=getattr(args, "score_size", "input"),
    )  # fmt: skip
    print(format_table(rows))
    skipped = {r.dataset: r.n_skipped for r in rows if r.n_skipped}
    for ds, n in skipped.items():
        print(f"note: {ds}: {n} image(s) without anomaly pixels skipped (--all-images keeps them)")
    if out is not None:
        header = {
            "model": args.model,
            "model_key": predictor.model_key,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "input_size": list(predictor.input_size) if predictor.input_size else None,
            "metric_mode": args.metric_mode,
            "device": str(predictor.device),
            "skip_without_anomaly": not args.all_images,
        }
        write_rows(out, rows, header)
        print(f"wrote {len(rows)} rows to {out}")
    if record is not None:
        n = record_rows(args, record, rows, datasets)
        print(f"recorded {n} result(s) as {record} in the store")
    return 0


def _open_store(args: argparse.Namespace) -> Any:
    from anomseg.settings import workspace_dir
    from db import Store

    root = workspace_dir(getattr(args, "workspace", None))
    url = getattr(args, "url", None)
    if url is None and not root.is_dir():
        raise InputError(f"--record: workspace {root} not found; expected --workspace or --url")
    return Store.open(url=url, workspace=root)


def record_target(args: argparse.Namespace, name: str) -> int:
    """The id of the model ``--record`` names, checked before any forward: its row must hold
    the architecture and the very weights (sha256) that make these numbers."""
    from anomseg.hashing import file_sha256
    from db import catalog

    if args.checkpoint is None:
        raise InputError(f"--record {name} needs --checkpoint: the weights its row is stored for")
    sha = file_sha256(args.checkpoint)
    store = _open_store(args)
    try:
        with store.read() as s:
            m = catalog.get_model(s, name)
            if m.architecture != args.model:
                raise InputError(
                    f"--record {name}: that model is a {m.architecture!r}; expected --model "
                    f"{m.architecture} (got {args.model!r})"
                )
            if m.checkpoint_sha256 != sha:
                raise InputError(
                    f"--record {name}: that model was registered with other weights (sha256 "
                    f"{str(m.checkpoint_sha256)[:12]}…), not {args.checkpoint} ({sha[:12]}…)"
                )
            return m.id
    finally:
        store.close()


def record_rows(args: argparse.Namespace, name: str, rows: list[Any], datasets: list[Any]) -> int:
    """Store a run's rows under model ``name`` in one transaction (datasets found by their
    root, else registered as eval sets); returns how many were stored."""
    from db import catalog, results

    store = _open_store(args)
    try:

        def write(s: Any) -> int:
            model_id = catalog.get_model(s, name).id
            ids = {d.name: results.eval_dataset_for(s, d).id for d in datasets}
            return len(results.record_eval_rows(s, model_id, rows, ids))

        return store.transact(write)
    finally:
        store.close()
